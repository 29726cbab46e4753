/* Syscall latency per syscall number, from raw_syscalls:sys_enter to sys_exit of one thread.
 *
 * -D FT_UNIT_DIV      nanoseconds per reported unit (1 nsec, 1000 usec)
 * -D FT_SYSCALL_NR    only this syscall number (optional)
 * -D FT_NR_EXIT, FT_NR_EXIT_GROUP   syscalls that never return: not timed, so no stale starts
 */
#ifndef FT_UNIT_DIV
#define FT_UNIT_DIV 1000
#endif

struct start_t {
    u64 ts;
    u32 nr;
};

struct hist_key_t {
    u32 nr;
    u32 slot;
};

BPF_HASH(start, u32, struct start_t, FT_MAP_ENTRIES);
BPF_PERCPU_HASH(latency, struct hist_key_t, u64, FT_MAP_ENTRIES);

TRACEPOINT_PROBE(raw_syscalls, sys_enter)
{
    long nr = args->id;
#ifdef FT_SYSCALL_NR
    if (nr != FT_SYSCALL_NR)
        return 0;
#endif
#ifdef FT_NR_EXIT
    if (nr == FT_NR_EXIT)
        return 0;
#endif
#ifdef FT_NR_EXIT_GROUP
    if (nr == FT_NR_EXIT_GROUP)
        return 0;
#endif
    if (nr < 0 || !ft_in_scope())
        return 0;
    u32 tid = bpf_get_current_pid_tgid();
    struct start_t s = {};
    s.ts = bpf_ktime_get_ns();
    s.nr = nr;
    if (start.update(&tid, &s) != 0)
        ft_count_drop();
    return 0;
}

TRACEPOINT_PROBE(raw_syscalls, sys_exit)
{
    u32 tid = bpf_get_current_pid_tgid();
    struct start_t *s = start.lookup(&tid);
    if (!s)
        return 0;
    struct hist_key_t key = {};
    key.nr = s->nr;
    key.slot = bpf_log2l((bpf_ktime_get_ns() - s->ts) / FT_UNIT_DIV);
    start.delete(&tid);
    u64 zero = 0;
    ft_bump(latency.lookup_or_try_init(&key, &zero));
    return 0;
}
