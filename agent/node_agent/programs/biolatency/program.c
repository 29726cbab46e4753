/* Block I/O latency: from a request's issue to the driver until its completion.
 *
 * A request is known by (disk, sector) on both tracepoints; the scope is checked at issue,
 * where current is usually, but not always, the task that submitted the I/O.
 *
 * -D FT_UNIT_DIV      nanoseconds per reported unit (1000 usec, 1000000 msec)
 * -D FT_PER_DISK      one histogram per disk (kernel dev_t: major << 20 | minor)
 */
#ifndef FT_UNIT_DIV
#define FT_UNIT_DIV 1000
#endif

struct start_key_t {
    u64 sector;
    u32 dev;
    u32 pad;
};

struct hist_key_t {
    u32 dev;
    u32 slot;
};

BPF_HASH(start, struct start_key_t, u64, FT_MAP_ENTRIES);
BPF_PERCPU_HASH(biolatency, struct hist_key_t, u64, FT_MAP_ENTRIES);

TRACEPOINT_PROBE(block, block_rq_issue)
{
    if (!ft_in_scope())
        return 0;
    struct start_key_t key = {};
    key.dev = args->dev;
    key.sector = args->sector;
    u64 now = bpf_ktime_get_ns();
    if (start.update(&key, &now) != 0)
        ft_count_drop();
    return 0;
}

TRACEPOINT_PROBE(block, block_rq_complete)
{
    struct start_key_t key = {};
    key.dev = args->dev;
    key.sector = args->sector;
    u64 *since = start.lookup(&key);
    if (!since)
        return 0;
    u64 delta = bpf_ktime_get_ns() - *since;
    start.delete(&key);
    struct hist_key_t hkey = {};
#ifdef FT_PER_DISK
    hkey.dev = args->dev;
#endif
    hkey.slot = bpf_log2l(delta / FT_UNIT_DIV);
    u64 zero = 0;
    ft_bump(biolatency.lookup_or_try_init(&hkey, &zero));
    return 0;
}
