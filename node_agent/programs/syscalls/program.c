/* Count syscalls by process and syscall number on raw_syscalls:sys_enter. */
struct key_t {
    u32 tgid;
    u32 nr;
    char comm[FT_COMM_LEN];
};

BPF_PERCPU_HASH(counts, struct key_t, u64, FT_MAP_ENTRIES);

TRACEPOINT_PROBE(raw_syscalls, sys_enter)
{
    if (!ft_in_scope())
        return 0;
    struct key_t key = {};
#if FT_PER_PROCESS
    key.tgid = bpf_get_current_pid_tgid() >> 32;
    bpf_get_current_comm(&key.comm, sizeof(key.comm));
#endif
    key.nr = args->id;
    u64 zero = 0;
    u64 *count = counts.lookup_or_try_init(&key, &zero);
    if (count)
        (*count)++;
    else
        ft_count_drop();
    return 0;
}
