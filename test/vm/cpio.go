package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"path"
	"sort"
)

// cpioWriter writes an uncompressed "newc" archive, the format the kernel
// unpacks as its initramfs. Uncompressed: under TCG, decompressing costs
// more boot time than copying.
type cpioWriter struct {
	w    *bufio.Writer
	off  int64
	ino  int
	dirs map[string]bool
}

func newCpio(w io.Writer) *cpioWriter {
	return &cpioWriter{w: bufio.NewWriterSize(w, 1<<20), dirs: map[string]bool{"": true, ".": true, "/": true}}
}

func (c *cpioWriter) header(name string, mode uint32, size int64) error {
	c.ino++
	hdr := fmt.Sprintf("070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		c.ino, mode, 0, 0, 1, 0, size, 0, 0, 0, 0, len(name)+1, 0)
	n, err := io.WriteString(c.w, hdr+name+"\x00")
	c.off += int64(n)
	if err != nil {
		return err
	}
	return c.pad()
}

func (c *cpioWriter) pad() error {
	for c.off%4 != 0 {
		if err := c.w.WriteByte(0); err != nil {
			return err
		}
		c.off++
	}
	return nil
}

// mkdirAll adds name and its parents as directories.
func (c *cpioWriter) mkdirAll(name string) error {
	if c.dirs[name] {
		return nil
	}
	if err := c.mkdirAll(path.Dir(name)); err != nil {
		return err
	}
	c.dirs[name] = true
	return c.header(name, 0o040755, 0)
}

// file adds data as name (no leading slash) with mode's permission bits.
func (c *cpioWriter) file(name string, mode os.FileMode, data []byte) error {
	if err := c.mkdirAll(path.Dir(name)); err != nil {
		return err
	}
	if err := c.header(name, 0o100000|uint32(mode.Perm()), int64(len(data))); err != nil {
		return err
	}
	n, err := c.w.Write(data)
	c.off += int64(n)
	if err != nil {
		return err
	}
	return c.pad()
}

// copyFile adds the host file src as name.
func (c *cpioWriter) copyFile(name, src string) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	st, err := os.Stat(src)
	if err != nil {
		return err
	}
	return c.file(name, st.Mode(), b)
}

func (c *cpioWriter) close() error {
	if err := c.header("TRAILER!!!", 0, 0); err != nil {
		return err
	}
	return c.w.Flush()
}

// sortedKeys returns m's keys in order, so archives are reproducible.
func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
