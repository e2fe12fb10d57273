//go:build linux

package bpf

//go:generate go tool bpf2go -tags linux -target bpfel -cflags "-O2 -mcpu=v3 -g -Wall -Werror" -go-package bpf -type event_hdr -type exec_event -type exit_event -type file_event overtime overtime.c
//go:generate go tool bpf2go -tags linux -target bpfel -cflags "-O2 -mcpu=v3 -g -Wall -Werror" -go-package bpf fentry fentry.c
