/* fleettrace prelude: prepended to every program, catalog or custom.
 *
 * Scope (set by the agent with -D, all optional, all checked in the kernel):
 *   FT_SCOPE_PID           tgid of the one process to trace
 *   FT_SCOPE_CGROUP_ID     cgroup v2 id; FT_SCOPE_CGROUP_LEVEL its depth below the root
 *   FT_SCOPE_COMM          {bytes..., 0} of the process name
 * Limits:
 *   FT_MAP_ENTRIES         entries of every hash map a program declares
 */
#include <uapi/linux/ptrace.h>

#ifndef FT_MAP_ENTRIES
#define FT_MAP_ENTRIES 10240
#endif
#define FT_COMM_LEN 16

/* Inserts that failed because a map was full: reported as map_full_drops. */
BPF_PERCPU_ARRAY(ft_drops, u64, 1);
/* Events a perf output could not take: reported as events_lost. */
BPF_PERCPU_ARRAY(ft_lost, u64, 1);

static __always_inline void ft_count_drop(void)
{
    int zero = 0;
    u64 *d = ft_drops.lookup(&zero);
    if (d)
        (*d)++;
}

/* Adds one to a counter a map gave (lookup_or_try_init), or counts the drop when the map
 * was full. The map call stays at the call site: bcc rewrites map methods only in the
 * program's own text, never inside a macro. */
static __always_inline void ft_bump(u64 *count)
{
    if (count)
        (*count)++;
    else
        ft_count_drop();
}

/* A latency map's value: calls and their summed microseconds (the mean is the quotient). */
struct ft_latency_t {
    u64 count;
    u64 total_us;
};

/* Adds one call of `us` microseconds to a value a map gave, or counts the drop. */
static __always_inline void ft_add_latency(struct ft_latency_t *val, u64 us)
{
    if (val) {
        __sync_fetch_and_add(&val->count, 1);
        __sync_fetch_and_add(&val->total_us, us);
    } else {
        ft_count_drop();
    }
}

static __always_inline int ft_in_scope(void)
{
#ifdef FT_SCOPE_PID
    if ((bpf_get_current_pid_tgid() >> 32) != FT_SCOPE_PID)
        return 0;
#endif
#ifdef FT_SCOPE_CGROUP_ID
    if (bpf_get_current_ancestor_cgroup_id(FT_SCOPE_CGROUP_LEVEL) != FT_SCOPE_CGROUP_ID)
        return 0;
#endif
#ifdef FT_SCOPE_COMM
    {
        char want[FT_COMM_LEN] = FT_SCOPE_COMM;
        char comm[FT_COMM_LEN] = {};
        bpf_get_current_comm(&comm, sizeof(comm));
#pragma unroll
        for (int i = 0; i < FT_COMM_LEN; i++) {
            if (comm[i] != want[i])
                return 0;
            if (want[i] == 0)
                break;
        }
    }
#endif
    return 1;
}
