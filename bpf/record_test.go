package bpf

import (
	"encoding/binary"
	"errors"
	"testing"
)

// Builders of raw records in the kernel layout (common.h).

func rawHdr(b []byte, typ Type, op FileOp, trunc uint16, tgid, ppid uint32) {
	b[0], b[1] = byte(typ), byte(op)
	binary.LittleEndian.PutUint16(b[2:], trunc)
	binary.LittleEndian.PutUint32(b[4:], tgid)
	binary.LittleEndian.PutUint32(b[8:], ppid)
	binary.LittleEndian.PutUint32(b[12:], tgid)
	binary.LittleEndian.PutUint64(b[16:], 2000)
	binary.LittleEndian.PutUint64(b[24:], 1000)
}

func rawExec(comm, filename, args string) []byte {
	b := make([]byte, execFixed+len(filename)+len(args))
	rawHdr(b, TypeExec, 0, 0, 42, 1)
	p := b[hdrSize:]
	binary.LittleEndian.PutUint64(p, 7)
	copy(p[8:], comm)
	p = p[8+CommLen:]
	binary.LittleEndian.PutUint32(p, uint32(len(filename)))
	binary.LittleEndian.PutUint32(p[4:], uint32(len(args)))
	binary.LittleEndian.PutUint32(p[8:], uint32(len(args)))
	copy(p[16:], filename)
	copy(p[16+len(filename):], args)
	return b
}

func rawFile(op FileOp, path, path2 string) []byte {
	return rawFileDirs(op, path, path2, "", "", 0)
}

// rawFileDirs adds the directory names (leaf first, NUL-terminated) and
// the dirs bits.
func rawFileDirs(op FileOp, path, path2, dir, dir2 string, dirs uint16) []byte {
	b := make([]byte, fileFixed+len(path)+len(path2)+len(dir)+len(dir2))
	rawHdr(b, TypeFile, op, 0, 42, 0)
	p := b[hdrSize:]
	binary.LittleEndian.PutUint32(p, 0o101)
	binary.LittleEndian.PutUint32(p[4:], 0x100000)
	binary.LittleEndian.PutUint32(p[8:], uint32(0xffffff9c)) // -100
	binary.LittleEndian.PutUint32(p[16:], 8<<20|3)
	binary.LittleEndian.PutUint16(p[20:], uint16(len(path)))
	binary.LittleEndian.PutUint16(p[22:], uint16(len(path2)))
	binary.LittleEndian.PutUint64(p[24:], 99)
	binary.LittleEndian.PutUint16(p[32:], uint16(len(dir)))
	binary.LittleEndian.PutUint16(p[34:], uint16(len(dir2)))
	binary.LittleEndian.PutUint16(p[36:], dirs)
	copy(p[40:], path+path2+dir+dir2)
	return b
}

func rawExit(code int32) []byte {
	b := make([]byte, exitSize)
	rawHdr(b, TypeExit, 0, 0, 42, 0)
	binary.LittleEndian.PutUint32(b[hdrSize:], uint32(code))
	return b
}

func TestDecode(t *testing.T) {
	var rec Record
	if err := Decode(rawExec("restic", "/usr/bin/restic", "restic\x00backup\x00"), &rec); err != nil {
		t.Fatal(err)
	}
	if rec.Type != TypeExec || rec.TGID != 42 || rec.PPID != 1 || rec.Born != 1000 || rec.Time != 2000 ||
		rec.CgroupID != 7 || string(rec.Comm) != "restic" || string(rec.Filename) != "/usr/bin/restic" ||
		string(rec.Args) != "restic\x00backup\x00" || rec.ArgsLen != 14 {
		t.Errorf("exec decoded as %+v", rec)
	}
	if err := Decode(rawFile(OpRename, "a", "dir/b"), &rec); err != nil {
		t.Fatal(err)
	}
	if rec.Type != TypeFile || rec.FileOp != OpRename || string(rec.Path) != "a" || string(rec.Path2) != "dir/b" ||
		rec.Dirfd != -100 || rec.Dev != 8<<20|3 || rec.Ino != 99 || rec.FMode != 0x100000 || rec.Flags != 0o101 {
		t.Errorf("file decoded as %+v", rec)
	}
	raw := rawFileDirs(OpRename, "a", "b", "work\x00home\x00", "", dirSet|dir2Set)
	if err := Decode(raw, &rec); err != nil {
		t.Fatal(err)
	}
	if !rec.HasDir || string(rec.Dir) != "/home/work" || !rec.HasDir2 || string(rec.Dir2) != "/" {
		t.Errorf("dirs decoded as %q %v, %q %v", rec.Dir, rec.HasDir, rec.Dir2, rec.HasDir2)
	}
	if err := Decode(rawFile(OpOpen, "/abs", ""), &rec); err != nil || rec.HasDir || len(rec.Dir) != 0 {
		t.Errorf("an absolute path's record: %v %+v", err, rec)
	}
	// Fields of an earlier record do not leak into the next.
	if len(rec.Comm) != 0 || len(rec.Args) != 0 {
		t.Errorf("exec fields kept: %+v", rec)
	}
	if err := Decode(rawExit(3<<8), &rec); err != nil || rec.ExitCode != 3<<8 || len(rec.Path) != 0 {
		t.Errorf("exit: %v %+v", err, rec)
	}
}

func TestDecodeMalformed(t *testing.T) {
	badLen := rawExec("x", "/x", "")
	binary.LittleEndian.PutUint32(badLen[hdrSize+8+CommLen:], FilenameMax+1)
	badPath := rawFile(OpOpen, "a", "")
	binary.LittleEndian.PutUint16(badPath[hdrSize+20:], PathMax)
	badDir := rawFileDirs(OpOpen, "a", "", "d\x00", "", dirSet)
	binary.LittleEndian.PutUint16(badDir[hdrSize+32:], DirMax+1)
	badOp := rawFile(OpOpen, "a", "")
	badOp[1] = 99
	unknown := make([]byte, hdrSize)
	unknown[0] = 77
	for name, raw := range map[string][]byte{
		"empty":        nil,
		"short header": make([]byte, hdrSize-1),
		"short exec":   rawExec("x", "", "")[:execFixed-1],
		"short argv":   rawExec("x", "/x", "x\x00")[:execFixed+3],
		"short exit":   rawExit(0)[:exitSize-1],
		"short file":   rawFile(OpOpen, "", "")[:fileFixed-1],
		"short path2":  rawFile(OpRename, "a", "bb")[:fileFixed+2],
		"short dir":    rawFileDirs(OpOpen, "a", "", "d\x00", "", dirSet)[:fileFixed+2],
		"dir len":      badDir,
		"filename len": badLen,
		"path len":     badPath,
		"file op":      badOp,
		"unknown type": unknown,
	} {
		var rec Record
		if err := Decode(raw, &rec); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: err %v, want ErrMalformed", name, err)
		}
	}
}

func BenchmarkDecode(b *testing.B) {
	raws := [][]byte{
		rawExec("restic", "/usr/bin/restic", "restic\x00backup\x00--stdin\x00"),
		rawFile(OpOpen, "/repo/locks/abc", ""),
		rawExit(0),
	}
	var rec Record
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		if err := Decode(raws[i%len(raws)], &rec); err != nil {
			b.Fatal(err)
		}
	}
}

func TestDecodeAllocs(t *testing.T) {
	raw := rawExec("restic", "/usr/bin/restic", "restic\x00backup\x00")
	var rec Record
	Decode(raw, &rec) // grow the buffers once
	if n := testing.AllocsPerRun(100, func() { Decode(raw, &rec) }); n != 0 {
		t.Errorf("Decode allocates %v times per record", n)
	}
}

func FuzzDecode(f *testing.F) {
	f.Add(rawExec("restic", "/usr/bin/restic", "restic\x00backup\x00"))
	f.Add(rawFile(OpSymlink, "l", "target"))
	f.Add(rawFileDirs(OpLink, "a", "b", "x\x00", "y\x00z\x00", dirSet|dir2Set))
	f.Add(rawExit(9))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, raw []byte) {
		var rec Record
		if err := Decode(raw, &rec); err != nil {
			return
		}
		if len(rec.Comm) > CommLen || len(rec.Filename) > FilenameMax || len(rec.Args) > ArgsMax ||
			len(rec.Path) >= PathMax || len(rec.Path2) >= PathMax || len(rec.Dir) > DirMax+1 || len(rec.Dir2) > DirMax+1 {
			t.Errorf("decoded fields past their bounds: %+v", rec)
		}
	})
}
