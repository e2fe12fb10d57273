//go:build linux

package bpf

//go:generate go tool bpf2go -tags linux -target bpfel -cflags "-O2 -mcpu=v3 -g -Wall -Werror" -go-package bpf overtime overtime.c
//go:generate go tool bpf2go -tags linux -target bpfel -cflags "-O2 -mcpu=v3 -g -Wall -Werror" -go-package bpf fentry fentry.c
