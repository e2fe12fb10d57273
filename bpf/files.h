/* files.h: file provenance for tracked processes, the part shared by the
 * two ways of hooking the calls: the syscall tracepoints (files_tp.h) and,
 * where the kernel allows tracing programs, fentry/fexit on the kernel's
 * file functions (fentry.h). An entry program stashes a call's arguments by
 * thread; its exit program sends a record when the call succeeded. For an
 * untracked process the cost is one map lookup.
 *
 * Whether an open created its file is decided in user space from f_mode (the
 * FMODE_CREATED bit is calibrated at start-up, see calibrate.go). */
#pragma once
#include "common.h"

#define AT_FDCWD -100
#define O_WRONLY 01
#define O_CREAT 0100
#define O_TRUNC 01000

struct file_stash {
	__u32 op;
	__u32 flags;
	__s32 dirfd;
	__s32 dirfd2;
	__u64 path;
	__u64 path2;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64); /* pid_tgid */
	__type(value, struct file_stash);
} file_stash SEC(".maps");

static __always_inline int stash(__u32 op, __s32 dirfd, __u64 path, __s32 dirfd2,
				 __u64 path2, __u32 flags)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tgid = id >> 32;
	if (!bpf_map_lookup_elem(&tracked, &tgid))
		return 0;
	struct file_stash s = {
		.op = op,
		.flags = flags,
		.dirfd = dirfd,
		.dirfd2 = dirfd2,
		.path = path,
		.path2 = path2,
	};
	bpf_map_update_elem(&file_stash, &id, &s, BPF_ANY);
	return 0;
}

/* fd_file returns the struct file open as fd in the current task, or 0. */
static __always_inline struct file *fd_file(long fd)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct fdtable *fdt = BPF_CORE_READ(task, files, fdt);
	if (!fdt || fd < 0 || (__u64)fd >= BPF_CORE_READ(fdt, max_fds))
		return 0;
	struct file **fds = BPF_CORE_READ(fdt, fd);
	struct file *f = 0;
	if (bpf_probe_read_kernel(&f, sizeof(f), &fds[fd]))
		return 0;
	return f;
}

static __always_inline void read_file(struct file_event *e, struct file *f)
{
	e->f_mode = BPF_CORE_READ(f, f_mode);
	e->ino = BPF_CORE_READ(f, f_inode, i_ino);
	e->dev = BPF_CORE_READ(f, f_inode, i_sb, s_dev);
}

static __always_inline void read_open_file(struct file_event *e, long fd)
{
	struct file *f = fd_file(fd);
	if (f)
		read_file(e, f);
}

/* The directory walk is done in two passes so that every kernel's verifier
 * follows it cheaply: dir_walk records a pointer to each name (no copies,
 * no offsets: its paths differ only in pointers the verifier does not
 * track, so they prune), then dir_copy copies the names one after another
 * into a buffer at a fixed place (one offset, masked where it is used).
 * Copying while walking made the 5.10 and 6.1 verifiers lose the bound of
 * the offset (kept on the stack between helper calls) or, with masks,
 * follow every mix of mount crossings and names past their 1M limit. */
struct dir_scratch {
	/* dir_walk: the d_name.name of each step, leaf first; 0 for a step
	 * that crossed a mount; DIR_END after the last. */
	__u64 names[DIR_MAX_DEPTH];
	/* dir_copy: the names, each NUL-terminated; one name more than
	 * DIR_MAX_LEN so that a copy at any offset below it is in bounds. */
	char buf[DIR_MAX_LEN + NAME_MAX_LEN];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct dir_scratch);
} dir_scratch SEC(".maps");

/* The names entry after the last step: not a kernel address. */
#define DIR_END 1

/* dir_walk walks the directory (vfsmnt, dentry) as the current task sees
 * it up to its root, filling ds->names. It returns 0, or -1 past
 * DIR_MAX_DEPTH - 1 steps. Not the number of steps: a constant per
 * return, it would make the verifier check dir_copy once for each. */
static __always_inline long dir_walk(struct dir_scratch *ds, struct vfsmount *vfsmnt,
				     struct dentry *dentry)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct vfsmount *root_mnt = BPF_CORE_READ(task, fs, root.mnt);
	struct dentry *root = BPF_CORE_READ(task, fs, root.dentry);
	__u64 mnt_off = bpf_core_field_offset(struct mount, mnt);
	struct mount *mnt = (void *)vfsmnt - mnt_off;

	for (int i = 0; i < DIR_MAX_DEPTH; i++) {
		if (dentry == root && vfsmnt == root_mnt)
			goto end;
		if (dentry == BPF_CORE_READ(vfsmnt, mnt_root)) {
			/* The root of a mount: go on from where it is mounted. */
			struct mount *parent = BPF_CORE_READ(mnt, mnt_parent);
			if (parent == mnt)
				goto end; /* the top of the mount namespace */
			dentry = BPF_CORE_READ(mnt, mnt_mountpoint);
			mnt = parent;
			vfsmnt = (void *)parent + mnt_off;
			ds->names[i] = 0;
			continue;
		}
		struct dentry *up = BPF_CORE_READ(dentry, d_parent);
		if (up == dentry)
			goto end;
		ds->names[i] = (__u64)BPF_CORE_READ(dentry, d_name.name);
		dentry = up;
		continue;
	end:
		ds->names[i] = DIR_END;
		return 0;
	}
	return -1;
}

/* dir_copy copies the names of ds->names into ds->buf: the
 * names leaf first, each NUL-terminated ("c\0b\0a\0" for /a/b/c, nothing
 * for /). It returns the bytes written, or -1 when they would pass
 * DIR_MAX_LEN - 1 (user space then resolves the path itself). */
static __always_inline long dir_copy(struct dir_scratch *ds)
{
	__u64 off = 0;

	for (int i = 0; i < DIR_MAX_DEPTH; i++) {
		__u64 name = ds->names[i];
		if (name == DIR_END)
			break;
		if (!name)
			continue;
		if (off > DIR_MAX_LEN - 1)
			return -1;
		BOUND(off, DIR_MAX_LEN - 1);
		long n = bpf_probe_read_kernel_str(ds->buf + off, NAME_MAX_LEN, (void *)name);
		if (n <= 0)
			return -1;
		off += n;
	}
	if (off > DIR_MAX_LEN - 1)
		return -1;
	return off;
}

/* resolve_dir writes into ds->buf the names of the directory a path
 * relative to dirfd starts from (the cwd for AT_FDCWD); see dir_copy. */
static __always_inline long resolve_dir(struct dir_scratch *ds, __s32 dirfd)
{
	struct vfsmount *mnt;
	struct dentry *dentry;
	if (dirfd == AT_FDCWD) {
		struct task_struct *task = (struct task_struct *)bpf_get_current_task();
		mnt = BPF_CORE_READ(task, fs, pwd.mnt);
		dentry = BPF_CORE_READ(task, fs, pwd.dentry);
	} else {
		struct file *f = fd_file(dirfd);
		if (!f)
			return -1;
		mnt = BPF_CORE_READ(f, f_path.mnt);
		dentry = BPF_CORE_READ(f, f_path.dentry);
	}
	if (!mnt || !dentry)
		return -1;
	if (dir_walk(ds, mnt, dentry))
		return -1;
	return dir_copy(ds);
}

/* dir_names writes the names of the directory a path relative to dirfd
 * starts from into dir_scratch's buf (see resolve_dir) and returns their
 * length, or -1. A global function: the verifier checks it once, on its
 * own, instead of once for every state its callers reach it in. */
__attribute__((noinline)) long dir_names(__s32 dirfd)
{
	__u32 zero = 0;
	struct dir_scratch *ds = bpf_map_lookup_elem(&dir_scratch, &zero);
	if (!ds)
		return -1;
	return resolve_dir(ds, dirfd);
}

/* add_dir appends to the record, at *end, the names of the directory a
 * path relative to dirfd starts from. It returns their length, or -1 when
 * they were not read. */
static __always_inline long add_dir(struct file_event *e, __u64 *end, __s32 dirfd)
{
	long d = dir_names(dirfd);
	if (d < 0 || d > DIR_MAX_LEN - 1)
		return -1;
	__u32 zero = 0;
	struct dir_scratch *ds = bpf_map_lookup_elem(&dir_scratch, &zero);
	if (!ds)
		return -1;
	__u64 at = *end, len = d;
	/* at < 2 * PATH_MAX_LEN + DIR_MAX_LEN and len < DIR_MAX_LEN: the masks
	 * change nothing but tell every verifier (FILE_DATA_LEN has room for
	 * the largest masked values). */
	BOUND(at, FILE_DATA_MASK);
	BOUND(len, DIR_MAX_LEN - 1);
	if (len > 0 && bpf_probe_read_kernel(e->data + at, len, ds->buf))
		return -1;
	*end = at + len;
	return len;
}

/* emit_file sends the record of a file call that succeeded with ret: s
 * holds its arguments. kpath: s->path is a kernel string (else a user
 * pointer, read now: the call has returned and it is still the caller's).
 * f: the struct file an open returned, or 0 to read it from the fd table
 * (fd ret). kpath and f are constants where it is inlined. */
static __always_inline int emit_file(struct file_stash *sp, __u32 tgid, __u32 tid, long ret,
				     struct file *f, const int kpath)
{
	struct file_stash s = *sp;
	if (ret < 0)
		return 0;

	union scratch *buf = scratch_buf();
	if (!buf)
		return 0;
	struct file_event *e = &buf->file;
	fill_hdr(&e->hdr, EV_FILE, tgid);
	e->hdr.op = s.op;
	e->hdr.tid = tid;
	e->flags = s.flags;
	e->f_mode = 0;
	e->dirfd = s.dirfd;
	e->dirfd2 = s.dirfd2;
	e->dev = 0;
	e->ino = 0;

	/* A full buffer may be an exact fit or a longer path: the bound is
	 * conservative, a 511-byte path is reported as truncated. */
	__u32 plen = 0, p2len = 0;
	long n;
	if (kpath)
		n = bpf_probe_read_kernel_str(e->data, PATH_MAX_LEN, (void *)s.path);
	else
		n = bpf_probe_read_user_str(e->data, PATH_MAX_LEN, (void *)s.path);
	if (n > 0) {
		plen = (n - 1) & (PATH_MAX_LEN - 1);
		if (n == PATH_MAX_LEN)
			e->hdr.trunc |= TRUNC_PATH;
	}
	if (s.path2) {
		/* path2 right after path. */
		n = bpf_probe_read_user_str(e->data + plen, PATH_MAX_LEN, (void *)s.path2);
		if (n > 0) {
			p2len = (n - 1) & (PATH_MAX_LEN - 1);
			if (n == PATH_MAX_LEN)
				e->hdr.trunc |= TRUNC_PATH2;
		}
	}
	e->path_len = plen;
	e->path2_len = p2len;
	if (f)
		read_file(e, f);
	else if (s.op == OP_OPEN)
		read_open_file(e, ret);

	/* The directories relative paths start from, read now: user space
	 * reads the record later, when the process may have moved or gone. */
	__u64 end = plen + p2len;
	long d;
	e->dir_len = 0;
	e->dir2_len = 0;
	e->dirs = 0;
	e->pad = 0;
	if (plen > 0 && e->data[0] != '/') {
		d = add_dir(e, &end, s.dirfd);
		if (d >= 0) {
			e->dir_len = d;
			e->dirs |= DIR_SET;
		}
	}
	/* path2 of a symlink is its target, not a path. */
	if (p2len > 0 && s.op != OP_SYMLINK && e->data[plen] != '/') {
		d = add_dir(e, &end, s.dirfd2);
		if (d >= 0) {
			e->dir2_len = d;
			e->dirs |= DIR2_SET;
		}
	}
	BOUND(end, FILE_DATA_MASK);
	output(e, __builtin_offsetof(struct file_event, data) + end);
	return 0;
}

/* file_exit ends a call whose arguments an entry program stashed: it sends
 * its record if the call succeeded (ret >= 0) and always drops the stash. */
static __always_inline int file_exit(long ret)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct file_stash *sp = bpf_map_lookup_elem(&file_stash, &id);
	if (!sp)
		return 0;
	struct file_stash s = *sp;
	/* Always clean the stash, failed call or not. */
	bpf_map_delete_elem(&file_stash, &id);
	return emit_file(&s, id >> 32, (__u32)id, ret, 0, 0);
}
