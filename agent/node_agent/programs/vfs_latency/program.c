/* vfs_read / vfs_write latency per file system type, as log2 histograms and counts.
 *
 * The call is stamped at entry, where the caller is current (scope checked there), with its
 * file's file system name (file->f_inode->i_sb->s_type->name: needs exact headers, as every
 * fentry or kprobe reading kernel structs does); the latency is charged at return.
 * One attach option is compiled in, chosen by the agent:
 *   FT_ATTACH_FENTRY   fentry + fexit on vfs_read, vfs_write (BTF, 5.5+)
 *   FT_ATTACH_KPROBE   kprobes + kretprobes on the same functions
 */
#include <linux/fs.h>

#define FT_FS_LEN 16
#define FT_OP_READ 0
#define FT_OP_WRITE 1

struct start_t {
    u64 ts;
    char fs[FT_FS_LEN];
};

/* One entry per file system, op and log2 slot of microseconds. */
struct lat_key_t {
    char fs[FT_FS_LEN];
    u32 op;
    u32 slot;
};

BPF_HASH(start, u32, struct start_t, FT_MAP_ENTRIES);   /* tid -> its call in progress */
BPF_HASH(latency, struct lat_key_t, struct ft_latency_t, FT_MAP_ENTRIES);

static __always_inline void ft_vfs_enter(struct file *file)
{
    if (!ft_in_scope())
        return;
    struct start_t s = {};
    struct inode *inode = NULL;
    struct super_block *sb = NULL;
    struct file_system_type *type = NULL;
    const char *name = NULL;
    bpf_probe_read_kernel(&inode, sizeof(inode), &file->f_inode);
    if (inode)
        bpf_probe_read_kernel(&sb, sizeof(sb), &inode->i_sb);
    if (sb)
        bpf_probe_read_kernel(&type, sizeof(type), &sb->s_type);
    if (type)
        bpf_probe_read_kernel(&name, sizeof(name), &type->name);
    if (name)
        bpf_probe_read_kernel_str(&s.fs, sizeof(s.fs), name);
    s.ts = bpf_ktime_get_ns();
    u32 tid = bpf_get_current_pid_tgid();
    if (start.update(&tid, &s) != 0)
        ft_count_drop();
}

static __always_inline void ft_vfs_exit(u32 op)
{
    u32 tid = bpf_get_current_pid_tgid();
    struct start_t *s = start.lookup(&tid);
    if (!s)
        return;
    u64 us = (bpf_ktime_get_ns() - s->ts) / 1000;
    struct lat_key_t key = {};
    __builtin_memcpy(&key.fs, s->fs, sizeof(key.fs));
    key.op = op;
    key.slot = bpf_log2l(us);
    start.delete(&tid);
    struct ft_latency_t zero = {};
    ft_add_latency(latency.lookup_or_try_init(&key, &zero), us);
}

#ifdef FT_ATTACH_FENTRY
KFUNC_PROBE(vfs_read, struct file *file)
{
    ft_vfs_enter(file);
    return 0;
}

KRETFUNC_PROBE(vfs_read, struct file *file)
{
    ft_vfs_exit(FT_OP_READ);
    return 0;
}

KFUNC_PROBE(vfs_write, struct file *file)
{
    ft_vfs_enter(file);
    return 0;
}

KRETFUNC_PROBE(vfs_write, struct file *file)
{
    ft_vfs_exit(FT_OP_WRITE);
    return 0;
}
#endif

#ifdef FT_ATTACH_KPROBE
int kprobe__vfs_read(struct pt_regs *ctx, struct file *file)
{
    ft_vfs_enter(file);
    return 0;
}

int kretprobe__vfs_read(struct pt_regs *ctx)
{
    ft_vfs_exit(FT_OP_READ);
    return 0;
}

int kprobe__vfs_write(struct pt_regs *ctx, struct file *file)
{
    ft_vfs_enter(file);
    return 0;
}

int kretprobe__vfs_write(struct pt_regs *ctx)
{
    ft_vfs_exit(FT_OP_WRITE);
    return 0;
}
#endif
