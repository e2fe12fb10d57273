package ociimage

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
)

// AgentName is the reference `make image` gives the agent image.
const AgentName = "docker.io/library/overtime"

// BuildAgent builds the agent the way the Dockerfile does (a static,
// stripped binary: CGO_ENABLED=0, -trimpath, -s -w, version and commit
// stamped) from the module at repoRoot, and writes its image to out: the
// binary as /overtime on an empty base, entrypoint /overtime, cmd run, user
// 0:0, port 9477. It returns the image's name, AgentName:version.
func BuildAgent(ctx context.Context, repoRoot, out, version, commit string) (string, error) {
	tmp, err := os.MkdirTemp("", "overtime-image-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(tmp)
	bin := filepath.Join(tmp, "overtime")
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath",
		"-ldflags", fmt.Sprintf("-s -w -X main.version=%s -X main.commit=%s", version, commit),
		"-o", bin, "./cmd/overtime")
	cmd.Dir = repoRoot
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux")
	var stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stderr, &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("go build ./cmd/overtime: %w\n%s", err, stderr.String())
	}
	name := AgentName + ":" + tagOf(version)
	img := Image{
		Name:         name,
		Files:        []File{{Path: "/overtime", Mode: 0o755, Src: bin}},
		Entrypoint:   []string{"/overtime"},
		Cmd:          []string{"run"},
		User:         "0:0",
		ExposedPorts: []string{"9477/tcp"},
		Labels: map[string]string{
			"org.opencontainers.image.title":       "overtime",
			"org.opencontainers.image.description": "Node agent that ends overdue backup-engine processes and cleans up their lock files",
			"org.opencontainers.image.version":     version,
			"org.opencontainers.image.revision":    commit,
		},
	}
	if err := WriteFile(out, img); err != nil {
		return "", err
	}
	return name, nil
}

// tagOf turns a version into a valid image tag ([A-Za-z0-9_.-], at most
// 128 characters, not starting with . or -).
func tagOf(version string) string {
	b := []byte(version)
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '.' || c == '-') {
			b[i] = '_'
		}
	}
	if len(b) > 128 {
		b = b[:128]
	}
	if len(b) == 0 || b[0] == '.' || b[0] == '-' {
		b = append([]byte("v"), b...)
	}
	return string(b)
}
