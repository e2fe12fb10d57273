//go:build ignore

// SPDX-License-Identifier: GPL-2.0
/* overtime.c: the kernel side of overtime, one compilation unit with one
 * header per hook. See common.h for the maps and the event layout. */
#include "common.h"
#include "exec.h"
#include "fork.h"
#include "exit.h"
#include "files_tp.h"

char LICENSE[] SEC("license") = "GPL";
