/* fork.h: sched_process_fork. A fork of a tracked process adds the child to
 * `tracked` here, in the kernel, so no fork is missed while user space is
 * busy. */
#pragma once
#include "common.h"

SEC("raw_tracepoint/sched_process_fork")
int raw_fork(struct bpf_raw_tracepoint_args *ctx)
{
	struct task_struct *parent = (struct task_struct *)ctx->args[0];
	struct task_struct *child = (struct task_struct *)ctx->args[1];
	__u32 ptgid = BPF_CORE_READ(parent, tgid);
	__u32 ctgid = BPF_CORE_READ(child, tgid);

	if (ptgid == ctgid) /* a new thread, not a new process */
		return 0;
	struct tracked_val *pv = bpf_map_lookup_elem(&tracked, &ptgid);
	if (!pv)
		return 0;
	struct tracked_val v = {.flags = pv->flags & (TRACK_PENDING | TRACK_CONFIRMED)};
	bpf_map_update_elem(&tracked, &ctgid, &v, BPF_ANY);

	struct event_hdr *e = reserve(sizeof(*e));
	if (!e)
		return 0;
	fill_hdr(e, EV_FORK, ctgid);
	e->tid = BPF_CORE_READ(child, pid);
	e->ppid = ptgid;
	e->born = BPF_CORE_READ(child, start_boottime);
	bpf_ringbuf_submit(e, 0);
	return 0;
}
