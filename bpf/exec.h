/* exec.h: sched_process_exec. The current task is the new program. */
#pragma once
#include "common.h"

SEC("tracepoint/sched/sched_process_exec")
int tp_exec(struct trace_event_raw_sched_process_exec *ctx)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	char comm[TASK_COMM_LEN] = {};
	__u32 zero = 0;
	int send = 0, track = 0, hold = 0, held = 0;
	struct config_val *cfg = bpf_map_lookup_elem(&config, &zero);
	__u8 *filter;

	if (!cfg)
		return 0;
	bpf_get_current_comm(comm, sizeof(comm));

	/* (c) a tree member execs another program: keep it, send it. */
	if (bpf_map_lookup_elem(&tracked, &tgid)) {
		send = 1;
	} else if ((filter = bpf_map_lookup_elem(&comm_filter, comm))) {
		/* (a) a candidate: tracked now so that forks made before user
		 * space decides are not missed; Untrack drops it. */
		send = 1;
		track = 1;
		/* A comm of a rule with max_running: stopped before its first
		 * instruction, so one past the cap never runs. And any
		 * candidate while the file programs are detached: stopped until
		 * they are attached. User space resumes it (SIGCONT) or kills
		 * it. */
		hold = *filter & FILTER_HOLD;
	} else if (cfg->pass_all) {
		/* (b) pass_all sends but never tracks. */
		send = 1;
	}
	if (!send)
		return 0;
	if (track) {
		struct tracked_val v = {.flags = TRACK_PENDING};
		/* NOEXIST: never downgrade an entry user space confirmed. */
		bpf_map_update_elem(&tracked, &tgid, &v, BPF_NOEXIST);
		/* To detach, user space clears files_on, waits for an RCU grace
		 * period and checks that tracked is empty: a candidate that saw
		 * files_on set is in tracked by then, and detaching is called
		 * off. */
		/* Not one with a controlling terminal: an interactive shell
		 * waits with WUNTRACED and would take the stop for ^Z, putting
		 * the job in the background. Its first files may go unseen. */
		if (!cfg->files_on && !BPF_CORE_READ(task, signal, tty))
			hold = 1;
		if (hold) {
			/* On record first: a stop nobody knows of would last
			 * forever if the agent died before reading this exec. */
			struct held_val hv = {
				.born = BPF_CORE_READ(task, group_leader, start_boottime),
				.at = bpf_ktime_get_boot_ns(),
			};
			if (bpf_map_update_elem(&holds, &tgid, &hv, BPF_ANY) == 0) {
				if (bpf_send_signal(SIGSTOP_NR) == 0)
					held = 1;
				else
					bpf_map_delete_elem(&holds, &tgid);
			}
		}
	}

	union scratch *buf = scratch_buf();
	if (!buf)
		return 0;
	struct exec_event *e = &buf->exec;
	fill_hdr(&e->hdr, EV_EXEC, tgid);
	e->hdr.tid = (__u32)bpf_get_current_pid_tgid();
	e->hdr.ppid = BPF_CORE_READ(task, real_parent, tgid);
	e->hdr.born = BPF_CORE_READ(task, group_leader, start_boottime);
	e->cgroup_id = bpf_get_current_cgroup_id();
	e->flags = held ? EXEC_HELD : 0;
	__builtin_memcpy(e->comm, comm, sizeof(comm));

	/* filename: __data_loc is offset (low 16 bits) and length with the
	 * NUL (high 16 bits) of the string in the trace record. */
	__u32 loc = BPF_CORE_READ(ctx, __data_loc_filename);
	long n = bpf_probe_read_kernel_str(e->data, FILENAME_MAX_LEN,
					   (void *)ctx + (loc & 0xffff));
	__u32 flen = n > 0 ? (n - 1) & (FILENAME_MAX_LEN - 1) : 0;
	e->filename_len = flen;
	if ((loc >> 16) > FILENAME_MAX_LEN)
		e->hdr.trunc |= TRUNC_FILENAME;

	/* argv: NUL-separated strings between mm->arg_start and arg_end,
	 * right after the filename. */
	unsigned long start = BPF_CORE_READ(task, mm, arg_start);
	unsigned long end = BPF_CORE_READ(task, mm, arg_end);
	__u64 len = end > start ? end - start : 0;
	__u32 copied = 0;
	e->args_len = len;
	if (len >= ARGS_MAX_LEN) {
		if (bpf_probe_read_user(e->data + flen, ARGS_MAX_LEN, (void *)start) == 0)
			copied = ARGS_MAX_LEN;
		if (len > ARGS_MAX_LEN)
			e->hdr.trunc |= TRUNC_ARGS;
	} else if (len > 0) {
		__u32 m = len & (ARGS_MAX_LEN - 1);
		if (bpf_probe_read_user(e->data + flen, m, (void *)start) == 0)
			copied = m;
	}
	if (copied > ARGS_MAX_LEN)
		copied = ARGS_MAX_LEN;
	e->args_copied = copied;
	output(e, __builtin_offsetof(struct exec_event, data) + flen + copied);
	return 0;
}
