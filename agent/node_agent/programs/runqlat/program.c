/* Run-queue latency: time from becoming runnable to running, as log2 histograms.
 *
 * At a wakeup the current task is the waker, so nothing about the wakee can be scoped or
 * labelled there. Instead the latency is computed when the task is switched in, parked in
 * `pending`, and charged when the task itself is current: at its next sched_switch as prev.
 * A task's last latency before the trace ends may therefore stay uncharged.
 *
 * -D FT_UNIT_DIV      nanoseconds per reported unit (1000 usec, 1000000 msec)
 * -D FT_PER_PID       one histogram per process (tgid, comm)
 * -D FT_PER_CGROUP    one histogram per cgroup v2 id
 */
#ifndef FT_UNIT_DIV
#define FT_UNIT_DIV 1000
#endif
/* sched_switch reports prev_state & 0xff == 0 for a still-runnable task; preemption sets
 * TASK_REPORT_MAX (0x100) on top, so comparing with 0 alone would miss preempted tasks. */
#define FT_TASK_REPORT_MASK 0xff

struct hist_key_t {
    u64 cgroup;
    u32 tgid;
    u32 slot;
    char comm[FT_COMM_LEN];
};

BPF_HASH(enqueued, u32, u64, FT_MAP_ENTRIES);   /* tid -> when it became runnable */
BPF_HASH(pending, u32, u64, FT_MAP_ENTRIES);    /* tid -> latency not charged yet */
BPF_PERCPU_HASH(runqlat, struct hist_key_t, u64, FT_MAP_ENTRIES);

static __always_inline void mark_enqueued(u32 tid)
{
    if (tid == 0)
        return;
    u64 now = bpf_ktime_get_ns();
    if (enqueued.update(&tid, &now) != 0)
        ft_count_drop();
}

TRACEPOINT_PROBE(sched, sched_wakeup)
{
    mark_enqueued(args->pid);
    return 0;
}

TRACEPOINT_PROBE(sched, sched_wakeup_new)
{
    mark_enqueued(args->pid);
    return 0;
}

TRACEPOINT_PROBE(sched, sched_switch)
{
    u32 prev = args->prev_pid;
    u32 next = args->next_pid;

    /* prev is still current here: charge its parked latency under its own identity. */
    if (prev != 0) {
        u64 *lat = pending.lookup(&prev);
        if (lat) {
            u64 delta = *lat;
            pending.delete(&prev);
            if (ft_in_scope()) {
                struct hist_key_t key = {};
#ifdef FT_PER_PID
                key.tgid = bpf_get_current_pid_tgid() >> 32;
                bpf_get_current_comm(&key.comm, sizeof(key.comm));
#endif
#ifdef FT_PER_CGROUP
                key.cgroup = bpf_get_current_cgroup_id();
#endif
                key.slot = bpf_log2l(delta / FT_UNIT_DIV);
                u64 zero = 0;
                ft_bump(runqlat.lookup_or_try_init(&key, &zero));
            }
        }
        /* Still runnable: it waits again from now. Otherwise drop a stale stamp left by a
         * wakeup that arrived while it was still on the CPU. */
        if ((args->prev_state & FT_TASK_REPORT_MASK) == 0)
            mark_enqueued(prev);
        else
            enqueued.delete(&prev);
    }

    if (next == 0)
        return 0;
    u64 *since = enqueued.lookup(&next);
    if (!since)
        return 0;
    u64 delta = bpf_ktime_get_ns() - *since;
    enqueued.delete(&next);
    if (pending.update(&next, &delta) != 0)
        ft_count_drop();
    return 0;
}
