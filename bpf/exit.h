/* exit.h: sched_process_exit (a thread exits) and sched_process_free (a task
 * is reaped). */
#pragma once
#include "common.h"

SEC("tracepoint/sched/sched_process_exit")
int tp_exit(void *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tgid = id >> 32;
	struct tracked_val *v = bpf_map_lookup_elem(&tracked, &tgid);
	if (!v)
		return 0;
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	/* The tracepoint fires after do_exit decremented signal->live: zero
	 * means this is the last thread of the group. */
	if (BPF_CORE_READ(task, signal, live.counter) != 0)
		return 0;
	/* Two last threads can race past the check on two CPUs: only the one
	 * whose insert into `exited` makes the entry reports. An insert that
	 * fails otherwise (the map full) reports too: a second exit record is
	 * harmless, a missing one is not. (Not an atomic fetch-or on the
	 * flags: BPF atomic fetch operations need kernel 5.12.) */
	__u8 one = 1;
	if (bpf_map_update_elem(&exited, &tgid, &one, BPF_NOEXIST) == -EEXIST)
		return 0;

	int code;
	if (BPF_CORE_READ(task, signal, flags) & SIGNAL_GROUP_EXIT)
		code = BPF_CORE_READ(task, signal, group_exit_code);
	else
		code = BPF_CORE_READ(task, exit_code);

	struct exit_event *e = reserve(sizeof(*e));
	if (!e)
		return 0;
	fill_hdr(&e->hdr, EV_EXIT, tgid);
	e->hdr.tid = (__u32)id;
	e->hdr.born = BPF_CORE_READ(task, group_leader, start_boottime);
	e->exit_code = code;
	e->pad = 0;
	bpf_ringbuf_submit(e, 0);
	return 0;
}

SEC("raw_tracepoint/sched_process_free")
int raw_free(struct bpf_raw_tracepoint_args *ctx)
{
	struct task_struct *task = (struct task_struct *)ctx->args[0];
	/* Only the group leader's release is the reap of the process. After a
	 * non-leader thread execs, the old leader keeps pid == tgid but is no
	 * longer its own group_leader: skip it. */
	__u32 pid = BPF_CORE_READ(task, pid);
	__u32 tgid = BPF_CORE_READ(task, tgid);
	if (pid != tgid || BPF_CORE_READ(task, group_leader) != task)
		return 0;
	/* Whether tracked or not (user space may have untracked it since it
	 * exited): a stale entry would hide the exit of the next process
	 * with this PID. */
	bpf_map_delete_elem(&exited, &tgid);
	if (!bpf_map_lookup_elem(&tracked, &tgid))
		return 0;
	bpf_map_delete_elem(&tracked, &tgid);

	struct event_hdr *e = reserve(sizeof(*e));
	if (!e)
		return 0;
	fill_hdr(e, EV_REAP, tgid);
	e->tid = pid;
	e->born = BPF_CORE_READ(task, start_boottime);
	bpf_ringbuf_submit(e, 0);
	return 0;
}
