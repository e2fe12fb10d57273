package node

import "testing"

func TestParsePod(t *testing.T) {
	const (
		uid    = "0d5f1a3c-8e0b-4a6e-9a59-3f8e6f0b1c2d"
		uidU   = "0d5f1a3c_8e0b_4a6e_9a59_3f8e6f0b1c2d"
		static = "1864dd0546310be9937c37cf88024cb8" // a static pod's UID: md5 hex
		id     = "5eed917563583925ffdbd40a64efb2aaffe58638e57add8becaf460fe74f5b1c"
		id2    = "0ba8ac17e4e7a31fb82279503552fe94e64bab4745bf6fd2ff231e7c8ca8bed0"
		node   = "d6701ec289c56e4391acb11d07474b3139466857a305490575508a8b7a9fcf22"
	)
	tests := []struct {
		name, path, pod, ctr string
	}{
		// systemd driver
		{"systemd containerd burstable",
			"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + uidU + ".slice/cri-containerd-" + id + ".scope", uid, id},
		{"systemd containerd besteffort",
			"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + uidU + ".slice/cri-containerd-" + id + ".scope", uid, id},
		{"systemd guaranteed",
			"/kubepods.slice/kubepods-pod" + uidU + ".slice/cri-containerd-" + id + ".scope", uid, id},
		{"systemd crio",
			"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + uidU + ".slice/crio-" + id + ".scope", uid, id},
		{"systemd crio conmon",
			"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + uidU + ".slice/crio-conmon-" + id + ".scope", uid, id},
		{"systemd crio container child",
			"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + uidU + ".slice/crio-" + id + ".scope/container", uid, id},
		{"systemd docker",
			"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + uidU + ".slice/docker-" + id + ".scope", uid, id},
		{"systemd static pod",
			"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + static + ".slice/cri-containerd-" + id + ".scope", static, id},
		{"systemd pod slice only",
			"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + uidU + ".slice", uid, ""},
		{"systemd unknown runtime scope",
			"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + uidU + ".slice/weird-" + id + ".scope", uid, ""},
		{"systemd unexpanded cgroupsPath",
			"/kubepods-besteffort-pod" + uidU + ".slice:cri-containerd:" + id, uid, id},
		{"systemd overtime child cgroup",
			"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + uidU + ".slice/cri-containerd-" + id + ".scope/overtime.restic.4242.123456789", uid, id},
		{"systemd deeper children",
			"/kubepods.slice/kubepods-pod" + uidU + ".slice/cri-containerd-" + id + ".scope/a/b/" + id2, uid, id},

		// cgroupfs driver (also how cgroup v1 hierarchies read)
		{"cgroupfs burstable", "/kubepods/burstable/pod" + uid + "/" + id, uid, id},
		{"cgroupfs besteffort", "/kubepods/besteffort/pod" + uid + "/" + id, uid, id},
		{"cgroupfs guaranteed", "/kubepods/pod" + uid + "/" + id, uid, id},
		{"cgroupfs crio", "/kubepods/burstable/pod" + uid + "/crio-" + id, uid, id},
		{"cgroupfs crio conmon", "/kubepods/burstable/pod" + uid + "/crio-conmon-" + id, uid, id},
		{"cgroupfs static pod", "/kubepods/burstable/pod" + static + "/" + id, static, id},
		{"cgroupfs pod only", "/kubepods/burstable/pod" + uid, uid, ""},
		{"cgroupfs trailing slash", "/kubepods/burstable/pod" + uid + "/" + id + "/", uid, id},
		{"cgroupfs overtime child cgroup", "/kubepods/burstable/pod" + uid + "/" + id + "/overtime.borg.77.991", uid, id},
		{"cgroupfs short id", "/kubepods/burstable/pod" + uid + "/" + id[:12], uid, ""},

		// nested nodes (kind, minikube) and cgroup namespaces
		{"kind v1 cgroupfs", "/docker/" + node + "/kubepods/besteffort/pod" + uid + "/" + id, uid, id},
		{"kind v1 systemd", "/docker/" + node + "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + uidU + ".slice/crio-" + id + ".scope", uid, id},
		{"kind containerd.service", "/system.slice/containerd.service/kubepods-burstable-pod" + uidU + ".slice:cri-containerd:" + id, uid, id},
		{"kind containerd.service expanded", "/system.slice/containerd.service/kubepods-burstable-pod" + uidU + ".slice/cri-containerd-" + id + ".scope", uid, id},
		{"system.slice docker scope above", "/system.slice/docker-" + node + ".scope/kubepods/pod" + uid + "/" + id, uid, id},
		{"cgroup namespace relative", "/../../kubepods-besteffort-pod" + uidU + ".slice/cri-containerd-" + id + ".scope", uid, id},
		{"pod in pod: the outer one", "/kubepods/burstable/pod" + uid + "/" + id + "/kubepods/besteffort/pod" + static + "/" + id2, uid, id},

		// not a pod
		{"root", "/", "", ""},
		{"empty", "", "", ""},
		{"sshd", "/system.slice/sshd.service", "", ""},
		{"containerd itself", "/system.slice/containerd.service", "", ""},
		{"user session", "/user.slice/user-1000.slice/session-3.scope", "", ""},
		{"user manager", "/user.slice/user-1000.slice/user@1000.service/app.slice/app-gnome-firefox-1234.scope", "", ""},
		{"kubepods QoS level", "/kubepods.slice/kubepods-burstable.slice", "", ""},
		{"kubepods cgroupfs QoS level", "/kubepods/burstable", "", ""},
		{"plain docker", "/docker/" + id, "", ""},
		{"plain docker systemd", "/system.slice/docker-" + id + ".scope", "", ""},
		{"podman pod", "/machine.slice/machine-libpod_pod_" + static + ".slice/libpod-" + id + ".scope", "", ""},
		{"pod prefix, not a uid", "/kubepods/burstable/podcast/" + id, "", ""},
		{"upper case uid", "/kubepods/pod0D5F1A3C-8E0B-4A6E-9A59-3F8E6F0B1C2D/" + id, "", ""},
		{"slice not under kubepods", "/system.slice/foo-pod" + uidU + ".slice/cri-containerd-" + id + ".scope", "", ""},
		{"init scope", "/init.scope", "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pod, ctr := ParsePod(tt.path)
			if pod != tt.pod || ctr != tt.ctr {
				t.Errorf("ParsePod(%q)\n = %q, %q\nwant %q, %q", tt.path, pod, ctr, tt.pod, tt.ctr)
			}
		})
	}
}
