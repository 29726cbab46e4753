"""Distro kernels for VM hosts: fetched with apt, cached extracted, booted with virtme-ng.

A kernel is the Debian packages of one ABI (image, headers for the flavour and their -common
half, the kbuild scripts the headers link to) extracted side by side under
`<cache>/<release>/`, as they would be installed on a host. The guest shares this machine's
root filesystem over 9p, so every path here is also the guest's path.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from controller.bootstrap.artifacts import source_root
from devstack.config import DevstackError

log = logging.getLogger(__name__)
KNOWN = ("6.1", "6.12")
FLAVOUR = "amd64"
CACHE_ENV = "FLEETTRACE_KERNEL_CACHE"
# `apt-get update` replaces files here: its mtime says when apt's answers may have changed.
APT_LISTS = Path("/var/lib/apt/lists")
HeadersMode = Literal["exact", "approximate", "none"]
HEADERS_MODES: tuple[HeadersMode, ...] = ("exact", "approximate", "none")
# Debian's ABIs: 6.1.0-57 (bookworm), 6.12.117+deb12 (bookworm-backports).
_ABI = r"(?:\.\d+)*(?:-\d+|\+deb\d+)"
DOWNLOAD_TIMEOUT_S = 900.0
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SYS_MODULE = Path("/sys/module")
HARDWARE_KVM = ("kvm_intel", "kvm_amd")  # the KVM backends a distro kernel boots on


@dataclass(frozen=True)
class Kernel:
    version: str  # "6.1"
    release: str  # "6.1.0-57-amd64", what `uname -r` says in the guest
    root: Path  # the extracted packages

    @property
    def vmlinuz(self) -> Path:
        return self.root / "boot" / f"vmlinuz-{self.release}"

    @property
    def modules(self) -> Path:
        return self.root / "lib" / "modules" / self.release

    @property
    def headers(self) -> Path:
        return self.root / "usr" / "src" / f"linux-headers-{self.release}"

    @property
    def common(self) -> Path:
        """The architecture-independent half of the headers (Debian's `source`)."""
        abi = self.release.removesuffix(f"-{FLAVOUR}")
        return self.root / "usr" / "src" / f"linux-headers-{abi}-common"

    def complete(self) -> bool:
        return self.vmlinuz.is_file() and self.modules.is_dir() and self.headers.is_dir()


def cache_dir() -> Path:
    """Where kernels are kept: $FLEETTRACE_KERNEL_CACHE, else the checkout's var/kernels."""
    configured = os.environ.get(CACHE_ENV)
    if configured:
        return Path(configured)
    root = source_root()
    if root is None:
        raise DevstackError(f"no checkout to cache kernels in: set {CACHE_ENV}=DIR")
    return root / "var" / "kernels"


def check_version(version: str) -> str:
    if version not in KNOWN:
        raise DevstackError(f"unknown kernel {version!r}: known kernels are {', '.join(KNOWN)}")
    return version


def _version_key(abi: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", abi))


def _apt(*cmd: str, timeout_s: float = 60.0, cwd: Path | None = None) -> str:
    try:
        done = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout_s, check=False, cwd=cwd
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DevstackError(f"{' '.join(cmd)}: {exc}") from None
    if done.returncode != 0:
        last = (done.stderr.strip() or f"exit status {done.returncode}").splitlines()[-1]
        raise DevstackError(f"{' '.join(cmd)}: {last}")
    return done.stdout


def _has_candidate(package: str) -> bool:
    return re.search(r"Candidate: [^(\s]", _apt("apt-cache", "policy", package)) is not None


def resolve(version: str) -> str:
    """The newest release of `version` whose image and headers apt can download."""
    check_version(version)
    pattern = re.compile(rf"^linux-image-({re.escape(version)}{_ABI})-{FLAVOUR}-unsigned$")
    wanted = f"linux-image-{version}.*-{FLAVOUR}-unsigned"
    try:
        names = _apt("apt-cache", "pkgnames", f"linux-image-{version}").split()
    except DevstackError as exc:
        raise DevstackError(f"cannot look up {wanted} ({exc}): run `apt-get update`") from None
    abis = sorted(
        (m.group(1) for m in map(pattern.match, names) if m), key=_version_key, reverse=True
    )
    for abi in abis:
        release = f"{abi}-{FLAVOUR}"
        if _has_candidate(f"linux-image-{release}-unsigned") and _has_candidate(
            f"linux-headers-{release}"
        ):
            return release
    raise DevstackError(
        f"no {wanted} with its headers in apt's package lists: run `apt-get update` "
        "(Debian 12; 6.12 comes from bookworm-backports), then retry"
    )


def packages(release: str) -> list[str]:
    """The image, the headers, and what the headers depend on from the kernel's source."""
    headers = f"linux-headers-{release}"
    show = _apt("apt-cache", "show", "--no-all-versions", headers)
    depends = re.search(r"^Depends: (.*)$", show, re.MULTILINE)
    needed = [f"linux-image-{release}-unsigned", headers]
    for clause in depends.group(1).split(",") if depends else []:
        name = clause.split("|")[0].split("(")[0].strip().split(":")[0]
        if name.startswith(("linux-headers-", "linux-kbuild-")):
            needed.append(name)
    return needed


def _cached(version: str, cache: Path) -> list[Kernel]:
    """The complete kernels of `version` in the cache, newest first."""
    pattern = re.compile(rf"^{re.escape(version)}{_ABI}-{FLAVOUR}$")
    found = (
        [
            Kernel(version, entry.name, entry)
            for entry in cache.iterdir()
            if pattern.match(entry.name) and entry.is_dir()
        ]
        if cache.is_dir()
        else []
    )
    kernels = [k for k in found if k.complete()]
    return sorted(kernels, key=lambda k: _version_key(k.release), reverse=True)


@contextlib.contextmanager
def _lock(cache: Path, version: str) -> Iterator[None]:
    cache.mkdir(parents=True, exist_ok=True)
    fd = os.open(cache / f".lock-{version}", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _remembered(version: str, cache: Path) -> str | None:
    """The release `resolve` last gave for `version`, while apt's lists have not changed
    since (each apt-cache call re-reads them all: ~1 s where apt keeps no pkgcache.bin)."""
    note = cache / f".resolved-{version}"
    try:
        if note.stat().st_mtime > APT_LISTS.stat().st_mtime:
            return note.read_text().strip() or None
    except OSError:
        pass
    return None


def _remember(version: str, cache: Path, release: str) -> None:
    note = cache / f".resolved-{version}"
    with contextlib.suppress(OSError):
        note.write_text(f"{release}\n")


def fetch(version: str, *, cache: Path | None = None) -> Kernel:
    """The newest `version` kernel, downloaded and extracted once; later calls reuse it.

    Under a per-version lock, extracted in a temporary directory renamed into place, so a
    concurrent caller waits and a killed one leaves nothing that counts as a kernel.
    """
    check_version(version)
    cache = cache if cache is not None else cache_dir()
    with _lock(cache, version):
        _remove_leftovers(cache, version)
        cached = _cached(version, cache)
        known = _remembered(version, cache)
        if known is not None and (kernel := Kernel(version, known, cache / known)).complete():
            return kernel
        try:
            release = resolve(version)
        except DevstackError:
            if cached:
                # apt's lists are gone or stale: what is cached is still a real kernel.
                log.warning(
                    "kernel %s: apt cannot resolve it, using cached %s", version, cached[0].release
                )
                return cached[0]
            raise
        kernel = Kernel(version, release, cache / release)
        _remember(version, cache, release)
        if kernel.complete():
            return kernel
        started = time.monotonic()
        _download_extract(kernel, packages(release), cache)
        log.info("kernel %s: fetched %s in %.0f s", version, release, time.monotonic() - started)
        return kernel


def _remove_leftovers(cache: Path, version: str) -> None:
    """What a killed fetch of this version left (only one fetch per version runs: the lock)."""
    for leftover in cache.glob(f".fetch-{version}-*"):
        shutil.rmtree(leftover, ignore_errors=True)


def _download_extract(kernel: Kernel, needed: Sequence[str], cache: Path) -> None:
    work = cache / f".fetch-{kernel.version}-{os.getpid()}"
    try:
        debs = work / "debs"
        root = work / "root"
        debs.mkdir(parents=True)
        # apt drops privileges to _apt for downloads; the directory must let it write.
        debs.chmod(0o777)
        try:
            _apt("apt-get", "download", "-q", *needed, cwd=debs, timeout_s=DOWNLOAD_TIMEOUT_S)
        except DevstackError as exc:
            raise DevstackError(
                f"cannot download kernel {kernel.release} ({exc}): check the network and apt's "
                "sources, run `apt-get update`, then retry"
            ) from None
        for deb in sorted(debs.glob("*.deb")):
            _apt("dpkg-deb", "-x", str(deb), str(root), timeout_s=300.0)
        staged = Kernel(kernel.version, kernel.release, root)
        if not staged.complete():
            raise DevstackError(f"kernel {kernel.release}: the packages lack vmlinuz or modules")
        # The image package leaves modules.dep to its postinst: the guest's modprobe needs it.
        _apt("depmod", "-b", str(root), kernel.release, timeout_s=300.0)
        # Links the packages ship to the installed headers; each VM links its own instead.
        for link in ("build", "source"):
            (staged.modules / link).unlink(missing_ok=True)
        root.rename(kernel.root)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def modules_tree(
    kernel: Kernel,
    dest: Path,
    *,
    headers: HeadersMode,
    approximate_from: Path | None = None,
) -> Path:
    """A VM's own /lib/modules, as `dest/lib/modules/<release>/` linking the cache's modules,
    with `build` and `source` as `headers` says (exact: this kernel's; approximate:
    `approximate_from`, another kernel's headers; none: neither). Returns `dest/lib/modules`.

    virtme finds a kernel's modules by walking up from its image to a `lib/modules`, then
    links the guest's /lib/modules/<release> there: so `dest` also gets `boot/vmlinuz-*`, a
    link to the cached image, which `vng_command` boots."""
    if headers not in HEADERS_MODES:
        raise DevstackError(f"headers mode {headers!r} is not one of {', '.join(HEADERS_MODES)}")
    if headers == "approximate" and approximate_from is None:
        raise DevstackError("approximate headers need a headers tree to link (approximate_from)")
    if not kernel.complete():
        raise DevstackError(f"kernel {kernel.release} is not (completely) in {kernel.root}")
    if dest.exists():
        shutil.rmtree(dest)
    tree = dest / "lib" / "modules" / kernel.release
    tree.mkdir(parents=True)
    (dest / "boot").mkdir()
    (dest / "boot" / kernel.vmlinuz.name).symlink_to(kernel.vmlinuz)
    for entry in kernel.modules.iterdir():
        if entry.name not in ("build", "source"):
            (tree / entry.name).symlink_to(entry)
    if headers == "exact":
        (tree / "build").symlink_to(kernel.headers)
        (tree / "source").symlink_to(kernel.common)
    elif headers == "approximate":
        assert approximate_from is not None
        (tree / "build").symlink_to(approximate_from)
        (tree / "source").symlink_to(common_of(approximate_from))
    return tree.parent


def boot_image(kernel: Kernel, modules: Path) -> Path:
    """The image link `modules_tree` made beside `modules`: booting it gives those modules."""
    image = modules.parent.parent / "boot" / kernel.vmlinuz.name
    if modules.name != "modules" or not image.is_symlink():
        raise DevstackError(f"{modules} is not a tree made by modules_tree for {kernel.release}")
    return image


def common_of(headers: Path) -> Path:
    """Debian's -common half of a flavoured headers tree, else the tree itself."""
    resolved = headers.resolve()
    name = resolved.name
    while "-" in name:
        name = name.rsplit("-", 1)[0]
        candidate = resolved.with_name(f"{name}-common")
        if candidate.is_dir():
            return candidate
    return resolved


@functools.lru_cache(maxsize=1)
def kvm_works() -> bool:
    """Whether QEMU can run a distro kernel under KVM here: /dev/kvm may open yet refuse to
    run a vCPU, or be PVM's (`kvm_pvm`, KVM on a nested host without VMX or SVM), which runs
    only kernels built as PVM guests: a distro kernel's boot hangs in its decompressor, its
    vCPU spinning in the host's kernel, while the firmware's part of it passes for working."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False
    if not any((SYS_MODULE / m).exists() for m in HARDWARE_KVM):
        loaded = sorted(p.name for p in SYS_MODULE.glob("kvm_*")) if SYS_MODULE.is_dir() else []
        log.info(
            "/dev/kvm is not hardware virtualization (%s loaded, not %s): emulating",
            ", ".join(loaded) or "no kvm_* module",
            " or ".join(HARDWARE_KVM),
        )
        return False
    # Without a bootable disk a working guest spins in its firmware; a broken KVM aborts at once.
    cmd = [
        "qemu-system-x86_64",
        "-accel",
        "kvm",
        "-cpu",
        "host",
        "-machine",
        "q35",
        "-nodefaults",
        "-display",
        "none",
        "-monitor",
        "none",
        "-serial",
        "none",
        "-no-user-config",
    ]
    try:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
    except OSError:
        return False
    try:
        proc.wait(timeout=2.0)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return True
    return False


def vng_path() -> Path:
    """The `vng` installed beside this Python (the checkout's venv)."""
    return Path(sys.executable).parent / "vng"


# What virtme's init mounts an empty tmpfs over in the guest (virtme/guest/virtme-init):
# a host path under one of them is not in the guest's view of this machine's root.
HIDDEN_IN_GUEST = (
    "/run",
    "/dev",
    "/var/log",
    "/var/tmp",
    "/var/cache",
    "/var/spool/rsyslog",
    "/var/lib/portables",
    "/var/lib/machines",
    "/var/lib/private",
    "/var/lib/apt",
    "/var/lib/snapd/cookie",
    "/var/lib/sudo",
)


def hidden_in_guest(path: Path) -> bool:
    """`path` (resolved) lies where a guest sees an empty tmpfs instead of this machine's."""
    resolved = path.resolve()
    return any(resolved.is_relative_to(hidden) for hidden in HIDDEN_IN_GUEST)


def shown_again(paths: Sequence[Path], rwdirs: Mapping[str, Path]) -> list[Path]:
    """Of the host directories a guest reads (`paths`), those a tmpfs of virtme's hides (a
    checkout or kernel cache under /var/tmp, say), each once and outermost first, unless an
    rwdir already gives the guest that path: each is exported again, read-only, where it is."""
    given = [Path(guest) for guest in rwdirs]
    out: list[Path] = []
    for path in sorted({p.resolve() for p in paths}, key=lambda p: len(p.parts)):
        if not hidden_in_guest(path) or any(path.is_relative_to(g) for g in given):
            continue
        if not any(path.is_relative_to(done) for done in out):
            out.append(path)
    return out


def _vng_path(path: str | Path) -> str:
    """`path` as vng passes it on (joined into a line it splits again, then GUEST=HOST)."""
    text = str(path)
    if not text.startswith("/") or any(c.isspace() or c in "='\"\\;&|<>$`" for c in text):
        raise DevstackError(
            f"a VM cannot be given {text!r}: vng needs an absolute path "
            "without spaces, quotes, '=' or shell characters"
        )
    return text


def vng_command(
    kernel: Kernel,
    *,
    modules: Path,
    name: str,
    exec_: str,
    memory_mb: int = 2048,
    cpus: int = 2,
    rwdirs: Mapping[str, Path] = {},
    overlays: Sequence[str] = (),
    qemu_opts: Sequence[str] = (),
    kvm: bool | None = None,
    pidfile: Path | None = None,
    console: bool = False,
) -> list[str]:
    """The whole argv that boots `kernel` as host `name` and runs `exec_` in it.

    `modules` is what `modules_tree` returned; `rwdirs` maps guest paths to host directories
    the guest may write; `overlays` are guest paths writable in the guest only; `pidfile`
    receives QEMU's pid (vng runs it two processes below this argv's). Each of `qemu_opts`
    is one QEMU argument without spaces (vng joins them into a shell line). With `console`,
    the guest kernel's console goes to vng's stderr (else nowhere: a panic says nothing).
    """
    use_kvm = kvm_works() if kvm is None else kvm
    bin_dir = vng_path().parent
    argv = [
        # vng finds virtme-run beside it and virtme needs depmod and busybox (sbin).
        *("env", f"PATH={bin_dir}:{SYSTEM_PATH}"),
        *(str(vng_path()), "--run", str(boot_image(kernel, modules)), "--force-9p"),
        *("--name", name, "--memory", f"{memory_mb}M", "--cpus", str(cpus)),
    ]
    if not use_kvm:
        argv.append("--disable-kvm")
    if console:
        argv.append("--verbose")
    for guest, host in rwdirs.items():
        argv.append(f"--rwdir={_vng_path(guest)}={_vng_path(host)}")
    # The guest runs this checkout's venv and reads the kernel's modules and headers.
    checkout = source_root()
    needed = [kernel.root, Path(sys.prefix), *([checkout] if checkout is not None else [])]
    argv.extend(f"--rodir={_vng_path(p)}={_vng_path(p)}" for p in shown_again(needed, rwdirs))
    argv.extend(f"--overlay-rwdir={path}" for path in overlays)
    if pidfile is not None:
        qemu_opts = ("-pidfile", str(pidfile), *qemu_opts)
    for opt in qemu_opts:
        if not opt or any(c.isspace() or c in "'\"\\;&|<>$`" for c in opt):
            raise DevstackError(f"QEMU option {opt!r} cannot pass through vng's shell line")
        argv.append(f"--qemu-opts={opt}")
    argv.extend(("--exec", exec_))
    return argv


def qemu_pid(pidfile: Path) -> int | None:
    """The live QEMU whose pid `pidfile` holds (QEMU removes it on a clean exit), else None."""
    try:
        pid = int(pidfile.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    # A pid reused by something else since is not ours to signal.
    return pid if b"qemu-system" in cmdline.split(b"\0", 1)[0] else None


def stop_qemu(pidfile: Path, *, grace_s: float = 10.0) -> bool:
    """SIGTERM the QEMU of `pidfile`, SIGKILL it after `grace_s`; True if one was running."""
    pid = qemu_pid(pidfile)
    if pid is None:
        pidfile.unlink(missing_ok=True)
        return False
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if not Path(f"/proc/{pid}").exists() or _zombie(pid):
                pidfile.unlink(missing_ok=True)
                return True
            time.sleep(0.1)
    raise DevstackError(f"QEMU {pid} ({pidfile}) survived SIGKILL")


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m devstack.kernels fetch 6.1 6.12`: what scripts/setup.sh runs for the tests."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m devstack.kernels", description=main.__doc__)
    parser.add_argument("action", choices=["fetch"])
    parser.add_argument("versions", nargs="+", metavar="VERSION", help=", ".join(KNOWN))
    parser.add_argument("-v", "--verbose", action="store_true", help="say what is fetched")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s"
    )
    try:
        for version in args.versions:
            kernel = fetch(version)
            log.info("kernel %s: %s in %s", version, kernel.release, kernel.root)
    except DevstackError as exc:
        sys.stderr.write(f"devstack.kernels: error: {exc}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
