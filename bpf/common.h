/* common.h: types, kernel struct declarations (CO-RE, only the fields read),
 * maps and the event layout shared by every hook of overtime.c.
 *
 * No vmlinux.h and no <linux/bpf.h>: the few types and constants needed are
 * declared here so the build needs only libbpf's bpf_helpers.h and
 * bpf_core_read.h, on any host architecture. The event layout is decoded by
 * record.go through the Go types bpf2go generates from these structs
 * (-type in gen.go); record_test.go checks them against the object. */
#pragma once

typedef unsigned char __u8;
typedef signed char __s8;
typedef unsigned short __u16;
typedef short __s16;
typedef unsigned int __u32;
typedef int __s32;
typedef unsigned long long __u64;
typedef long long __s64;
typedef __u16 __be16;
typedef __u32 __be32;
typedef __u32 __wsum;

/* The map types and flags used (values are UAPI, fixed forever). */
enum bpf_map_type {
	BPF_MAP_TYPE_HASH = 1,
	BPF_MAP_TYPE_ARRAY = 2,
	BPF_MAP_TYPE_PERCPU_ARRAY = 6,
	BPF_MAP_TYPE_RINGBUF = 27,
};
#define BPF_ANY 0
#define BPF_NOEXIST 1
#define EEXIST 17

struct bpf_raw_tracepoint_args {
	__u64 args[0];
};

#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>

/* ---- kernel structures: only the fields read, relocated by CO-RE ---- */

typedef struct {
	int counter;
} atomic_t___ovt;

struct tty_struct;

struct signal_struct {
	atomic_t___ovt live;
	int group_exit_code;
	unsigned int flags;
	struct tty_struct *tty; /* the controlling terminal, if any */
} __attribute__((preserve_access_index));

struct mm_struct {
	unsigned long arg_start;
	unsigned long arg_end;
} __attribute__((preserve_access_index));

struct super_block {
	__u32 s_dev;
} __attribute__((preserve_access_index));

struct inode {
	unsigned long i_ino;
	struct super_block *i_sb;
} __attribute__((preserve_access_index));

/* The qstr's len is in an anonymous struct of an anonymous union: CO-RE
 * finds it by name. */
struct qstr {
	__u32 len;
	const unsigned char *name;
} __attribute__((preserve_access_index));

struct dentry {
	struct dentry *d_parent;
	struct qstr d_name;
} __attribute__((preserve_access_index));

struct vfsmount {
	struct dentry *mnt_root;
} __attribute__((preserve_access_index));

/* fs/mount.h: struct vfsmount is embedded in it (real_mount). */
struct mount {
	struct mount *mnt_parent;
	struct dentry *mnt_mountpoint;
	struct vfsmount mnt;
} __attribute__((preserve_access_index));

struct path {
	struct vfsmount *mnt;
	struct dentry *dentry;
} __attribute__((preserve_access_index));

struct fs_struct {
	struct path root;
	struct path pwd;
} __attribute__((preserve_access_index));

struct file {
	unsigned int f_mode;
	struct inode *f_inode;
	struct path f_path;
} __attribute__((preserve_access_index));

struct fdtable {
	unsigned int max_fds;
	struct file **fd;
} __attribute__((preserve_access_index));

struct files_struct {
	struct fdtable *fdt;
} __attribute__((preserve_access_index));

struct task_struct {
	int pid;
	int tgid;
	int exit_code;
	__u64 start_boottime;
	struct task_struct *real_parent;
	struct task_struct *group_leader;
	struct signal_struct *signal;
	struct mm_struct *mm;
	struct files_struct *files;
	struct fs_struct *fs;
} __attribute__((preserve_access_index));

/* include/linux/sched/signal.h; unchanged since 2.6. */
#define SIGNAL_GROUP_EXIT 0x00000004

/* Tracepoint contexts. The sched_process_exec one is relocated against BTF;
 * the syscall ones have the fixed layout of every syscalls/ event (see
 * /sys/kernel/tracing/events/syscalls/x/format): 8 bytes of common fields,
 * the syscall number, then each argument in 8 bytes. */
struct trace_event_raw_sched_process_exec {
	__u32 __data_loc_filename;
} __attribute__((preserve_access_index));

struct sys_enter_ctx {
	__u64 common;
	__s32 nr;
	__u32 pad;
	__u64 args[6];
};

struct sys_exit_ctx {
	__u64 common;
	__s32 nr;
	__u32 pad;
	__s64 ret;
};

/* ---- event layout (little endian; decoded by record.go) ---- */

#define TASK_COMM_LEN 16
#define FILENAME_MAX_LEN 256
#define ARGS_MAX_LEN 1024
#define PATH_MAX_LEN 512
/* The directory a relative path is resolved from, as its names leaf first,
 * each NUL-terminated: less than DIR_MAX_LEN bytes, DIR_MAX_DEPTH steps
 * (names and mount crossings) at most. */
#define DIR_MAX_LEN 512
#define DIR_MAX_DEPTH 32
#define NAME_MAX_LEN 256
/* A file record's strings: path and path2 (< PATH_MAX_LEN each), then dir
 * and dir2 (< DIR_MAX_LEN each). A dir starts below 2 * PATH_MAX_LEN +
 * DIR_MAX_LEN; the copies mask its offset with FILE_DATA_MASK (a power of
 * two less one, past that) and its length with DIR_MAX_LEN - 1. */
#define FILE_DATA_MASK (4 * PATH_MAX_LEN - 1)
#define FILE_DATA_LEN (FILE_DATA_MASK + DIR_MAX_LEN)
_Static_assert(2 * PATH_MAX_LEN + DIR_MAX_LEN - 1 <= FILE_DATA_MASK, "dir offset mask");
_Static_assert((FILE_DATA_MASK & (FILE_DATA_MASK + 1)) == 0, "mask is a power of two less one");

enum event_type {
	EV_EXEC = 1,
	EV_FORK = 2,
	EV_EXIT = 3,
	EV_REAP = 4,
	EV_FILE = 5,
};

/* hdr.trunc bits */
#define TRUNC_FILENAME 1
#define TRUNC_ARGS 2
#define TRUNC_PATH 4
#define TRUNC_PATH2 8

enum file_op {
	OP_OPEN = 1, /* an open with O_CREAT (open, openat, openat2, creat) */
	OP_MKDIR = 2,
	OP_SYMLINK = 3, /* path: the new link, path2: its target */
	OP_LINK = 4,    /* path: the existing name, path2: the new one */
	OP_RENAME = 5,  /* path: old name, path2: new name */
	OP_UNLINK = 6,  /* unlink, unlinkat (flags: AT_REMOVEDIR) */
	OP_RMDIR = 7,
};

struct event_hdr {
	__u8 type;
	__u8 op;
	__u16 trunc;
	__u32 tgid;
	__u32 ppid;
	__u32 tid;
	__u64 time; /* bpf_ktime_get_boot_ns */
	__u64 born; /* group leader's start_boottime */
}; /* 32 bytes */

struct exec_event {
	struct event_hdr hdr;
	__u64 cgroup_id;
	char comm[TASK_COMM_LEN];
	__u32 filename_len; /* bytes copied, NUL excluded */
	__u32 args_len;     /* full argv length (arg_end - arg_start) */
	__u32 args_copied;  /* bytes of args that are valid */
	__u32 flags;        /* EXEC_HELD */
	/* filename_len bytes of the filename, then args_copied bytes of argv:
	 * the record ends there (it is built in scratch and sent with its
	 * real length, so a short command line takes a short record). */
	char data[FILENAME_MAX_LEN + ARGS_MAX_LEN];
};

struct exit_event {
	struct event_hdr hdr;
	__s32 exit_code;
	__u32 pad;
};

struct file_event {
	struct event_hdr hdr;
	__u32 flags; /* open flags, unlinkat/linkat/renameat2 flags */
	__u32 f_mode;
	__s32 dirfd;
	__s32 dirfd2;
	__u32 dev; /* kernel dev_t encoding: major << 20 | minor */
	__u16 path_len;  /* bytes copied, NUL excluded */
	__u16 path2_len;
	__u64 ino;
	__u16 dir_len;  /* bytes of dir */
	__u16 dir2_len;
	__u16 dirs;     /* DIR_SET, DIR2_SET: the directory of path, path2 was read */
	__u16 pad;
	/* path_len bytes of path, path2_len of path2, dir_len of dir (the
	 * directory a relative path is relative to), dir2_len of dir2: the
	 * record ends there. Sized for the offsets masked with FILE_DATA_MASK
	 * (see files.h), so every verifier sees every write in bounds. */
	char data[FILE_DATA_LEN];
};

/* file_event dirs bits */
#define DIR_SET 1
#define DIR2_SET 2

/* ---- maps ---- */

/* tracked flags */
#define TRACK_PENDING 1   /* a candidate: matched a comm, user space decides */
#define TRACK_CONFIRMED 2 /* user space called Track */

/* comm_filter values */
#define FILTER_MATCH 1 /* the comm may match a rule: send the exec up */
#define FILTER_HOLD 2  /* and stop it (SIGSTOP) until user space decides */
#define SIGSTOP_NR 19

struct tracked_val {
	__u32 flags;
};

/* exec_event flags */
#define EXEC_HELD 1 /* the kernel stopped it (SIGSTOP): user space resumes it */

struct config_val {
	__u32 pass_all;
	/* The file syscall programs are attached. Until they are, a new
	 * candidate is stopped at exec, so none of its file changes happen
	 * before they are traced (user space attaches them, then resumes it). */
	__u32 files_on;
};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 2 << 20); /* set from Go before load */
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} lost SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, char[TASK_COMM_LEN]);
	__type(value, __u8);
} comm_filter SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct config_val);
} config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, struct tracked_val);
} tracked SEC(".maps");

/* holds: the processes the exec program stopped (SIGSTOP) and user space
 * has not decided on yet, with their start time and when they were
 * stopped (boot clock, ns). A process is held only if it fits here, so
 * every stop is on record. The agent deletes an entry when it resumes or
 * ends the process; a guard process that outlives the agent resumes any
 * entry older than the hold bound (see cmd/overtime/guard.go). */
struct held_val {
	__u64 born; /* task start_boottime */
	__u64 at;   /* bpf_ktime_get_boot_ns() at the stop */
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 8192);
	__type(key, __u32);
	__type(value, struct held_val);
} holds SEC(".maps");

/* holds_expired[0]: how many holds the guard ended at the bound (written
 * from user space only). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} holds_expired SEC(".maps");

/* The tracked processes whose exit record was sent, from the exit of
 * their last thread to their reap: an entry is made with BPF_NOEXIST, so
 * of two last threads exiting at once on two CPUs one reports. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, __u8);
} exited SEC(".maps");

/* Variable-length records are built here, then copied to the ring buffer
 * with their real length. Tracepoint programs do not nest on a CPU.
 * exit_event is reserved in the ring buffer directly: it is a member only
 * so that its type is in the object's BTF, where bpf2go -type finds it (it
 * is smaller than the others, so the size does not change). */
union scratch {
	struct exec_event exec;
	struct file_event file;
	struct exit_event exit;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, union scratch);
} scratch SEC(".maps");

/* BOUND masks x with m (a power of two less one) where the verifier sees
 * it: an asm statement the compiler cannot drop, though it knows x <= m.
 * Older verifiers (5.10, 6.1) lose the bound a checked value carried once
 * the compiler moved it through the stack. */
#define BOUND(x, m) asm volatile("%0 &= %1" : "+r"(x) : "i"(m))

static __always_inline union scratch *scratch_buf(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&scratch, &zero);
}

static __always_inline void count_lost(void)
{
	__u32 zero = 0;
	__u64 *n = bpf_map_lookup_elem(&lost, &zero);
	if (n)
		*n += 1; /* per-CPU: no atomics needed */
}

/* output sends size bytes of a scratch record. */
static __always_inline void output(void *e, __u64 size)
{
	if (bpf_ringbuf_output(&events, e, size, 0))
		count_lost();
}

static __always_inline void *reserve(__u64 size)
{
	void *e = bpf_ringbuf_reserve(&events, size, 0);
	if (!e)
		count_lost();
	return e;
}

static __always_inline void fill_hdr(struct event_hdr *h, __u8 type, __u32 tgid)
{
	h->type = type;
	h->op = 0;
	h->trunc = 0;
	h->tgid = tgid;
	h->ppid = 0;
	h->tid = 0;
	h->time = bpf_ktime_get_boot_ns();
	h->born = 0;
}
