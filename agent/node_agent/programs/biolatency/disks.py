"""Name block devices from the dev_t that block tracepoints report."""

from __future__ import annotations

from pathlib import Path

SYS_DEV_BLOCK = Path("/sys/dev/block")
MINOR_BITS = 20  # the kernel's internal dev_t: major << 20 | minor


def split_dev(dev: int) -> tuple[int, int]:
    """(major, minor) of a kernel-internal dev_t (not the userspace encoding of stat)."""
    return dev >> MINOR_BITS, dev & ((1 << MINOR_BITS) - 1)


def disk_name(dev: int, sys_dev_block: Path = SYS_DEV_BLOCK) -> str:
    """DEVNAME from /sys/dev/block/MAJ:MIN/uevent, or "MAJ:MIN" when the device is gone."""
    major, minor = split_dev(dev)
    try:
        uevent = (sys_dev_block / f"{major}:{minor}" / "uevent").read_text()
    except OSError:
        return f"{major}:{minor}"
    for line in uevent.splitlines():
        key, _, value = line.partition("=")
        if key == "DEVNAME" and value:
            return value
    return f"{major}:{minor}"
