package agent

import "time"

// Action is one thing the agent did (or, in monitor mode, would have done)
// to a tracked process, as /api/v1/actions shows it.
type Action struct {
	Time   time.Time `json:"time"`
	Rule   string    `json:"rule"`
	PID    int       `json:"pid"`
	Action string    `json:"action"`
	Result string    `json:"result"`
	Reason string    `json:"reason"`
}

// actionLog keeps the last actions in a ring.
type actionLog struct {
	ring []Action
	next int
	full bool
}

func newActionLog(n int) *actionLog { return &actionLog{ring: make([]Action, n)} }

func (l *actionLog) add(a Action) {
	l.ring[l.next] = a
	l.next = (l.next + 1) % len(l.ring)
	if l.next == 0 {
		l.full = true
	}
}

// list returns the actions oldest first.
func (l *actionLog) list() []Action {
	if !l.full {
		return append([]Action(nil), l.ring[:l.next]...)
	}
	out := make([]Action, 0, len(l.ring))
	out = append(out, l.ring[l.next:]...)
	return append(out, l.ring[:l.next]...)
}

// record adds an action on a member of t.
func (a *Agent) record(t *tree, pid int, action, result, reason string) {
	a.actions.add(Action{Time: a.wallNow(), Rule: t.rule.Name, PID: pid, Action: action, Result: result, Reason: reason})
}
