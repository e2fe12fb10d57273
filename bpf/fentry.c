//go:build ignore

// SPDX-License-Identifier: GPL-2.0
/* fentry.c: the file programs on fentry/fexit (fentry.h), a unit apart
 * from overtime.c: a kernel that refuses tracing programs must still load
 * the others. It shares overtime.c's maps (fentry.go replaces its copies),
 * all but the scratch buffers. */
#include "common.h"
#include "fentry.h"

char LICENSE[] SEC("license") = "GPL";
