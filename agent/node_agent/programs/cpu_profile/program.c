/* Sample stacks on a CPU-clock perf event and count them by process and stack ids.
 *
 * The context is taken as `void *`: it is a struct bpf_perf_event_data whose first member
 * is the sampled registers, and bpf_get_stackid reads them from the context itself. Its
 * header pulls in the kernel's asm/ptrace.h, which made this compile 4x as long as any
 * other tracepoint program's (and minutes under emulation) for one pointer's type. */

struct key_t {
    u32 tgid;
    int user_stack_id;
    int kernel_stack_id;
    char comm[FT_COMM_LEN];
};

BPF_HASH(counts, struct key_t, u64, FT_MAP_ENTRIES);
BPF_STACK_TRACE(stack_traces, FT_STACK_ENTRIES);

int on_sample(void *ctx)
{
    u64 id = bpf_get_current_pid_tgid();
#if !FT_IDLE
    /* The idle task is thread 0 on every CPU. */
    if ((u32)id == 0)
        return 0;
#endif
    if (!ft_in_scope())
        return 0;
    struct key_t key = {};
    key.tgid = id >> 32;
    bpf_get_current_comm(&key.comm, sizeof(key.comm));
    /* -1 stands for "not collected"; real errors from get_stackid are other negatives. */
#if FT_USER
    key.user_stack_id = stack_traces.get_stackid(ctx, BPF_F_USER_STACK);
#else
    key.user_stack_id = -1;
#endif
#if FT_KERNEL
    key.kernel_stack_id = stack_traces.get_stackid(ctx, 0);
#else
    key.kernel_stack_id = -1;
#endif
    u64 zero = 0;
    ft_bump(counts.lookup_or_try_init(&key, &zero));
    return 0;
}
