// Package ociimage writes container images as OCI image-layout tar archives
// without a container engine: one layer built from files on this machine,
// on an empty base. `ctr images import` (and `docker load`, `podman load`)
// accept the archive.
package ociimage

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path"
	"runtime"
	"sort"
	"strings"
	"time"
)

// File is one entry of the image's single layer.
type File struct {
	// Path inside the image, absolute (/overtime, /bin/sh).
	Path string
	// Mode bits (0o755); a directory when Dir is set.
	Mode os.FileMode
	Dir  bool
	// Either Src (a file on this machine) or Data (the content).
	Src  string
	Data []byte
	// Link makes a symlink to this target instead of a file.
	Link string
}

// Image describes the image to write.
type Image struct {
	// Name is the reference the archive carries, e.g.
	// docker.io/library/overtime:dev; `ctr images import` names the image by it.
	Name       string
	Files      []File
	Entrypoint []string
	Cmd        []string
	Env        []string
	User       string
	WorkingDir string
	Labels     map[string]string
	// ExposedPorts such as "9477/tcp".
	ExposedPorts []string
}

// epoch is the time every entry and the config carry, so the same inputs
// give the same digests.
var epoch = time.Unix(0, 0).UTC()

// WriteFile writes img as an OCI image-layout tar to name.
func WriteFile(name string, img Image) error {
	f, err := os.Create(name)
	if err != nil {
		return err
	}
	if err := Write(f, img); err != nil {
		f.Close()
		return fmt.Errorf("%s: %w", name, err)
	}
	return f.Close()
}

type descriptor struct {
	MediaType   string            `json:"mediaType"`
	Digest      string            `json:"digest"`
	Size        int64             `json:"size"`
	Annotations map[string]string `json:"annotations,omitempty"`
	Platform    *platform         `json:"platform,omitempty"`
}

type platform struct {
	Architecture string `json:"architecture"`
	OS           string `json:"os"`
}

// Write writes img as an OCI image-layout tar (oci-layout, index.json,
// blobs/sha256/...) to w.
func Write(w io.Writer, img Image) error {
	if img.Name == "" {
		return fmt.Errorf("image name is empty")
	}
	layer, diffID, err := buildLayer(img.Files)
	if err != nil {
		return err
	}
	layerDesc := descriptor{MediaType: "application/vnd.oci.image.layer.v1.tar+gzip", Digest: digest(layer), Size: int64(len(layer))}

	exposed := map[string]struct{}{}
	for _, p := range img.ExposedPorts {
		exposed[p] = struct{}{}
	}
	config := map[string]any{
		"created":      epoch.Format(time.RFC3339),
		"architecture": runtime.GOARCH,
		"os":           "linux",
		"config": map[string]any{
			"Entrypoint":   img.Entrypoint,
			"Cmd":          img.Cmd,
			"Env":          img.Env,
			"User":         img.User,
			"WorkingDir":   img.WorkingDir,
			"Labels":       img.Labels,
			"ExposedPorts": exposed,
		},
		"rootfs":  map[string]any{"type": "layers", "diff_ids": []string{diffID}},
		"history": []map[string]any{{"created": epoch.Format(time.RFC3339), "created_by": "overtime ociimage"}},
	}
	configJSON, err := json.Marshal(config)
	if err != nil {
		return err
	}
	configDesc := descriptor{MediaType: "application/vnd.oci.image.config.v1+json", Digest: digest(configJSON), Size: int64(len(configJSON))}

	manifestJSON, err := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.oci.image.manifest.v1+json",
		"config":        configDesc,
		"layers":        []descriptor{layerDesc},
	})
	if err != nil {
		return err
	}
	tag := img.Name
	if i := strings.LastIndexByte(tag, ':'); i > strings.LastIndexByte(tag, '/') {
		tag = tag[i+1:]
	} else {
		tag = "latest"
	}
	manifestDesc := descriptor{
		MediaType: "application/vnd.oci.image.manifest.v1+json",
		Digest:    digest(manifestJSON), Size: int64(len(manifestJSON)),
		Annotations: map[string]string{
			"io.containerd.image.name":          img.Name,
			"org.opencontainers.image.ref.name": tag,
		},
		Platform: &platform{Architecture: runtime.GOARCH, OS: "linux"},
	}
	indexJSON, err := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.oci.image.index.v1+json",
		"manifests":     []descriptor{manifestDesc},
	})
	if err != nil {
		return err
	}

	tw := tar.NewWriter(w)
	add := func(name string, data []byte) error {
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(data)), ModTime: epoch, Typeflag: tar.TypeReg}); err != nil {
			return err
		}
		_, err := tw.Write(data)
		return err
	}
	if err := tw.WriteHeader(&tar.Header{Name: "blobs/", Mode: 0o755, ModTime: epoch, Typeflag: tar.TypeDir}); err != nil {
		return err
	}
	if err := tw.WriteHeader(&tar.Header{Name: "blobs/sha256/", Mode: 0o755, ModTime: epoch, Typeflag: tar.TypeDir}); err != nil {
		return err
	}
	for _, f := range []struct {
		name string
		data []byte
	}{
		{"oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`)},
		{blobPath(layerDesc.Digest), layer},
		{blobPath(configDesc.Digest), configJSON},
		{blobPath(manifestDesc.Digest), manifestJSON},
		{"index.json", indexJSON},
	} {
		if err := add(f.name, f.data); err != nil {
			return err
		}
	}
	return tw.Close()
}

func digest(b []byte) string {
	s := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(s[:])
}

func blobPath(d string) string { return "blobs/sha256/" + strings.TrimPrefix(d, "sha256:") }

// buildLayer returns the gzipped layer tar and the digest of the
// uncompressed tar (the diff ID). Parent directories are added as needed.
func buildLayer(files []File) (gz []byte, diffID string, err error) {
	entries := map[string]File{}
	for _, f := range files {
		if !path.IsAbs(f.Path) || path.Clean(f.Path) != f.Path || f.Path == "/" {
			return nil, "", fmt.Errorf("file path %q: want a clean absolute path", f.Path)
		}
		p := strings.TrimPrefix(f.Path, "/")
		if _, dup := entries[p]; dup {
			return nil, "", fmt.Errorf("file path %q: given twice", f.Path)
		}
		entries[p] = f
		for d := path.Dir(p); d != "."; d = path.Dir(d) {
			if _, ok := entries[d]; !ok {
				entries[d] = File{Path: "/" + d, Dir: true, Mode: 0o755}
			}
		}
	}
	names := make([]string, 0, len(entries))
	for n := range entries {
		names = append(names, n)
	}
	sort.Strings(names)

	var raw bytes.Buffer
	tw := tar.NewWriter(&raw)
	for _, n := range names {
		f := entries[n]
		h := &tar.Header{Name: n, Mode: int64(f.Mode.Perm()), ModTime: epoch, Format: tar.FormatPAX}
		var data []byte
		switch {
		case f.Dir:
			if f.Src != "" || f.Data != nil || f.Link != "" {
				return nil, "", fmt.Errorf("file path %q: a directory with content", f.Path)
			}
			h.Typeflag, h.Name = tar.TypeDir, n+"/"
		case f.Link != "":
			h.Typeflag, h.Linkname = tar.TypeSymlink, f.Link
		case f.Src != "":
			if data, err = os.ReadFile(f.Src); err != nil {
				return nil, "", fmt.Errorf("file %s: %w", f.Path, err)
			}
			h.Typeflag, h.Size = tar.TypeReg, int64(len(data))
		default:
			data = f.Data
			h.Typeflag, h.Size = tar.TypeReg, int64(len(data))
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, "", err
		}
		if _, err := tw.Write(data); err != nil {
			return nil, "", err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, "", err
	}
	diffID = digest(raw.Bytes())
	var out bytes.Buffer
	zw := gzip.NewWriter(&out)
	zw.ModTime = epoch
	if _, err := zw.Write(raw.Bytes()); err != nil {
		return nil, "", err
	}
	if err := zw.Close(); err != nil {
		return nil, "", err
	}
	return out.Bytes(), diffID, nil
}
