/* TCP connect latency per destination and process: from SYN sent to ESTABLISHED.
 *
 * The start is stamped where the connecting process is current (its scope and name are
 * taken there); the SYN-ACK arrives in softirq context, so the end uses what was stamped.
 * One attach option is compiled in, chosen by the agent:
 *   FT_ATTACH_TRACEPOINT  sock:inet_sock_set_state (SYN_SENT -> ESTABLISHED), 4.16+
 *   FT_ATTACH_FENTRY      fentry on tcp_v4_connect/tcp_v6_connect + tcp_rcv_state_process
 *   FT_ATTACH_KPROBE      kprobes on the same functions (bcc's tcpconnlat)
 */
#define FT_AF_INET 2
#define FT_IPPROTO_TCP 6
#define FT_TCP_ESTABLISHED 1
#define FT_TCP_SYN_SENT 2

#if defined(FT_ATTACH_FENTRY) || defined(FT_ATTACH_KPROBE)
/* net/sock.h pulls in the kernel's own linux/bpf.h, which from 6.10 takes the size of uapi
 * types (bpf_wq, bpf_rb_root, bpf_rb_node, bpf_refcount) that the uapi bpf.h bundled in
 * older bcc (Debian 12's 0.26) lacks: "sizeof to an incomplete type" against 6.12 headers.
 * They are given here under names of their own, so that a bcc whose uapi has them does not
 * see them twice; struct sock, all this program reads, holds none of them. */
#define bpf_wq ft_compat_bpf_wq
#define bpf_rb_root ft_compat_bpf_rb_root
#define bpf_rb_node ft_compat_bpf_rb_node
#define bpf_refcount ft_compat_bpf_refcount
struct ft_compat_bpf_wq { __u64 __opaque[2]; } __attribute__((aligned(8)));
struct ft_compat_bpf_rb_root { __u64 __opaque[2]; } __attribute__((aligned(8)));
struct ft_compat_bpf_rb_node { __u64 __opaque[4]; } __attribute__((aligned(8)));
struct ft_compat_bpf_refcount { __u32 __opaque[1]; } __attribute__((aligned(4)));
#include <net/sock.h>
#undef bpf_wq
#undef bpf_rb_root
#undef bpf_rb_node
#undef bpf_refcount
#elif !defined(FT_ATTACH_TRACEPOINT)
#error "tcpconnlat needs one of FT_ATTACH_TRACEPOINT, FT_ATTACH_FENTRY, FT_ATTACH_KPROBE"
#endif

struct start_t {
    u64 ts;
    u32 tgid;
    char comm[FT_COMM_LEN];
};

/* One entry per destination, process and log2 slot of microseconds. */
struct lat_key_t {
    u8 daddr[16];
    u16 family;
    u16 dport;
    u32 tgid;
    u32 slot;
    char comm[FT_COMM_LEN];
};

BPF_HASH(start, u64, struct start_t, FT_MAP_ENTRIES);     /* socket -> when SYN was sent */
BPF_HASH(latency, struct lat_key_t, struct ft_latency_t, FT_MAP_ENTRIES);

static __always_inline void ft_connect_start(u64 sk)
{
    if (!ft_in_scope())
        return;
    struct start_t s = {};
    s.ts = bpf_ktime_get_ns();
    s.tgid = bpf_get_current_pid_tgid() >> 32;
    bpf_get_current_comm(&s.comm, sizeof(s.comm));
    if (start.update(&sk, &s) != 0)
        ft_count_drop();
}

/* daddr: 4 (AF_INET) or 16 bytes; dport in host order. */
static __always_inline void ft_connected(u64 sk, u16 family, const void *daddr, u16 dport)
{
    struct start_t *s = start.lookup(&sk);
    if (!s)
        return;
    u64 us = (bpf_ktime_get_ns() - s->ts) / 1000;
    struct lat_key_t key = {};
    key.family = family;
    key.dport = dport;
    key.tgid = s->tgid;
    key.slot = bpf_log2l(us);
    __builtin_memcpy(&key.comm, s->comm, sizeof(key.comm));
    start.delete(&sk);
    bpf_probe_read_kernel(&key.daddr, family == FT_AF_INET ? 4 : 16, daddr);
    struct ft_latency_t zero = {};
    ft_add_latency(latency.lookup_or_try_init(&key, &zero), us);
}

#ifdef FT_ATTACH_TRACEPOINT
TRACEPOINT_PROBE(sock, inet_sock_set_state)
{
    if (args->protocol != FT_IPPROTO_TCP)
        return 0;
    u64 sk = (u64)args->skaddr;
    if (args->newstate == FT_TCP_SYN_SENT) {
        ft_connect_start(sk);
        return 0;
    }
    if (args->oldstate != FT_TCP_SYN_SENT)
        return 0;
    if (args->newstate != FT_TCP_ESTABLISHED) {  /* refused or timed out: no latency */
        start.delete(&sk);
        return 0;
    }
    /* The tracepoint gives ports in host byte order. */
    if (args->family == FT_AF_INET)
        ft_connected(sk, args->family, args->daddr, args->dport);
    else
        ft_connected(sk, args->family, args->daddr_v6, args->dport);
    return 0;
}
#endif

#if defined(FT_ATTACH_FENTRY) || defined(FT_ATTACH_KPROBE)
/* Where struct sock keeps what ft_syn_ack reads: the headers' offsets, or, with approximate
 * headers (another kernel's), the running kernel's own from its BTF, defined by the agent. */
#ifndef FT_OFF_SK_STATE
#define FT_OFF_SK_STATE __builtin_offsetof(struct sock, __sk_common.skc_state)
#endif
#ifndef FT_OFF_SK_FAMILY
#define FT_OFF_SK_FAMILY __builtin_offsetof(struct sock, __sk_common.skc_family)
#endif
#ifndef FT_OFF_SK_DPORT
#define FT_OFF_SK_DPORT __builtin_offsetof(struct sock, __sk_common.skc_dport)
#endif
#ifndef FT_OFF_SK_DADDR
#define FT_OFF_SK_DADDR __builtin_offsetof(struct sock, __sk_common.skc_daddr)
#endif
#ifndef FT_OFF_SK_V6_DADDR
#define FT_OFF_SK_V6_DADDR __builtin_offsetof(struct sock, __sk_common.skc_v6_daddr)
#endif

/* The SYN-ACK of a socket in SYN_SENT. */
static __always_inline void ft_syn_ack(struct sock *sk)
{
    void *at = (void *)sk;
    u8 state = 0;
    bpf_probe_read_kernel(&state, sizeof(state), at + FT_OFF_SK_STATE);
    if (state != FT_TCP_SYN_SENT)
        return;
    u16 family = 0, dport = 0;
    bpf_probe_read_kernel(&family, sizeof(family), at + FT_OFF_SK_FAMILY);
    bpf_probe_read_kernel(&dport, sizeof(dport), at + FT_OFF_SK_DPORT);
    if (family == FT_AF_INET)
        ft_connected((u64)sk, family, at + FT_OFF_SK_DADDR, bpf_ntohs(dport));
    else
        ft_connected((u64)sk, family, at + FT_OFF_SK_V6_DADDR, bpf_ntohs(dport));
}
#endif

#ifdef FT_ATTACH_FENTRY
KFUNC_PROBE(tcp_v4_connect, struct sock *sk)
{
    ft_connect_start((u64)sk);
    return 0;
}

KFUNC_PROBE(tcp_v6_connect, struct sock *sk)
{
    ft_connect_start((u64)sk);
    return 0;
}

KFUNC_PROBE(tcp_rcv_state_process, struct sock *sk)
{
    ft_syn_ack(sk);
    return 0;
}
#endif

#ifdef FT_ATTACH_KPROBE
int kprobe__tcp_v4_connect(struct pt_regs *ctx, struct sock *sk)
{
    ft_connect_start((u64)sk);
    return 0;
}

int kprobe__tcp_v6_connect(struct pt_regs *ctx, struct sock *sk)
{
    ft_connect_start((u64)sk);
    return 0;
}

int kprobe__tcp_rcv_state_process(struct pt_regs *ctx, struct sock *sk)
{
    ft_syn_ack(sk);
    return 0;
}
#endif
