/* Off-CPU time by stack: how long tasks were blocked, weighted in microseconds.
 *
 * At sched_switch the task going off the CPU (prev) is still current: its scope, name and
 * stacks (where it blocks) are taken there and stamped; when it is switched back in (next)
 * the time since is added to that stack. Only the tracepoint's own fields are read, never
 * struct task_struct, so approximate headers are enough.
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

BPF_HASH(start, u32, struct start_t, FT_MAP_ENTRIES);   /* tid -> when it went off-CPU */
BPF_HASH(counts, struct key_t, u64, FT_MAP_ENTRIES);    /* stack -> microseconds off-CPU */
BPF_STACK_TRACE(stack_traces, FT_STACK_ENTRIES);

TRACEPOINT_PROBE(sched, sched_switch)
{
    u32 prev = args->prev_pid;
    u32 next = args->next_pid;
    u64 now = bpf_ktime_get_ns();

    if (prev != 0 && (FT_PREEMPTED || (args->prev_state & FT_TASK_REPORT_MASK) != 0)
        && ft_in_scope()) {
        struct start_t s = {};
        s.ts = now;
        s.tgid = bpf_get_current_pid_tgid() >> 32;
        bpf_get_current_comm(&s.comm, sizeof(s.comm));
        /* -1 stands for "not collected"; real errors from get_stackid are other negatives. */
#if FT_USER
        s.user_stack_id = stack_traces.get_stackid(args, BPF_F_USER_STACK);
#else
        s.user_stack_id = -1;
#endif
#if FT_KERNEL
        s.kernel_stack_id = stack_traces.get_stackid(args, 0);
#else
        s.kernel_stack_id = -1;
#endif
        if (start.update(&prev, &s) != 0)
            ft_count_drop();
    }

    if (next == 0)
        return 0;
    struct start_t *s = start.lookup(&next);
    if (!s)
        return 0;
    u64 us = (now - s->ts) / 1000;
    struct key_t key = {};
    key.tgid = s->tgid;
    key.user_stack_id = s->user_stack_id;
    key.kernel_stack_id = s->kernel_stack_id;
    __builtin_memcpy(&key.comm, s->comm, sizeof(key.comm));
    start.delete(&next);
    if (us < FT_MIN_US)
        return 0;
    u64 zero = 0;
    u64 *total = counts.lookup_or_try_init(&key, &zero);
    if (total)
        __sync_fetch_and_add(total, us);
    else
        ft_count_drop();
    return 0;
}
