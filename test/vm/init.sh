#!/bin/sh
# The guest's PID 1 (busybox sh). It mounts the cell's cgroup layout
# (ovt.cgroup= on the kernel command line: v2, v1 or hybrid), probes the
# kernel, checks that the agent starts, runs the planned test binaries
# (ovt.set=smoke|full, /opt/ovt/plan.SET) and writes everything to the
# second serial port between @@OVT markers for the host to parse; then it
# powers off. It never mounts tracefs: the agent and the tests bring it up
# themselves, as on a fresh node.
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin HOME=/root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs -o mode=1777 tmpfs /tmp
mkdir -p /dev/pts /root && mount -t devpts devpts /dev/pts
mount -t securityfs securityfs /sys/kernel/security 2>/dev/null
ip link set lo up
out=/dev/ttyS1

set -- $(cat /proc/cmdline)
layout=v2 set=smoke scale=1
for a; do
	case $a in
	ovt.cgroup=*) layout=${a#ovt.cgroup=} ;;
	ovt.set=*) set=${a#ovt.set=} ;;
	ovt.timescale=*) scale=${a#ovt.timescale=} ;;
	esac
done

v1() {
	mount -t tmpfs -o mode=755 cgroup /sys/fs/cgroup
	# The freezer is what the agent needs; the others are there as on a
	# v1 node where the kernel still has them (6.12 may lack v1 memory).
	mkdir -p /sys/fs/cgroup/freezer
	mount -t cgroup -o freezer cgroup /sys/fs/cgroup/freezer || echo "@@OVT NOTE mount v1 freezer failed" >$out
	for c in cpu,cpuacct memory pids; do
		mkdir -p /sys/fs/cgroup/$c
		mount -t cgroup -o $c cgroup /sys/fs/cgroup/$c 2>/dev/null || rmdir /sys/fs/cgroup/$c
	done
}
case $layout in
v2)
	mount -t cgroup2 cgroup2 /sys/fs/cgroup
	# As systemd does on a pure v2 node: controllers enabled below the root.
	for c in cpu memory pids; do echo +$c >/sys/fs/cgroup/cgroup.subtree_control 2>/dev/null; done
	;;
v1) v1 ;;
hybrid)
	v1
	mkdir -p /sys/fs/cgroup/unified
	mount -t cgroup2 cgroup2 /sys/fs/cgroup/unified
	;;
esac

echo "@@OVT CELL kernel=$(uname -r) cgroup=$layout set=$set timescale=$scale" >$out
grep cgroup /proc/mounts | sed 's/^/@@OVT MOUNT /' >$out
/opt/ovt/probe >$out 2>&1

# Does the agent start here? A refusal is reported (and the runner checks it
# against the documented ones); the tests that need an agent or the
# enforcer are then not run.
/opt/ovt/overtime run --config /opt/ovt/check.yaml --listen 127.0.0.1:9470 >/tmp/agent.log 2>&1 &
agent=$!
started=no
i=0
while [ $i -lt 600 ]; do
	if ! kill -0 $agent 2>/dev/null; then break; fi
	if wget -q -O /dev/null http://127.0.0.1:9470/readyz 2>/dev/null; then started=yes; break; fi
	sleep 0.2
	i=$((i + 1))
done
if [ $started = yes ]; then
	kill -TERM $agent
	wait $agent
	echo "@@OVT STARTED" >$out
else
	kill -KILL $agent 2>/dev/null
	wait $agent
	# One line: the start of the error and its end (a verifier log can run
	# to megabytes; its last lines say what was refused).
	log=$(tr '\n\t' '  ' </tmp/agent.log)
	# printf, not echo: dash's echo would expand the log's \\n.
	printf '@@OVT REFUSED %s ... %s\n' "$(printf '%s' "$log" | cut -c1-800)" "$(printf '%s' "$log" | tail -c 800)" >$out
fi

# The tests stretch their time budgets (and the deadlines that CPU-bound
# work must fit in) by OVERTIME_TIME_SCALE: CPU work is many times slower
# under TCG than on a host (internal/testtool.Scaled).
export OVERTIME_AGENT_BIN=/opt/ovt/overtime OVERTIME_PREBUILT_DIR=/opt/ovt/cbin OVERTIME_REQUIRE_TOOLS=1 OVERTIME_TIME_SCALE=$scale
# Plan lines: package binary needs-agent run-regexp skip-regexp timeout.
# needs-agent "agent": run only where the agent starts (it loads the same
# eBPF programs and drives the same cgroups as the tests).
while read -r pkg bin needs run skip timeout; do
	case $pkg in '' | '#'*) continue ;; esac
	if [ $needs = agent ] && [ $started != yes ]; then
		echo "@@OVT NOTRUN $pkg" >$out
		continue
	fi
	if [ $pkg = bench ]; then
		# The bench binary (see plan.go): its lines as they are.
		/opt/ovt/$bin -agent /opt/ovt/overtime -only "$run" 2>&1 | sed 's/^/@@OVT BENCH /' >$out
		continue
	fi
	echo "@@OVT BEGIN $pkg" >$out
	start=$(cut -d' ' -f1 /proc/uptime)
	(cd /opt/ovt/src/$pkg && /opt/ovt/$bin -test.v=test2json -test.count=1 -test.timeout=$timeout -test.run "$run" -test.skip "$skip") >$out 2>&1
	rc=$?
	echo "@@OVT END $pkg rc=$rc start=$start end=$(cut -d' ' -f1 /proc/uptime)" >$out
done </opt/ovt/plan.$set
echo "@@OVT DONE" >$out
sync
poweroff -f
