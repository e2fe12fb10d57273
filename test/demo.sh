#!/usr/bin/env bash
# make demo: a real restic backup hangs (its stdin never ends); overtime,
# running its embedded default rules with only the restic timeout shortened,
# ends it at its deadline and removes the stale lock it leaves behind.
# Part 2: the same hung restic under the default 12h timeout, with only the
# restic stall shortened: ended because it made no progress, long before
# its timeout.
set -euo pipefail
BIN=$(realpath "${1:-bin/overtime}")
ADDR=127.0.0.1:19477
TIMEOUT=20s GRACE=5s STALL=5s

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
work=$(mktemp -d /tmp/overtime-demo.XXXXXX)
agent_pid="" feeder_pid="" restic_pid=""
finish() {
	[ -n "$feeder_pid" ] && kill "$feeder_pid" 2>/dev/null || true
	[ -n "$restic_pid" ] && kill -KILL "$restic_pid" 2>/dev/null || true
	if [ -n "$agent_pid" ]; then kill -TERM "$agent_pid" 2>/dev/null || true; wait "$agent_pid" 2>/dev/null || true; fi
	rm -rf "$work"
}
trap finish EXIT

# await_end LIMIT NOTE: waits for restic to end (fails after LIMIT seconds),
# ends the feeder (the demo's own `sleep`: the pipeline's job ends with it)
# and says when and how restic ended.
await_end() {
	while kill -0 "$restic_pid" 2>/dev/null; do
		sleep 0.2
		if (( $(date +%s%N) - started > $1 * 1000000000 )); then echo "restic still alive after $1s"; exit 1; fi
	done
	kill "$feeder_pid" 2>/dev/null || true
	feeder_pid=""
	wait "$restic_pid" 2>/dev/null && status=0 || status=$?
	ms=$(( ($(date +%s%N) - started) / 1000000 ))
	printf 'restic ended %d.%03ds after it started%s, wait status %s (143 = SIGTERM, 137 = SIGKILL)\n' $((ms / 1000)) $((ms % 1000)) "$2" "$status"
	sleep 0.5
}

[ "$(id -u)" = 0 ] || { echo "make demo runs as root (eBPF and cgroups)"; exit 1; }

# The embedded defaults, with the restic rule's timeout and grace shortened.
"$BIN" defaults | awk -v t="$TIMEOUT" -v g="$GRACE" '
	/- name: /          { in_restic = ($3 == "restic") }
	in_restic && /timeout:/ { sub(/timeout: .*/, "timeout: " t) }
	in_restic && /grace:/   { sub(/grace: .*/, "grace: " g) }
	{ print }' > "$work/config.yaml"
say "config: overtime's embedded defaults, restic timeout $TIMEOUT and grace $GRACE"
sed -n '/- name: restic/,/- name: borg/p' "$work/config.yaml" | grep -v '^  # \|- name: borg'
"$BIN" validate --config "$work/config.yaml"

say "starting overtime (enforce mode, listening on $ADDR)"
"$BIN" run --config "$work/config.yaml" --listen "$ADDR" >"$work/agent.log" 2>&1 &
agent_pid=$!
for _ in $(seq 100); do
	curl -fsS "http://$ADDR/readyz" >/dev/null 2>&1 && break
	kill -0 "$agent_pid" 2>/dev/null || { cat "$work/agent.log"; exit 1; }
	sleep 0.1
done
curl -fsS "http://$ADDR/readyz"

export RESTIC_PASSWORD=overtime-demo RESTIC_CACHE_DIR="$work/cache"
repo="$work/repo"
say "a restic repository at $repo; a backup whose input never ends (a hung backup)"
restic init -q -r "$repo"
sleep 100000 | restic -r "$repo" backup --stdin --stdin-filename db.dump >"$work/restic.log" 2>&1 &
restic_pid=$!
feeder_pid=$(pgrep -P $$ -x sleep | head -n1 || true)
started=$(date +%s%N)
sleep 2
echo "restic pid $restic_pid; its lock: $(ls "$repo/locks")"

say "overtime ps"
"$BIN" ps --addr "$ADDR" -o wide
say "metrics while it runs"
curl -fsS "http://$ADDR/metrics" | grep -E '^overtime_(tracked|overdue)_processes\{rule="restic"\}'

say "waiting for the deadline ($TIMEOUT) and the grace ($GRACE)..."
await_end 90 ""

say "what overtime logged"
grep -E 'tracking|overdue|killed|tree ended|removed|cleanup' "$work/agent.log" | sed 's/^time=[^ ]* //'
say "actions (/api/v1/actions)"
curl -fsS "http://$ADDR/api/v1/actions"
say "metrics after"
curl -fsS "http://$ADDR/metrics" | grep -E '^overtime_(tracked_processes|overdue_processes|timeouts_total|kills_total|cleanup_removed_files_total|process_runtime_seconds_count|kill_latency_seconds_count)\{[^}]*rule="restic"' || true

say "the repository's locks after overtime's cleanup"
ls -la "$repo/locks"
if [ -n "$(ls -A "$repo/locks")" ]; then echo "FAIL: the stale lock is still there"; exit 1; fi
say "restic check, without restic unlock"
restic -r "$repo" check
say "part 1 done: the hung backup was ended at its deadline and its stale lock removed"

# ---- Part 2: the same hang, ended by its stall.
say "part 2: the default restic rule (timeout 12h) with its stall cut from 30m to $STALL"
kill -TERM "$agent_pid"; wait "$agent_pid" 2>/dev/null || true; agent_pid=""
"$BIN" defaults | awk -v s="$STALL" -v g="$GRACE" '
	/- name: /          { in_restic = ($3 == "restic") }
	in_restic && /stall:/ { sub(/stall: .*/, "stall: " s) }
	in_restic && /grace:/ { sub(/grace: .*/, "grace: " g) }
	{ print }' > "$work/config-stall.yaml"
sed -n '/- name: restic/,/- name: borg/p' "$work/config-stall.yaml" | grep -v '^  # \|- name: borg'
"$BIN" validate --config "$work/config-stall.yaml"
"$BIN" run --config "$work/config-stall.yaml" --listen "$ADDR" >"$work/agent2.log" 2>&1 &
agent_pid=$!
for _ in $(seq 100); do
	curl -fsS "http://$ADDR/readyz" >/dev/null 2>&1 && break
	kill -0 "$agent_pid" 2>/dev/null || { cat "$work/agent2.log"; exit 1; }
	sleep 0.1
done

say "the same hung backup again: no byte read or written, no CPU"
sleep 100000 | restic -r "$repo" backup --stdin --stdin-filename db.dump >"$work/restic2.log" 2>&1 &
restic_pid=$!
feeder_pid=$(pgrep -P $$ -x sleep | head -n1 || true)
started=$(date +%s%N)
sleep 2
echo "restic pid $restic_pid; its lock: $(ls "$repo/locks")"
say "overtime ps: last_progress and stalled_seconds"
curl -fsS "http://$ADDR/api/v1/processes" | grep -E '"(pid|deadline|last_progress|stalled_seconds|state)"'

say "waiting for the stall ($STALL) and the grace ($GRACE)..."
await_end 60 " (its timeout: 12h)"
say "what overtime logged"
grep -E 'tracking|stalled|killed|tree ended|removed|cleanup' "$work/agent2.log" | sed 's/^time=[^ ]* //'
say "actions (/api/v1/actions)"
curl -fsS "http://$ADDR/api/v1/actions"
say "metrics after"
curl -fsS "http://$ADDR/metrics" | grep -E '^overtime_(stalls_total|timeouts_total|kills_total|cleanup_removed_files_total)\{[^}]*rule="restic"' || true
if [ -n "$(ls -A "$repo/locks")" ]; then echo "FAIL: the stale lock is still there"; exit 1; fi
restic -r "$repo" check
say "demo done: the hung backup was ended at its deadline, then by its stall long before its 12h timeout; no stale lock either time"
