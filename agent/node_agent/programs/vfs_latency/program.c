/* vfs_read / vfs_write latency per file system type, as log2 histograms and counts.
 *
 * The call is stamped at entry, where the caller is current (scope checked there), with its
 * file's file system name (file->f_inode->i_sb->s_type->name); the latency is charged at
 * return. Each member is read at FT_OFF_*: the headers' offset, or, when the headers are
 * approximate (another kernel's), the running kernel's own from its BTF, which the agent
 * defines (node_agent.btf): another kernel's layout reads the wrong bytes.
 * One attach option is compiled in, chosen by the agent:
 *   FT_ATTACH_FENTRY   fentry + fexit on vfs_read, vfs_write (BTF, 5.5+)
 *   FT_ATTACH_KPROBE   kprobes + kretprobes on the same functions
 */
#if !defined(FT_ATTACH_FENTRY) && !defined(FT_ATTACH_KPROBE)
#error "vfs_latency needs one of FT_ATTACH_FENTRY, FT_ATTACH_KPROBE"
#endif
#include <linux/fs.h>

#ifndef FT_OFF_FILE_INODE
#define FT_OFF_FILE_INODE __builtin_offsetof(struct file, f_inode)
#endif
#ifndef FT_OFF_INODE_SB
#define FT_OFF_INODE_SB __builtin_offsetof(struct inode, i_sb)
#endif
#ifndef FT_OFF_SB_TYPE
#define FT_OFF_SB_TYPE __builtin_offsetof(struct super_block, s_type)
#endif
#ifndef FT_OFF_FSTYPE_NAME
#define FT_OFF_FSTYPE_NAME __builtin_offsetof(struct file_system_type, name)
#endif

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
    void *inode = NULL, *sb = NULL, *type = NULL;
    const char *name = NULL;
    bpf_probe_read_kernel(&inode, sizeof(inode), (void *)file + FT_OFF_FILE_INODE);
    if (inode)
        bpf_probe_read_kernel(&sb, sizeof(sb), inode + FT_OFF_INODE_SB);
    if (sb)
        bpf_probe_read_kernel(&type, sizeof(type), sb + FT_OFF_SB_TYPE);
    if (type)
        bpf_probe_read_kernel(&name, sizeof(name), type + FT_OFF_FSTYPE_NAME);
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
