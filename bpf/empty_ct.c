// SPDX-License-Identifier: GPL-2.0
/*
 * empty_ct: programs that do nothing, on the kernel functions ovsfoot_ct.c
 * hooks, with the same probe type and names (bench/ loads it with bcc and
 * ovsfoot_ct.c's USE_FENTRY and DESTROY_FN). Their run time per call, taken
 * with bpf_stats in the same boot, is what any program on these hooks costs;
 * bench/ reports ovsfoot_ct.c's as a ratio to it.
 */
#ifdef USE_FENTRY
#define HOOK(fn) KFUNC_PROBE(fn)
#else
#include <uapi/linux/ptrace.h>
#define HOOK(fn) int kprobe__##fn(struct pt_regs *ctx)
#endif
#define ON(fn) HOOK(fn)  /* expands DESTROY_FN first */

ON(__nf_conntrack_confirm)
{
	return 0;
}

ON(__nf_ct_refresh_acct)
{
	return 0;
}

ON(nf_ct_delete)
{
	return 0;
}

ON(DESTROY_FN)
{
	return 0;
}
