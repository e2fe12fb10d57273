package bpf

import (
	"encoding/binary"
	"errors"
	"fmt"
	"unsafe"
)

// Type is the kind of a kernel record.
type Type uint8

// Record types, as in common.h (enum event_type).
const (
	TypeExec Type = 1
	TypeFork Type = 2
	TypeExit Type = 3
	TypeReap Type = 4
	TypeFile Type = 5
)

func (t Type) String() string {
	switch t {
	case TypeExec:
		return "exec"
	case TypeFork:
		return "fork"
	case TypeExit:
		return "exit"
	case TypeReap:
		return "reap"
	case TypeFile:
		return "file"
	}
	return fmt.Sprintf("type(%d)", uint8(t))
}

// FileOp is the file operation of a TypeFile record, as in common.h
// (enum file_op).
type FileOp uint8

// File operations.
const (
	// OpOpen: an open, openat, openat2 or creat with O_CREAT succeeded.
	// Whether it created the file is told by Flags (O_EXCL) or FMode (the
	// calibrated FMODE_CREATED bit).
	OpOpen FileOp = 1
	// OpMkdir: Path is a new directory.
	OpMkdir FileOp = 2
	// OpSymlink: Path is a new symlink, pointing at Path2 (not resolved).
	OpSymlink FileOp = 3
	// OpLink: Path2 is a new hard link to Path.
	OpLink FileOp = 4
	// OpRename: Path was renamed to Path2 (Flags: renameat2 flags).
	OpRename FileOp = 5
	// OpUnlink: Path was removed (Flags: AT_REMOVEDIR for a directory).
	OpUnlink FileOp = 6
	// OpRmdir: directory Path was removed.
	OpRmdir FileOp = 7
)

func (o FileOp) String() string {
	switch o {
	case OpOpen:
		return "open"
	case OpMkdir:
		return "mkdir"
	case OpSymlink:
		return "symlink"
	case OpLink:
		return "link"
	case OpRename:
		return "rename"
	case OpUnlink:
		return "unlink"
	case OpRmdir:
		return "rmdir"
	}
	return fmt.Sprintf("op(%d)", uint8(o))
}

// Bounds of the kernel copies (common.h).
const (
	CommLen     = 16
	FilenameMax = 256
	ArgsMax     = 1024
	PathMax     = 512
	DirMax      = 512
)

// Truncation bits of the record header (common.h TRUNC_*).
const (
	truncFilename = 1 << iota
	truncArgs
	truncPath
	truncPath2
)

// File record dirs bits (common.h DIR_SET, DIR2_SET).
const (
	dirSet  = 1
	dir2Set = 2
)

// appendDir appends to dst the directory whose names the kernel wrote leaf
// first, each NUL-terminated ("c\x00b\x00a\x00"): "/a/b/c", or "/" for none.
func appendDir(dst, names []byte) []byte {
	if len(names) > 0 && names[len(names)-1] == 0 {
		names = names[:len(names)-1]
	}
	if len(names) == 0 {
		return append(dst, '/')
	}
	for end := len(names); end > 0; {
		start := end - 1
		for start >= 0 && names[start] != 0 {
			start--
		}
		dst = append(dst, '/')
		dst = append(dst, names[start+1:end]...)
		end = start
	}
	return dst
}

// execHeld is the exec record's flag for a process the kernel stopped
// (common.h EXEC_HELD).
const execHeld = 1

// The record layout is the one of the C structs in common.h, through the
// Go types bpf2go generates from them (-type in gen.go, overtime_bpfel.go).
// Offsets and sizes are constants, so Decode reads fields in place, with no
// copy into a struct; TestRecordLayout checks the types against the
// object's BTF and the header's constants.
var (
	_hdr  overtimeEventHdr
	_exec overtimeExecEvent
	_exit overtimeExitEvent
	_file overtimeFileEvent
)

// Record sizes: the fixed part of each type; exec and file records carry
// their strings after it, as long as they are.
const (
	hdrSize   = int(unsafe.Sizeof(_hdr))
	execFixed = int(unsafe.Offsetof(_exec.Data))
	exitSize  = int(unsafe.Sizeof(_exit))
	fileFixed = int(unsafe.Offsetof(_file.Data))
)

// Field offsets, from the start of the record.
const (
	hdrOp    = unsafe.Offsetof(_hdr.Op)
	hdrTrunc = unsafe.Offsetof(_hdr.Trunc)
	hdrTgid  = unsafe.Offsetof(_hdr.Tgid)
	hdrPpid  = unsafe.Offsetof(_hdr.Ppid)
	hdrTid   = unsafe.Offsetof(_hdr.Tid)
	hdrTime  = unsafe.Offsetof(_hdr.Time)
	hdrBorn  = unsafe.Offsetof(_hdr.Born)

	execCgroupID    = unsafe.Offsetof(_exec.CgroupId)
	execComm        = unsafe.Offsetof(_exec.Comm)
	execFilenameLen = unsafe.Offsetof(_exec.FilenameLen)
	execArgsLen     = unsafe.Offsetof(_exec.ArgsLen)
	execArgsCopied  = unsafe.Offsetof(_exec.ArgsCopied)
	execFlags       = unsafe.Offsetof(_exec.Flags)

	exitCode = unsafe.Offsetof(_exit.ExitCode)

	fileFlags    = unsafe.Offsetof(_file.Flags)
	fileFMode    = unsafe.Offsetof(_file.F_mode)
	fileDirfd    = unsafe.Offsetof(_file.Dirfd)
	fileDirfd2   = unsafe.Offsetof(_file.Dirfd2)
	fileDev      = unsafe.Offsetof(_file.Dev)
	filePathLen  = unsafe.Offsetof(_file.PathLen)
	filePath2Len = unsafe.Offsetof(_file.Path2Len)
	fileIno      = unsafe.Offsetof(_file.Ino)
	fileDirLen   = unsafe.Offsetof(_file.DirLen)
	fileDir2Len  = unsafe.Offsetof(_file.Dir2Len)
	fileDirs     = unsafe.Offsetof(_file.Dirs)
)

// ErrMalformed is returned (wrapped) by Decode for a record it cannot read.
var ErrMalformed = errors.New("malformed record")

// Record is one decoded kernel record. Its byte slices are reused by the
// next Decode (or Read) into the same Record: copy what must outlive it.
type Record struct {
	Type Type
	// TGID is the process the record is about (for a fork: the child).
	TGID uint32
	// TID is the thread that caused it (the child's for a fork).
	TID uint32
	// PPID is the parent's tgid (exec: real_parent; fork: the forking
	// process).
	PPID uint32
	// Born is the process's start time (group leader's start_boottime, ns
	// on CLOCK_BOOTTIME); /proc/PID/stat starttime in ns.
	Born uint64
	// Time is when it happened (ns on CLOCK_BOOTTIME).
	Time uint64

	// Exec.
	CgroupID          uint64 // cgroup v2 id (the inode number of its directory)
	Comm              []byte // no NUL
	Filename          []byte // the path given to execve, as the kernel saw it
	FilenameTruncated bool
	Args              []byte // NUL-separated argv, as much as was copied
	ArgsLen           uint32 // the full argv length in the process
	ArgsTruncated     bool
	// Held: the kernel stopped the process at exec (SIGSTOP); it waits for
	// user space to resume it (SIGCONT) or end it.
	Held bool

	// Exit: a wait(2)-style status, (code << 8) | signal.
	ExitCode int32

	// File.
	FileOp         FileOp
	Flags          uint32 // open flags; unlinkat, linkat, renameat2 flags
	FMode          uint32 // struct file f_mode of an open
	Dirfd, Dirfd2  int32  // dirfds for Path, Path2 (AT_FDCWD = -100)
	Dev            uint32 // kernel dev_t encoding (major<<20 | minor) of an open's inode
	Ino            uint64 // an open's inode number
	Path, Path2    []byte // as passed to the syscall (relative or absolute)
	PathTruncated  bool   // conservative: set when the path filled its buffer
	Path2Truncated bool
	// Dir and Dir2 are the directories relative Path and Path2 start from
	// (the cwd, or the directory open as Dirfd, Dirfd2), as the process
	// saw them when the syscall returned; HasDir, HasDir2 say they were
	// read (not for an absolute path, a symlink's target, or a directory
	// deeper or longer than the kernel's bounds).
	Dir, Dir2       []byte
	HasDir, HasDir2 bool
}

var le = binary.LittleEndian

// cstr returns b up to its first NUL (or all of it).
func cstr(b []byte) []byte {
	for i, c := range b {
		if c == 0 {
			return b[:i]
		}
	}
	return b
}

// Decode reads one raw ring-buffer record into rec, reusing rec's buffers.
// A short or malformed record is an error wrapping ErrMalformed.
func Decode(raw []byte, rec *Record) error {
	if len(raw) < hdrSize {
		return fmt.Errorf("%w: %d bytes, header needs %d", ErrMalformed, len(raw), hdrSize)
	}
	typ := Type(raw[0])
	trunc := le.Uint16(raw[hdrTrunc:])
	rec.Type = typ
	rec.TGID = le.Uint32(raw[hdrTgid:])
	rec.PPID = le.Uint32(raw[hdrPpid:])
	rec.TID = le.Uint32(raw[hdrTid:])
	rec.Time = le.Uint64(raw[hdrTime:])
	rec.Born = le.Uint64(raw[hdrBorn:])
	rec.CgroupID, rec.ExitCode = 0, 0
	rec.Comm, rec.Filename, rec.Args = rec.Comm[:0], rec.Filename[:0], rec.Args[:0]
	rec.ArgsLen, rec.FilenameTruncated, rec.ArgsTruncated, rec.Held = 0, false, false, false
	rec.FileOp, rec.Flags, rec.FMode, rec.Dirfd, rec.Dirfd2, rec.Dev, rec.Ino = 0, 0, 0, 0, 0, 0, 0
	rec.Path, rec.Path2 = rec.Path[:0], rec.Path2[:0]
	rec.PathTruncated, rec.Path2Truncated = false, false
	rec.Dir, rec.Dir2, rec.HasDir, rec.HasDir2 = rec.Dir[:0], rec.Dir2[:0], false, false

	switch typ {
	case TypeFork, TypeReap:
		return nil
	case TypeExit:
		if len(raw) < exitSize {
			return fmt.Errorf("%w: exit record of %d bytes, need %d", ErrMalformed, len(raw), exitSize)
		}
		rec.ExitCode = int32(le.Uint32(raw[exitCode:]))
		return nil
	case TypeExec:
		if len(raw) < execFixed {
			return fmt.Errorf("%w: exec record of %d bytes, need %d", ErrMalformed, len(raw), execFixed)
		}
		rec.CgroupID = le.Uint64(raw[execCgroupID:])
		rec.Comm = append(rec.Comm, cstr(raw[execComm:execComm+CommLen])...)
		flen, alen := le.Uint32(raw[execFilenameLen:]), le.Uint32(raw[execArgsLen:])
		acopied, flags := le.Uint32(raw[execArgsCopied:]), le.Uint32(raw[execFlags:])
		if flen >= FilenameMax || acopied > ArgsMax || acopied > alen || len(raw) < execFixed+int(flen)+int(acopied) {
			return fmt.Errorf("%w: exec record of %d bytes, lengths filename %d args %d/%d", ErrMalformed, len(raw), flen, acopied, alen)
		}
		p := raw[execFixed:]
		rec.Filename = append(rec.Filename, cstr(p[:flen])...)
		rec.Args = append(rec.Args, p[flen:flen+acopied]...)
		rec.ArgsLen = alen
		rec.FilenameTruncated = trunc&truncFilename != 0
		rec.ArgsTruncated = trunc&truncArgs != 0
		rec.Held = flags&execHeld != 0
		return nil
	case TypeFile:
		if len(raw) < fileFixed {
			return fmt.Errorf("%w: file record of %d bytes, need %d", ErrMalformed, len(raw), fileFixed)
		}
		op := FileOp(raw[hdrOp])
		if op < OpOpen || op > OpRmdir {
			return fmt.Errorf("%w: file op %d", ErrMalformed, op)
		}
		rec.FileOp = op
		rec.Flags = le.Uint32(raw[fileFlags:])
		rec.FMode = le.Uint32(raw[fileFMode:])
		rec.Dirfd = int32(le.Uint32(raw[fileDirfd:]))
		rec.Dirfd2 = int32(le.Uint32(raw[fileDirfd2:]))
		rec.Dev = le.Uint32(raw[fileDev:])
		plen, p2len := int(le.Uint16(raw[filePathLen:])), int(le.Uint16(raw[filePath2Len:]))
		rec.Ino = le.Uint64(raw[fileIno:])
		dlen, d2len, dirs := int(le.Uint16(raw[fileDirLen:])), int(le.Uint16(raw[fileDir2Len:])), le.Uint16(raw[fileDirs:])
		if plen >= PathMax || p2len >= PathMax || dlen > DirMax || d2len > DirMax ||
			len(raw) < fileFixed+plen+p2len+dlen+d2len {
			return fmt.Errorf("%w: file record of %d bytes, lengths %d, %d, %d, %d", ErrMalformed, len(raw), plen, p2len, dlen, d2len)
		}
		p := raw[fileFixed:]
		rec.Path = append(rec.Path, cstr(p[:plen])...)
		p = p[plen:]
		rec.Path2 = append(rec.Path2, cstr(p[:p2len])...)
		p = p[p2len:]
		if dirs&dirSet != 0 {
			rec.HasDir = true
			rec.Dir = appendDir(rec.Dir, p[:dlen])
		}
		p = p[dlen:]
		if dirs&dir2Set != 0 {
			rec.HasDir2 = true
			rec.Dir2 = appendDir(rec.Dir2, p[:d2len])
		}
		rec.PathTruncated = trunc&truncPath != 0
		rec.Path2Truncated = trunc&truncPath2 != 0
		return nil
	}
	return fmt.Errorf("%w: unknown type %d", ErrMalformed, typ)
}
