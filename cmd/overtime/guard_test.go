package main

import (
	"testing"
	"time"
)

func TestGuardDue(t *testing.T) {
	for _, c := range []struct {
		held  time.Duration
		busy  bool
		bound time.Duration
		want  bool
	}{
		{held: 700 * time.Millisecond, bound: time.Second, want: false},
		{held: 750 * time.Millisecond, bound: time.Second, want: true},
		{held: 2 * time.Second, bound: time.Second, want: true},
		// The agent is attaching what the hold waits for: kept up to busyHold.
		{held: 2 * time.Second, busy: true, bound: time.Second, want: false},
		{held: busyHold - time.Millisecond, busy: true, bound: 20 * time.Millisecond, want: false},
		{held: busyHold, busy: true, bound: 20 * time.Millisecond, want: true},
		// A bound longer than busyHold still applies.
		{held: busyHold, busy: true, bound: time.Minute, want: false},
		{held: 45 * time.Second, busy: true, bound: time.Minute, want: true},
	} {
		if got := due(c.held, c.busy, c.bound); got != c.want {
			t.Errorf("due(held %v, busy %v, bound %v) = %v, want %v", c.held, c.busy, c.bound, got, c.want)
		}
	}
}
