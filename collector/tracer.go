//go:build linux

package collector

import (
	"time"

	"overtime/bpf"
)

// tracer is the kernel side a Source reads and steers: *bpf.Tracer (through
// bpfTracer), or in tests a fake that feeds records without root, so the
// conversion of records to events is tested apart from the kernel.
type tracer interface {
	// Read fills rec with the next record; os.ErrDeadlineExceeded at the
	// deadline, bpf.ErrFlushed after Wake, bpf.ErrMalformed for a record
	// that does not decode.
	Read(rec *bpf.Record) error
	SetDeadline(d time.Time)
	Wake() error
	// Lost is the running count of records the kernel dropped.
	Lost() (uint64, error)
	Calibrate(dir string) (mask uint32, err error)

	SetFilter(comms []string, all bool, hold []string) error
	Track(pid int) error
	Untrack(pid int) error
	Pending() ([]int, error)
	EnableFiles() error
	DisableFiles() (bool, error)
	FilesEnabled() bool
	HoldDone(pid int) error
	HoldsExpired() (uint64, error)
}

// bpfTracer is a loaded *bpf.Tracer as a tracer: it flattens the hold
// record's calls.
type bpfTracer struct{ *bpf.Tracer }

func (t bpfTracer) HoldDone(pid int) error        { return t.Holds().Done(pid) }
func (t bpfTracer) HoldsExpired() (uint64, error) { return t.Holds().Expired() }
