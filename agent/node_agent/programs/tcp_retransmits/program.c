/* Who retransmits to whom: tcp:tcp_retransmit_skb counted by address pair and TCP state.
 * It fires from timers and softirqs, where the current task is not the socket's owner, so
 * no process scope is applied; FT_PORT (0 = any) filters on either port instead. */
#define FT_AF_INET 2

struct retrans_key_t {
    u8 saddr[16];
    u8 daddr[16];
    u16 family;
    u16 sport;
    u16 dport;
    u16 state;
};

BPF_PERCPU_HASH(retransmits, struct retrans_key_t, u64, FT_MAP_ENTRIES);

TRACEPOINT_PROBE(tcp, tcp_retransmit_skb)
{
    /* The tracepoint gives ports in host byte order. */
    u16 sport = args->sport;
    u16 dport = args->dport;
#if FT_PORT
    if (sport != FT_PORT && dport != FT_PORT)
        return 0;
#endif
    struct retrans_key_t key = {};
    key.family = args->family;
    key.sport = sport;
    key.dport = dport;
    key.state = args->state;
    if (key.family == FT_AF_INET) {
        bpf_probe_read_kernel(&key.saddr, 4, args->saddr);
        bpf_probe_read_kernel(&key.daddr, 4, args->daddr);
    } else {
        bpf_probe_read_kernel(&key.saddr, 16, args->saddr_v6);
        bpf_probe_read_kernel(&key.daddr, 16, args->daddr_v6);
    }
    u64 zero = 0;
    ft_bump(retransmits.lookup_or_try_init(&key, &zero));
    return 0;
}
