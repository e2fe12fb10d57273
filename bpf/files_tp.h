/* files_tp.h: the file syscall tracepoints (see files.h). Attached only
 * while something is tracked: while any syscall tracepoint is attached,
 * every syscall of every task takes the kernel's tracing path. */
#pragma once
#include "files.h"

#define ARG(i) (ctx->args[i])

/* One program for the exit of every syscall below: user space attaches it
 * to sys_exit_X for each sys_enter_X program. */
SEC("tracepoint/syscalls/sys_exit")
int tp_exit_file(struct sys_exit_ctx *ctx)
{
	return file_exit(ctx->ret);
}

SEC("tracepoint/syscalls/sys_enter_openat")
int tp_enter_openat(struct sys_enter_ctx *ctx)
{
	__u32 flags = ARG(2);
	if (!(flags & O_CREAT))
		return 0;
	return stash(OP_OPEN, ARG(0), ARG(1), AT_FDCWD, 0, flags);
}

SEC("tracepoint/syscalls/sys_enter_openat2")
int tp_enter_openat2(struct sys_enter_ctx *ctx)
{
	__u64 flags = 0; /* struct open_how starts with __u64 flags */
	if (bpf_probe_read_user(&flags, sizeof(flags), (void *)ARG(2)))
		return 0;
	if (!(flags & O_CREAT))
		return 0;
	return stash(OP_OPEN, ARG(0), ARG(1), AT_FDCWD, 0, (__u32)flags);
}

SEC("tracepoint/syscalls/sys_enter_open")
int tp_enter_open(struct sys_enter_ctx *ctx)
{
	__u32 flags = ARG(1);
	if (!(flags & O_CREAT))
		return 0;
	return stash(OP_OPEN, AT_FDCWD, ARG(0), AT_FDCWD, 0, flags);
}

SEC("tracepoint/syscalls/sys_enter_creat")
int tp_enter_creat(struct sys_enter_ctx *ctx)
{
	return stash(OP_OPEN, AT_FDCWD, ARG(0), AT_FDCWD, 0, O_CREAT | O_WRONLY | O_TRUNC);
}

SEC("tracepoint/syscalls/sys_enter_mkdirat")
int tp_enter_mkdirat(struct sys_enter_ctx *ctx)
{
	return stash(OP_MKDIR, ARG(0), ARG(1), AT_FDCWD, 0, 0);
}

SEC("tracepoint/syscalls/sys_enter_mkdir")
int tp_enter_mkdir(struct sys_enter_ctx *ctx)
{
	return stash(OP_MKDIR, AT_FDCWD, ARG(0), AT_FDCWD, 0, 0);
}

SEC("tracepoint/syscalls/sys_enter_symlinkat")
int tp_enter_symlinkat(struct sys_enter_ctx *ctx)
{
	/* symlinkat(target, newdfd, linkpath) */
	return stash(OP_SYMLINK, ARG(1), ARG(2), AT_FDCWD, ARG(0), 0);
}

SEC("tracepoint/syscalls/sys_enter_symlink")
int tp_enter_symlink(struct sys_enter_ctx *ctx)
{
	return stash(OP_SYMLINK, AT_FDCWD, ARG(1), AT_FDCWD, ARG(0), 0);
}

SEC("tracepoint/syscalls/sys_enter_linkat")
int tp_enter_linkat(struct sys_enter_ctx *ctx)
{
	return stash(OP_LINK, ARG(0), ARG(1), ARG(2), ARG(3), ARG(4));
}

SEC("tracepoint/syscalls/sys_enter_link")
int tp_enter_link(struct sys_enter_ctx *ctx)
{
	return stash(OP_LINK, AT_FDCWD, ARG(0), AT_FDCWD, ARG(1), 0);
}

SEC("tracepoint/syscalls/sys_enter_renameat2")
int tp_enter_renameat2(struct sys_enter_ctx *ctx)
{
	return stash(OP_RENAME, ARG(0), ARG(1), ARG(2), ARG(3), ARG(4));
}

SEC("tracepoint/syscalls/sys_enter_renameat")
int tp_enter_renameat(struct sys_enter_ctx *ctx)
{
	return stash(OP_RENAME, ARG(0), ARG(1), ARG(2), ARG(3), 0);
}

SEC("tracepoint/syscalls/sys_enter_rename")
int tp_enter_rename(struct sys_enter_ctx *ctx)
{
	return stash(OP_RENAME, AT_FDCWD, ARG(0), AT_FDCWD, ARG(1), 0);
}

SEC("tracepoint/syscalls/sys_enter_unlinkat")
int tp_enter_unlinkat(struct sys_enter_ctx *ctx)
{
	return stash(OP_UNLINK, ARG(0), ARG(1), AT_FDCWD, 0, ARG(2));
}

SEC("tracepoint/syscalls/sys_enter_unlink")
int tp_enter_unlink(struct sys_enter_ctx *ctx)
{
	return stash(OP_UNLINK, AT_FDCWD, ARG(0), AT_FDCWD, 0, 0);
}

SEC("tracepoint/syscalls/sys_enter_rmdir")
int tp_enter_rmdir(struct sys_enter_ctx *ctx)
{
	return stash(OP_RMDIR, AT_FDCWD, ARG(0), AT_FDCWD, 0, 0);
}
