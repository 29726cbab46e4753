/* Off-CPU time by stack: how long tasks were blocked, weighted in microseconds.
 *
 * At sched_switch the task going off the CPU (prev) is still current: its scope, name and
 * stacks (where it blocks) are taken there and stamped; when it is switched back in (next)
 * the time since is added to that stack. No struct task_struct field is read (approximate
 * headers are enough): the raw tracepoint keys tasks by their task_struct pointers, the
 * tracepoint by the pids in its record. One attach option is compiled in:
 *   FT_ATTACH_TRACEPOINT      sched:sched_switch; "runnable" is prev_state & 0xff == 0
 *   FT_ATTACH_RAW_TRACEPOINT  raw sched_switch (no record formatted, but dearer stack walks);
 *                             "runnable" is its preempt argument
 *
 * -D FT_USER / FT_KERNEL     collect user / kernel stacks (1) or not (0)
 * -D FT_PREEMPTED            count time of tasks preempted while runnable too (1)
 * -D FT_MIN_US               ignore blocks shorter than this many microseconds
 * -D FT_STACK_ENTRIES        distinct stacks the kernel can hold
 */
/* prev_state & 0xff == 0: still runnable (preempted); 0x100 (TASK_REPORT_MAX) marks
 * preemption on top, so the mask is needed (as in runqlat). */
#define FT_TASK_REPORT_MASK 0xff

struct start_t {
    u64 ts;
    u32 tgid;
    int user_stack_id;
    int kernel_stack_id;
    char comm[FT_COMM_LEN];
};

struct key_t {
    u32 tgid;
    int user_stack_id;
    int kernel_stack_id;
    char comm[FT_COMM_LEN];
};

BPF_HASH(start, u64, struct start_t, FT_MAP_ENTRIES);   /* task -> when it went off-CPU */
BPF_HASH(counts, struct key_t, u64, FT_MAP_ENTRIES);    /* stack -> microseconds off-CPU */
BPF_STACK_TRACE(stack_traces, FT_STACK_ENTRIES);

/* prev (the current task, `prev_key`) goes off the CPU, next (`next_key`) comes on. */
static __always_inline void ft_switch(void *ctx, int runnable, u64 prev_key, u64 next_key)
{
    u64 now = bpf_ktime_get_ns();
    u32 tid = bpf_get_current_pid_tgid();

    if (tid != 0 && (FT_PREEMPTED || !runnable) && ft_in_scope()) {
        struct start_t s = {};
        s.ts = now;
        s.tgid = bpf_get_current_pid_tgid() >> 32;
        bpf_get_current_comm(&s.comm, sizeof(s.comm));
        /* -1 stands for "not collected"; real errors from get_stackid are other negatives. */
#if FT_USER
        s.user_stack_id = stack_traces.get_stackid(ctx, BPF_F_USER_STACK);
#else
        s.user_stack_id = -1;
#endif
#if FT_KERNEL
        s.kernel_stack_id = stack_traces.get_stackid(ctx, 0);
#else
        s.kernel_stack_id = -1;
#endif
        if (start.update(&prev_key, &s) != 0)
            ft_count_drop();
    }

    struct start_t *s = start.lookup(&next_key);
    if (!s)
        return;
    u64 us = (now - s->ts) / 1000;
    struct key_t key = {};
    key.tgid = s->tgid;
    key.user_stack_id = s->user_stack_id;
    key.kernel_stack_id = s->kernel_stack_id;
    __builtin_memcpy(&key.comm, s->comm, sizeof(key.comm));
    start.delete(&next_key);
    if (us < FT_MIN_US)
        return;
    u64 zero = 0;
    u64 *total = counts.lookup_or_try_init(&key, &zero);
    if (total)
        __sync_fetch_and_add(total, us);
    else
        ft_count_drop();
}

#ifdef FT_ATTACH_RAW_TRACEPOINT
/* TP_PROTO(bool preempt, struct task_struct *prev, struct task_struct *next, ...) */
RAW_TRACEPOINT_PROBE(sched_switch)
{
    ft_switch(ctx, ctx->args[0] != 0, ctx->args[1], ctx->args[2]);
    return 0;
}
#endif

#ifdef FT_ATTACH_TRACEPOINT
TRACEPOINT_PROBE(sched, sched_switch)
{
    int runnable = (args->prev_state & FT_TASK_REPORT_MASK) == 0;
    ft_switch(args, runnable, (u32)args->prev_pid, (u32)args->next_pid);
    return 0;
}
#endif
