package ociimage

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"io"
	"slices"
	"strings"
	"testing"
)

// The archive is a consistent OCI layout: every digest names its blob, the
// diff ID is the uncompressed layer's, the layer holds the files with their
// parents, and the index carries the name ctr names the image by.
func TestWriteLayout(t *testing.T) {
	var buf bytes.Buffer
	img := Image{
		Name:       "docker.io/library/x:v1",
		Entrypoint: []string{"/bin/x"},
		Cmd:        []string{"run"},
		Files: []File{
			{Path: "/bin/x", Mode: 0o755, Data: []byte("binary")},
			{Path: "/bin/y", Link: "x"},
			{Path: "/tmp", Dir: true, Mode: 0o777},
		},
	}
	if err := Write(&buf, img); err != nil {
		t.Fatal(err)
	}
	blobs := map[string][]byte{}
	tr := tar.NewReader(&buf)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(tr)
		blobs[h.Name] = b
	}
	var index struct {
		Manifests []descriptor `json:"manifests"`
	}
	if err := json.Unmarshal(blobs["index.json"], &index); err != nil || len(index.Manifests) != 1 {
		t.Fatalf("index.json: %v %s", err, blobs["index.json"])
	}
	if got := index.Manifests[0].Annotations["io.containerd.image.name"]; got != img.Name {
		t.Errorf("image name annotation %q", got)
	}
	blob := func(d descriptor) []byte {
		b, ok := blobs[blobPath(d.Digest)]
		if !ok || digest(b) != d.Digest || int64(len(b)) != d.Size {
			t.Fatalf("blob %s: missing or wrong digest/size", d.Digest)
		}
		return b
	}
	var manifest struct {
		Config descriptor   `json:"config"`
		Layers []descriptor `json:"layers"`
	}
	if err := json.Unmarshal(blob(index.Manifests[0]), &manifest); err != nil || len(manifest.Layers) != 1 {
		t.Fatalf("manifest: %v", err)
	}
	var config struct {
		Config struct{ Entrypoint, Cmd []string }
		RootFS struct {
			DiffIDs []string `json:"diff_ids"`
		} `json:"rootfs"`
	}
	if err := json.Unmarshal(blob(manifest.Config), &config); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(config.Config.Entrypoint, img.Entrypoint) || !slices.Equal(config.Config.Cmd, img.Cmd) {
		t.Errorf("config %+v", config.Config)
	}
	zr, err := gzip.NewReader(bytes.NewReader(blob(manifest.Layers[0])))
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := io.ReadAll(zr)
	if len(config.RootFS.DiffIDs) != 1 || config.RootFS.DiffIDs[0] != digest(raw) {
		t.Errorf("diff_ids %v, want %s", config.RootFS.DiffIDs, digest(raw))
	}
	var names []string
	lr := tar.NewReader(bytes.NewReader(raw))
	for {
		h, err := lr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, h.Name+" "+string(h.Typeflag)+" "+h.Linkname)
	}
	want := []string{"bin/ 5 ", "bin/x 0 ", "bin/y 2 x", "tmp/ 5 "}
	if !slices.Equal(names, want) {
		t.Errorf("layer entries %q, want %q", names, want)
	}
}

func TestWriteRefusesBadPaths(t *testing.T) {
	for _, p := range []string{"rel/x", "/a/../b", "/"} {
		err := Write(io.Discard, Image{Name: "x", Files: []File{{Path: p, Data: []byte{}}}})
		if err == nil || !strings.Contains(err.Error(), p) {
			t.Errorf("path %q: error %v, want one naming it", p, err)
		}
	}
}
