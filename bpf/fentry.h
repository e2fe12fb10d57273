/* fentry.h: file provenance at the kernel's file functions, where the
 * kernel allows tracing programs (fentry/fexit; see fentry.go). The same
 * records as the syscall tracepoints (files_tp.h), without their cost:
 * a syscall tracepoint sends every syscall of every task through the
 * kernel's tracing path while it is attached, these run only when their
 * function is called.
 *
 * The hooks are the functions every way of making or removing a name goes
 * through, with the syscall's own arguments (dirfd, the path as the caller
 * gave it, flags), so a record reads exactly as the tracepoints' does:
 * do_filp_open (open, openat, openat2, creat, io_uring, and opens inside
 * the kernel on the process's behalf), do_mkdirat, do_symlinkat,
 * do_linkat, do_renameat2, do_unlinkat, do_rmdir. Their signatures are the
 * same on 5.10, 6.1 and 6.12 but for the path arguments of do_mkdirat,
 * do_symlinkat and do_linkat: the user's pointer before 5.15, a struct
 * filename after. user_names says which, from the kernel's BTF. fentry.go
 * checks every signature against BTF before loading and falls back to the
 * tracepoints when one differs. */
#pragma once
#include "files.h"

struct filename {
	const char *name;  /* the kernel's copy */
	const char *uptr;  /* the caller's pointer; 0 when made in the kernel */
} __attribute__((preserve_access_index));

struct open_flags {
	int open_flag;
} __attribute__((preserve_access_index));

/* Set at load (fentry.go): the hooks whose path arguments are the user's
 * pointers themselves, not struct filename. */
#define USER_MKDIRAT 1
#define USER_SYMLINKAT 2
#define USER_LINKAT 4
const volatile __u32 user_names = 0;

/* The arguments and return value of a traced function: 8 bytes each, the
 * return value after the last argument. An int is in the low half: cast. */
#define FARG(i) (ctx[i])

/* The path a caller gave: the argument itself where user_names has bit,
 * else the user pointer a struct filename kept. A struct filename is freed
 * before the function returns, its user pointer stays good. */
static __always_inline __u64 user_path(__u64 arg, __u32 bit)
{
	if (user_names & bit)
		return arg;
	if (!arg)
		return 0;
	return (__u64)BPF_CORE_READ((struct filename *)arg, uptr);
}

static __always_inline int tracked_now(void)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	return bpf_map_lookup_elem(&tracked, &tgid) != 0;
}

/* fentry_stash stashes a call's arguments as the tracepoints do; a call
 * without a user path (a kernel-made name) is not recorded. */
static __always_inline int fentry_stash(__u32 op, __s32 dirfd, __u64 path, __s32 dirfd2,
					__u64 path2, __u32 flags)
{
	if (!path)
		return 0;
	return stash(op, dirfd, path, dirfd2, path2, flags);
}

/* An open's record needs no stash: when do_filp_open returns, its name and
 * the struct file it opened are both at hand. */
SEC("fexit/do_filp_open")
int fexit_filp_open(__u64 *ctx)
{
	const struct open_flags *op = (void *)FARG(2);
	__u32 flags = BPF_CORE_READ(op, open_flag);
	if (!(flags & O_CREAT))
		return 0;
	long ret = (long)FARG(3);
	if (!ret || (unsigned long)ret >= (unsigned long)-4095) /* NULL or ERR_PTR */
		return 0;
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tgid = id >> 32;
	if (!bpf_map_lookup_elem(&tracked, &tgid))
		return 0;
	struct filename *name = (void *)FARG(1);
	struct file_stash s = {
		.op = OP_OPEN,
		.flags = flags,
		.dirfd = (__s32)FARG(0),
		.dirfd2 = AT_FDCWD,
		.path = (__u64)BPF_CORE_READ(name, name),
		.path2 = 0,
	};
	return emit_file(&s, tgid, (__u32)id, 0, (struct file *)ret, 1);
}

SEC("fentry/do_mkdirat")
int fentry_mkdirat(__u64 *ctx)
{
	if (!tracked_now())
		return 0;
	/* do_mkdirat(dfd, name, mode) */
	return fentry_stash(OP_MKDIR, (__s32)FARG(0), user_path(FARG(1), USER_MKDIRAT), AT_FDCWD, 0, 0);
}

SEC("fexit/do_mkdirat")
int fexit_mkdirat(__u64 *ctx)
{
	return file_exit((__s32)FARG(3));
}

SEC("fentry/do_symlinkat")
int fentry_symlinkat(__u64 *ctx)
{
	if (!tracked_now())
		return 0;
	/* do_symlinkat(target, newdfd, linkpath) */
	return fentry_stash(OP_SYMLINK, (__s32)FARG(1), user_path(FARG(2), USER_SYMLINKAT), AT_FDCWD,
			    user_path(FARG(0), USER_SYMLINKAT), 0);
}

SEC("fexit/do_symlinkat")
int fexit_symlinkat(__u64 *ctx)
{
	return file_exit((__s32)FARG(3));
}

SEC("fentry/do_linkat")
int fentry_linkat(__u64 *ctx)
{
	if (!tracked_now())
		return 0;
	/* do_linkat(olddfd, old, newdfd, new, flags) */
	return fentry_stash(OP_LINK, (__s32)FARG(0), user_path(FARG(1), USER_LINKAT), (__s32)FARG(2),
			    user_path(FARG(3), USER_LINKAT), (__u32)FARG(4));
}

SEC("fexit/do_linkat")
int fexit_linkat(__u64 *ctx)
{
	return file_exit((__s32)FARG(5));
}

SEC("fentry/do_renameat2")
int fentry_renameat2(__u64 *ctx)
{
	if (!tracked_now())
		return 0;
	/* do_renameat2(olddfd, from, newdfd, to, flags) */
	return fentry_stash(OP_RENAME, (__s32)FARG(0), user_path(FARG(1), 0), (__s32)FARG(2),
			    user_path(FARG(3), 0), (__u32)FARG(4));
}

SEC("fexit/do_renameat2")
int fexit_renameat2(__u64 *ctx)
{
	return file_exit((__s32)FARG(5));
}

SEC("fentry/do_unlinkat")
int fentry_unlinkat(__u64 *ctx)
{
	if (!tracked_now())
		return 0;
	/* do_unlinkat(dfd, name) */
	return fentry_stash(OP_UNLINK, (__s32)FARG(0), user_path(FARG(1), 0), AT_FDCWD, 0, 0);
}

SEC("fexit/do_unlinkat")
int fexit_unlinkat(__u64 *ctx)
{
	return file_exit((__s32)FARG(2));
}

/* rmdir(2), and unlinkat(2) with AT_REMOVEDIR: both are do_rmdir. */
SEC("fentry/do_rmdir")
int fentry_rmdir(__u64 *ctx)
{
	if (!tracked_now())
		return 0;
	/* do_rmdir(dfd, name) */
	return fentry_stash(OP_RMDIR, (__s32)FARG(0), user_path(FARG(1), 0), AT_FDCWD, 0, 0);
}

SEC("fexit/do_rmdir")
int fexit_rmdir(__u64 *ctx)
{
	return file_exit((__s32)FARG(2));
}
