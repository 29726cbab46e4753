"""A kheaders module for a Debian kernel built without CONFIG_IKHEADERS, for the VM tests.

The archive is made as the kernel's kernel/gen_kheaders.sh makes it (every *.h under include/
and arch/<arch>/include/ of the source tree, then of the object tree over it; comments other
than SPDX lines removed; sorted, owner 0, xz), from the distro's exact headers of that kernel.
The module is the kernel's own kernel/kheaders.c built out of tree with the kernel's compiler:
it publishes the archive as /sys/kernel/kheaders.tar.xz (a 0444 bin attribute on kernel_kobj).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tarfile
from pathlib import Path

from devstack import kernels

_DEPMOD_INPUTS = {"modules.order", "modules.builtin", "modules.builtin.modinfo"}
COMPILER = "gcc-12"  # Debian 12 built its 6.1 kernels with it (the module's vermagic checks)
_COMMENT = re.compile(rb"/\*(?:(?!SPDX).)*?\*/", re.DOTALL)
_SOURCE = r"""// SPDX-License-Identifier: GPL-2.0
/* kernel/kheaders.c, out of tree: the archive is linked into the module's .rodata. */
#include <linux/kernel.h>
#include <linux/module.h>
#include <linux/kobject.h>
#include <linux/init.h>

asm (
"    .pushsection .rodata, \"a\"        \n"
"    .global kernel_headers_data        \n"
"kernel_headers_data:                \n"
"    .incbin \"ARCHIVE\"            \n"
"    .global kernel_headers_data_end        \n"
"kernel_headers_data_end:            \n"
"    .popsection                \n"
);

extern char kernel_headers_data[];
extern char kernel_headers_data_end[];

static ssize_t ikheaders_read(struct file *file, struct kobject *kobj,
                  struct bin_attribute *bin_attr,
                  char *buf, loff_t off, size_t len)
{
    memcpy(buf, &kernel_headers_data[off], len);
    return len;
}

static struct bin_attribute kheaders_attr __ro_after_init = {
    .attr = { .name = "kheaders.tar.xz", .mode = 0444 },
    .read = &ikheaders_read,
};

static int __init ikheaders_init(void)
{
    kheaders_attr.size = (kernel_headers_data_end - kernel_headers_data);
    return sysfs_create_bin_file(kernel_kobj, &kheaders_attr);
}

static void __exit ikheaders_cleanup(void)
{
    sysfs_remove_bin_file(kernel_kobj, &kheaders_attr);
}

module_init(ikheaders_init);
module_exit(ikheaders_cleanup);
MODULE_LICENSE("GPL v2");
MODULE_DESCRIPTION("Echo the kernel header artifacts used to build the kernel");
"""


def missing_tools(kernel: kernels.Kernel) -> str | None:
    """Why the module cannot be built here, if it cannot."""
    if shutil.which(COMPILER) is None:
        return f"needs {COMPILER}, the compiler of Debian's 6.1 kernels (apt-get install gcc-12)"
    if not (kernel.headers / "scripts" / "Makefile.modpost").exists():
        return f"{kernel.headers}/scripts does not resolve (linux-kbuild is missing from the cache)"
    return None


def make_archive(kernel: kernels.Kernel, out: Path) -> Path:
    """kheaders_data.tar.xz of `kernel`, as gen_kheaders.sh makes it."""
    staging = out.parent / "kheaders.tmp"
    if staging.exists():
        shutil.rmtree(staging)
    for tree in (kernel.common, kernel.headers):  # the source tree, then the object tree
        for top in ("include", "arch/x86/include"):
            for header in sorted((tree / top).rglob("*.h")):
                if not header.is_file():
                    continue
                copy = staging / header.relative_to(tree)
                copy.parent.mkdir(parents=True, exist_ok=True)
                copy.write_bytes(_COMMENT.sub(b"", header.read_bytes()))

    def normalized(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        info.mode = 0o755 if info.isdir() else 0o644
        return info

    with tarfile.open(out, "w:xz") as tar:
        for path in [staging, *sorted(staging.rglob("*"))]:
            name = "." if path == staging else f"./{path.relative_to(staging)}"
            tar.add(path, arcname=name, recursive=False, filter=normalized)
    shutil.rmtree(staging)
    return out


def build_module(kernel: kernels.Kernel, workdir: Path) -> Path:
    """kheaders.ko for `kernel`, holding `make_archive`'s archive."""
    workdir.mkdir(parents=True, exist_ok=True)
    archive = make_archive(kernel, workdir / "kheaders_data.tar.xz")
    (workdir / "kheaders.c").write_text(_SOURCE.replace("ARCHIVE", str(archive)))
    (workdir / "Makefile").write_text("obj-m := kheaders.o\n")
    done = subprocess.run(
        ["make", "-C", str(kernel.headers), f"M={workdir}", f"CC={COMPILER}", "modules"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    module = workdir / "kheaders.ko"
    if done.returncode != 0 or not module.is_file():
        raise RuntimeError(
            f"building kheaders.ko failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}"
        )
    return module


def install(module: Path, modules: Path, release: str) -> Path:
    """Put `module` into a VM's modules tree (from kernels.modules_tree) as extra/kheaders.ko,
    and index the tree again (depmod) so that the guest's modprobe finds it. The indexes the
    tree links from the cache are replaced, never written through."""
    tree = modules / release
    (tree / "extra").mkdir(exist_ok=True)
    installed = tree / "extra" / "kheaders.ko"
    shutil.copy(module, installed)
    for index in tree.glob("modules.*"):
        if index.name not in _DEPMOD_INPUTS:
            index.unlink()
    depmod = shutil.which("depmod", path="/usr/sbin:/sbin:/usr/bin:/bin") or "depmod"
    subprocess.run([depmod, "-b", str(modules.parent.parent), release], check=True, timeout=300)
    return installed
