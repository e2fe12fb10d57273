//go:build linux

package bpf

import (
	_ "embed"
	"reflect"
	"regexp"
	"strconv"
	"testing"

	"github.com/cilium/ebpf/btf"
)

// commonH is the header, built into the test binary: it also runs where
// the source tree is not (the kernel matrix's guests).
//
//go:embed common.h
var commonH []byte

// TestRecordLayout checks the record layout three ways: the Go types
// bpf2go generated (overtime_bpfel.go) against the structs in the
// committed object's BTF, the decoder's sizes and offsets against both,
// and the decoder's bounds, bits and enum values against common.h (its
// #defines and enums are not in BTF, so the header is read as text).
func TestRecordLayout(t *testing.T) {
	spec, err := loadOvertime()
	if err != nil {
		t.Fatal(err)
	}
	structOf := func(name string) *btf.Struct {
		t.Helper()
		var s *btf.Struct
		if err := spec.Types.TypeByName(name, &s); err != nil {
			t.Fatalf("struct %s in the object's BTF: %v", name, err)
		}
		return s
	}
	offsetOf := func(s *btf.Struct, member string) int {
		t.Helper()
		for _, m := range s.Members {
			if m.Name == member {
				return int(m.Offset.Bytes())
			}
		}
		t.Fatalf("struct %s has no member %s", s.Name, member)
		return 0
	}

	for _, tc := range []struct {
		c string
		v any
	}{
		{"event_hdr", overtimeEventHdr{}},
		{"exec_event", overtimeExecEvent{}},
		{"exit_event", overtimeExitEvent{}},
		{"file_event", overtimeFileEvent{}},
	} {
		s := structOf(tc.c)
		gt := reflect.TypeOf(tc.v)
		if int(gt.Size()) != int(s.Size) {
			t.Errorf("%s: Go %v is %d bytes, the C struct %d", tc.c, gt, gt.Size(), s.Size)
		}
		var fields []reflect.StructField
		for i := range gt.NumField() {
			if f := gt.Field(i); f.Name != "_" {
				fields = append(fields, f)
			}
		}
		if len(fields) != len(s.Members) {
			t.Errorf("%s: Go %v has %d fields, the C struct %d members", tc.c, gt, len(fields), len(s.Members))
			continue
		}
		for i, m := range s.Members {
			f := fields[i]
			size, err := btf.Sizeof(m.Type)
			if err != nil {
				t.Fatalf("%s.%s: %v", tc.c, m.Name, err)
			}
			if int(f.Offset) != int(m.Offset.Bytes()) || int(f.Type.Size()) != size || m.BitfieldSize != 0 {
				t.Errorf("%s.%s: C offset %d size %d; Go %s offset %d size %d",
					tc.c, m.Name, m.Offset.Bytes(), size, f.Name, f.Offset, f.Type.Size())
			}
		}
	}

	// The decoder's sizes: a fixed part ends where the strings start.
	for _, c := range []struct {
		name      string
		got, want int
	}{
		{"hdrSize", hdrSize, int(structOf("event_hdr").Size)},
		{"execFixed", execFixed, offsetOf(structOf("exec_event"), "data")},
		{"exitSize", exitSize, int(structOf("exit_event").Size)},
		{"fileFixed", fileFixed, offsetOf(structOf("file_event"), "data")},
		{"exec hdr", offsetOf(structOf("exec_event"), "hdr"), 0},
		{"file hdr", offsetOf(structOf("file_event"), "hdr"), 0},
		{"exit hdr", offsetOf(structOf("exit_event"), "hdr"), 0},
		{"exec_event.comm", len(overtimeExecEvent{}.Comm), CommLen},
		{"exec_event.data", len(overtimeExecEvent{}.Data), FilenameMax + ArgsMax},
	} {
		if c.got != c.want {
			t.Errorf("%s = %d, the object's layout says %d", c.name, c.got, c.want)
		}
	}

	// The header's constants.
	src := commonH
	consts := map[string]int{}
	for _, m := range regexp.MustCompile(`(?m)^(?:#define\s+(\w+)\s+|\s+(\w+)\s*=\s*)(\d+)\b`).FindAllSubmatch(src, -1) {
		name := string(m[1]) + string(m[2])
		v, err := strconv.Atoi(string(m[3]))
		if err != nil {
			t.Fatal(err)
		}
		consts[name] = v
	}
	for name, got := range map[string]int{
		"TASK_COMM_LEN": CommLen, "FILENAME_MAX_LEN": FilenameMax, "ARGS_MAX_LEN": ArgsMax,
		"PATH_MAX_LEN": PathMax, "DIR_MAX_LEN": DirMax,
		"TRUNC_FILENAME": truncFilename, "TRUNC_ARGS": truncArgs, "TRUNC_PATH": truncPath, "TRUNC_PATH2": truncPath2,
		"DIR_SET": dirSet, "DIR2_SET": dir2Set, "EXEC_HELD": execHeld,
		"EV_EXEC": int(TypeExec), "EV_FORK": int(TypeFork), "EV_EXIT": int(TypeExit), "EV_REAP": int(TypeReap), "EV_FILE": int(TypeFile),
		"OP_OPEN": int(OpOpen), "OP_MKDIR": int(OpMkdir), "OP_SYMLINK": int(OpSymlink), "OP_LINK": int(OpLink),
		"OP_RENAME": int(OpRename), "OP_UNLINK": int(OpUnlink), "OP_RMDIR": int(OpRmdir),
	} {
		want, ok := consts[name]
		if !ok {
			t.Errorf("common.h defines no %s", name)
		} else if got != want {
			t.Errorf("%s: Go %d, common.h %d", name, got, want)
		}
	}
	// The file record's strings fill FILE_DATA_LEN = 4 * PATH_MAX_LEN - 1
	// + DIR_MAX_LEN (the mask and the last dir's room).
	if got, want := len(overtimeFileEvent{}.Data), 4*PathMax-1+DirMax; got != want {
		t.Errorf("file_event.data is %d bytes, want 4*PathMax-1+DirMax = %d", got, want)
	}
}
