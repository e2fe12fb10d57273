package node

import "strings"

// ParsePod derives the Kubernetes pod UID and container ID from a cgroup
// path (v2, or a v1 hierarchy's). Either is empty when the path does not
// name it; both are empty for a path outside any pod (/, system.slice,
// user.slice).
//
// It reads the layouts the kubelet and the container runtimes make:
//
//	systemd driver  /kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_with_underscores>.slice/cri-containerd-<id>.scope
//	                (also crio-<id>.scope, crio-conmon-<id>.scope, docker-<id>.scope; guaranteed QoS: kubepods-pod<uid>.slice)
//	cgroupfs driver /kubepods/burstable/pod<uid>/<id>, /kubepods/pod<uid>/<id> (also crio-<id>, crio-conmon-<id>)
//
// and the unexpanded systemd form some runtimes leave,
// kubepods-besteffort-pod<uid>.slice:cri-containerd:<id>, with anything
// above the pod (a kind node's /docker/<id>/ or
// /system.slice/containerd.service/, a cgroup namespace's /../) and anything
// below the container (the child cgroup overtime gives a tracked tree).
//
// The pod UID comes back with dashes (0d5f1a3c-8e0b-4a6e-9a59-3f8e6f0b1c2d),
// or as the 32 hex digits a static pod's UID is. The container ID is the 64
// hex digits of the cgroup just below the pod; for CRI-O's conmon
// (crio-conmon-<id>.scope) it is the ID of the container conmon monitors.
// When the path nests pods (a cluster in a pod), the outermost pod is the one
// the node's kubelet knows, and the one returned.
func ParsePod(cgroupPath string) (podUID, containerID string) {
	rest := cgroupPath
	for rest != "" {
		var comp string
		comp, rest, _ = strings.Cut(rest, "/")
		// A runtime that did not expand its systemd cgroupsPath leaves it
		// as one "SLICE:PREFIX:ID" component.
		slice, unexpanded, isColon := strings.Cut(comp, ":")
		uid, ok := podComponent(slice)
		if !ok {
			continue
		}
		if isColon {
			_, id, _ := strings.Cut(unexpanded, ":")
			if !isHex(id, 64) {
				id = ""
			}
			return uid, id
		}
		next, _, _ := strings.Cut(rest, "/")
		return uid, containerComponent(next)
	}
	return "", ""
}

// podComponent reads a pod cgroup name: kubepods[-QOS]-pod<uid>.slice
// (systemd, the UID's dashes escaped as underscores) or pod<uid> (cgroupfs).
func podComponent(comp string) (string, bool) {
	var uid string
	if name, ok := strings.CutSuffix(comp, ".slice"); ok {
		if !strings.HasPrefix(name, "kubepods-") {
			return "", false
		}
		i := strings.LastIndex(name, "-pod")
		if i < 0 {
			return "", false
		}
		uid = strings.ReplaceAll(name[i+len("-pod"):], "_", "-")
	} else {
		var ok bool
		if uid, ok = strings.CutPrefix(comp, "pod"); !ok {
			return "", false
		}
	}
	if !isUUID(uid) && !isHex(uid, 32) {
		return "", false
	}
	return uid, true
}

// containerComponent reads a container cgroup name: <runtime>-<id>.scope
// (systemd), <id> or crio-<id> (cgroupfs), where id is 64 hex digits.
func containerComponent(comp string) string {
	name, scope := strings.CutSuffix(comp, ".scope")
	if scope {
		// systemd allows a leaf scope's name only with a runtime prefix.
		i := strings.LastIndexByte(name, '-')
		if i < 0 || !knownRuntimePrefix(name[:i+1]) {
			return ""
		}
		name = name[i+1:]
	} else {
		for _, prefix := range []string{"crio-conmon-", "crio-"} {
			if id, ok := strings.CutPrefix(name, prefix); ok {
				name = id
				break
			}
		}
	}
	if !isHex(name, 64) {
		return ""
	}
	return name
}

// knownRuntimePrefix: the scope prefixes of containerd's CRI plugin, CRI-O
// (its containers and their conmon monitors), Docker (dockershim,
// cri-dockerd) and bare containerd.
func knownRuntimePrefix(p string) bool {
	switch p {
	case "cri-containerd-", "crio-", "crio-conmon-", "docker-", "containerd-":
		return true
	}
	return false
}

// isUUID: 8-4-4-4-12 hex digits.
func isUUID(s string) bool {
	if len(s) != 36 {
		return false
	}
	for i := 0; i < len(s); i++ {
		switch i {
		case 8, 13, 18, 23:
			if s[i] != '-' {
				return false
			}
		default:
			if !isHexDigit(s[i]) {
				return false
			}
		}
	}
	return true
}

func isHex(s string, n int) bool {
	if len(s) != n {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !isHexDigit(s[i]) {
			return false
		}
	}
	return true
}

// isHexDigit accepts lower case only: the kubelet and the runtimes write
// IDs in lower case.
func isHexDigit(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f'
}
