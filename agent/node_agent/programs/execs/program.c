/* Which programs start: successful execs on sched:sched_process_exec (after the new image is
 * in place, so comm is the new name), and optionally failed execve/execveat calls. */
#ifndef FT_PATH_LEN
#define FT_PATH_LEN 256
#endif

struct exec_key_t {
    char comm[FT_COMM_LEN];
    char filename[FT_PATH_LEN];
};

struct exec_event_t {
    u64 ts_ns;
    u32 pid;
    u32 uid;
    char comm[FT_COMM_LEN];
    char filename[FT_PATH_LEN];
};

BPF_PERCPU_HASH(execs, struct exec_key_t, u64, FT_MAP_ENTRIES);
/* Keys and events are too big for the 512-byte stack: build them in per-CPU scratch. */
BPF_PERCPU_ARRAY(exec_scratch, struct exec_event_t, 1);
BPF_PERF_OUTPUT(exec_events);

TRACEPOINT_PROBE(sched, sched_process_exec)
{
    if (!ft_in_scope())
        return 0;
    int zero = 0;
    struct exec_event_t *ev = exec_scratch.lookup(&zero);
    if (!ev)
        return 0;
    /* Scratch keeps the previous event: clear it so string tails do not leak into keys. */
    __builtin_memset(ev, 0, sizeof(*ev));
    ev->ts_ns = bpf_ktime_get_ns();
    ev->pid = bpf_get_current_pid_tgid() >> 32;
    ev->uid = (u32)bpf_get_current_uid_gid();
    bpf_get_current_comm(&ev->comm, sizeof(ev->comm));
    TP_DATA_LOC_READ_STR(ev->filename, filename, sizeof(ev->filename));
    /* comm and filename are laid out in the event exactly as in exec_key_t. */
    struct exec_key_t *key = (struct exec_key_t *)&ev->comm;
    u64 zero64 = 0;
    ft_bump(execs.lookup_or_try_init(key, &zero64));
#if FT_SAMPLES
    exec_events.perf_submit(args, ev, sizeof(*ev));
#endif
    return 0;
}

#if FT_FAILURES
struct fail_key_t {
    s32 err;
    char comm[FT_COMM_LEN];
    char filename[FT_PATH_LEN];
};

BPF_HASH(exec_pending, u32, struct fail_key_t, FT_MAP_ENTRIES);
BPF_PERCPU_HASH(exec_failures, struct fail_key_t, u64, FT_MAP_ENTRIES);
BPF_PERCPU_ARRAY(fail_scratch, struct fail_key_t, 1);

static __always_inline int exec_enter(const char *filename)
{
    if (!ft_in_scope())
        return 0;
    int zero = 0;
    struct fail_key_t *key = fail_scratch.lookup(&zero);
    if (!key)
        return 0;
    __builtin_memset(key, 0, sizeof(*key));
    bpf_get_current_comm(&key->comm, sizeof(key->comm));
    bpf_probe_read_user_str(&key->filename, sizeof(key->filename), filename);
    u32 tid = bpf_get_current_pid_tgid();
    if (exec_pending.update(&tid, key) != 0)
        ft_count_drop();
    return 0;
}

static __always_inline int exec_exit(long ret)
{
    u32 tid = bpf_get_current_pid_tgid();
    struct fail_key_t *key = exec_pending.lookup(&tid);
    if (!key)
        return 0;
    if (ret < 0) {
        key->err = -ret;
        u64 zero64 = 0;
        ft_bump(exec_failures.lookup_or_try_init(key, &zero64));
    }
    exec_pending.delete(&tid);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_execve)
{
    return exec_enter(args->filename);
}

TRACEPOINT_PROBE(syscalls, sys_exit_execve)
{
    return exec_exit(args->ret);
}

TRACEPOINT_PROBE(syscalls, sys_enter_execveat)
{
    return exec_enter(args->filename);
}

TRACEPOINT_PROBE(syscalls, sys_exit_execveat)
{
    return exec_exit(args->ret);
}
#endif
