/* Which files are opened: the path is read from user memory at openat/openat2 entry (stashed
 * per thread), and counted at exit, where the result splits successes from errors. */
#ifndef FT_PATH_LEN
#define FT_PATH_LEN 256
#endif

struct open_key_t {
    u32 tgid;
    char comm[FT_COMM_LEN];
    char path[FT_PATH_LEN];
};

struct open_val_t {
    u64 count;
    u64 errors;
};

BPF_HASH(open_pending, u32, struct open_key_t, FT_MAP_ENTRIES);
/* The key is too big for the 512-byte stack: build it in per-CPU scratch. */
BPF_PERCPU_ARRAY(open_scratch, struct open_key_t, 1);
/* Shared (not per-CPU) so both values stay exact; updated atomically. */
BPF_HASH(opens, struct open_key_t, struct open_val_t, FT_MAP_ENTRIES);

static __always_inline int open_enter(const char *filename)
{
    if (!ft_in_scope())
        return 0;
    int zero = 0;
    struct open_key_t *key = open_scratch.lookup(&zero);
    if (!key)
        return 0;
    /* Scratch keeps the previous path: clear it so string tails do not leak into keys. */
    __builtin_memset(key, 0, sizeof(*key));
#if FT_PER_PROCESS
    key->tgid = bpf_get_current_pid_tgid() >> 32;
    bpf_get_current_comm(&key->comm, sizeof(key->comm));
#endif
    bpf_probe_read_user_str(&key->path, sizeof(key->path), filename);
    u32 tid = bpf_get_current_pid_tgid();
    if (open_pending.update(&tid, key) != 0)
        ft_count_drop();
    return 0;
}

static __always_inline int open_exit(long ret)
{
    u32 tid = bpf_get_current_pid_tgid();
    struct open_key_t *key = open_pending.lookup(&tid);
    if (!key)
        return 0;
#if FT_FAILED_ONLY
    if (ret >= 0) {
        open_pending.delete(&tid);
        return 0;
    }
#endif
    struct open_val_t zero = {};
    struct open_val_t *val = opens.lookup_or_try_init(key, &zero);
    if (val) {
        __sync_fetch_and_add(&val->count, 1);
        if (ret < 0)
            __sync_fetch_and_add(&val->errors, 1);
    } else {
        ft_count_drop();
    }
    open_pending.delete(&tid);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_openat)
{
    return open_enter(args->filename);
}

TRACEPOINT_PROBE(syscalls, sys_exit_openat)
{
    return open_exit(args->ret);
}

TRACEPOINT_PROBE(syscalls, sys_enter_openat2)
{
    return open_enter(args->filename);
}

TRACEPOINT_PROBE(syscalls, sys_exit_openat2)
{
    return open_exit(args->ret);
}
