"""devstack.kernels without booting: versions, the per-VM modules tree, vng's argv, the cache."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

from devstack import kernels
from devstack.config import DevstackError

RELEASE = "6.1.0-99-amd64"


def _extracted(root: Path, release: str = RELEASE) -> kernels.Kernel:
    """A cache entry laid out as the Debian packages extract (files empty)."""
    kernel = kernels.Kernel("6.1", release, root / release)
    kernel.vmlinuz.parent.mkdir(parents=True)
    kernel.vmlinuz.write_bytes(b"")
    (kernel.modules / "kernel").mkdir(parents=True)
    (kernel.modules / "modules.dep").write_text("")
    kernel.headers.mkdir(parents=True)
    kernel.common.mkdir(parents=True)
    return kernel


def test_kernel_paths_follow_debians_layout(tmp_path: Path) -> None:
    kernel = kernels.Kernel("6.12", "6.12.117+deb12-amd64", tmp_path)
    assert kernel.vmlinuz == tmp_path / "boot/vmlinuz-6.12.117+deb12-amd64"
    assert kernel.modules == tmp_path / "lib/modules/6.12.117+deb12-amd64"
    assert kernel.headers == tmp_path / "usr/src/linux-headers-6.12.117+deb12-amd64"
    assert kernel.common == tmp_path / "usr/src/linux-headers-6.12.117+deb12-common"


@pytest.mark.parametrize("version", ["5.10", "6", "6.1.0", "", "6.1; rm -rf /"])
def test_an_unknown_version_is_one_line_naming_the_known_ones(version: str) -> None:
    with pytest.raises(DevstackError, match=r"known kernels are 6\.1, 6\.12$"):
        kernels.fetch(version)


@pytest.mark.parametrize(
    ("mode", "build", "source"),
    [
        ("exact", "usr/src/linux-headers-6.1.0-99-amd64", "usr/src/linux-headers-6.1.0-99-common"),
        (
            "approximate",
            "other/linux-headers-6.1.0-50-amd64",
            "other/linux-headers-6.1.0-50-common",
        ),
        ("none", None, None),
    ],
)
def test_modules_tree_links_the_headers_the_mode_asks_for(
    tmp_path: Path, mode: kernels.HeadersMode, build: str | None, source: str | None
) -> None:
    kernel = _extracted(tmp_path / "cache")
    other = tmp_path / "other"
    (other / "linux-headers-6.1.0-50-amd64").mkdir(parents=True)
    (other / "linux-headers-6.1.0-50-common").mkdir()
    modules = kernels.modules_tree(
        kernel,
        tmp_path / "vm",
        headers=mode,
        approximate_from=other / "linux-headers-6.1.0-50-amd64",
    )
    tree = modules / RELEASE
    assert modules == tmp_path / "vm/lib/modules"
    assert (tree / "kernel").resolve() == kernel.modules / "kernel"
    assert (tree / "modules.dep").is_symlink()
    for link, want in (("build", build), ("source", source)):
        if want is None:
            assert not (tree / link).exists()
        else:
            base = tmp_path if want.startswith("other") else kernel.root
            assert (tree / link).resolve() == base / want
    # What vng boots: the image beside this tree, so virtme finds these modules.
    assert kernels.boot_image(kernel, modules).resolve() == kernel.vmlinuz
    # The cache itself is never written: another VM may want other headers.
    assert sorted(p.name for p in kernel.modules.iterdir()) == ["kernel", "modules.dep"]


def test_modules_tree_refuses_what_it_cannot_make(tmp_path: Path) -> None:
    kernel = _extracted(tmp_path / "cache")
    with pytest.raises(DevstackError, match="approximate_from"):
        kernels.modules_tree(kernel, tmp_path / "vm", headers="approximate")
    with pytest.raises(DevstackError, match="not one of exact, approximate, none"):
        kernels.modules_tree(kernel, tmp_path / "vm", headers="kheaders")  # type: ignore[arg-type]
    half = kernels.Kernel("6.1", "6.1.0-98-amd64", tmp_path / "half")
    with pytest.raises(DevstackError, match="not \\(completely\\)"):
        kernels.modules_tree(half, tmp_path / "vm", headers="none")


def test_vng_command_is_the_whole_argv(tmp_path: Path) -> None:
    kernel = _extracted(tmp_path / "cache")
    modules = kernels.modules_tree(kernel, tmp_path / "vm", headers="exact")
    argv = kernels.vng_command(
        kernel,
        modules=modules,
        name="k61-1",
        exec_="echo 'a b' > /x",
        memory_mb=1536,
        cpus=1,
        rwdirs={"/etc/fleettrace": tmp_path / "etc"},
        overlays=("/opt",),
        qemu_opts=("-netdev", "tap,id=n0,ifname=ftk0,script=no,downscript=no"),
        kvm=False,
        pidfile=tmp_path / "qemu.pid",
    )
    assert argv[0] == "env" and argv[1].startswith(f"PATH={kernels.vng_path().parent}:")
    assert "/usr/sbin" in argv[1].split(":")
    assert argv[2:6] == [
        str(kernels.vng_path()),
        "--run",
        str(tmp_path / "vm/boot/vmlinuz-6.1.0-99-amd64"),
        "--force-9p",
    ]
    joined = " ".join(argv)
    assert "--name k61-1 --memory 1536M --cpus 1 --disable-kvm" in joined
    assert f"--rwdir=/etc/fleettrace={tmp_path / 'etc'}" in argv
    assert "--overlay-rwdir=/opt" in argv
    opts = [a.removeprefix("--qemu-opts=") for a in argv if a.startswith("--qemu-opts=")]
    assert opts == [
        "-pidfile",
        str(tmp_path / "qemu.pid"),
        "-netdev",
        "tap,id=n0,ifname=ftk0,script=no,downscript=no",
    ]
    assert argv[-2:] == ["--exec", "echo 'a b' > /x"]
    with_kvm = kernels.vng_command(kernel, modules=modules, name="k", exec_="true", kvm=True)
    assert "--disable-kvm" not in with_kvm


@pytest.mark.parametrize("opt", ["-append a b", "x;reboot", "$(id)", ""])
def test_qemu_options_vngs_shell_would_split_are_refused(tmp_path: Path, opt: str) -> None:
    kernel = _extracted(tmp_path / "cache")
    modules = kernels.modules_tree(kernel, tmp_path / "vm", headers="none")
    with pytest.raises(DevstackError, match="cannot pass through vng's shell line"):
        kernels.vng_command(kernel, modules=modules, name="k", exec_="true", qemu_opts=(opt,))


def test_what_virtmes_tmpfs_hides_is_exported_again_read_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """virtme's init mounts a tmpfs over /var/tmp, /var/cache, /run...: a kernel cache or a
    checkout under one of them would be empty in the guest (its build link dangling, its
    venv missing). Each is given back, read-only, where it is; once, outermost first."""
    hidden = Path("/var/tmp") / tmp_path.name  # a made-up path: nothing is written there
    kernel = kernels.Kernel("6.1", RELEASE, hidden / "var/kernels" / RELEASE)
    checkout = hidden
    monkeypatch.setattr(kernels, "source_root", lambda: checkout)
    monkeypatch.setattr(kernels.sys, "prefix", str(hidden / ".venv"))
    assert kernels.hidden_in_guest(kernel.root) and kernels.hidden_in_guest(Path("/run/x"))
    assert not kernels.hidden_in_guest(tmp_path) and not kernels.hidden_in_guest(Path("/var"))
    assert not kernels.hidden_in_guest(Path("/var/tmpx"))
    assert kernels.shown_again([kernel.root, hidden / ".venv", checkout], {}) == [checkout]
    # A path an rwdir already gives the guest is left to it.
    assert kernels.shown_again([kernel.root], {str(hidden): hidden}) == []
    # Nothing hidden: nothing added.
    assert kernels.shown_again([tmp_path, Path("/usr")], {}) == []

    visible = _extracted(tmp_path / "cache")
    modules = kernels.modules_tree(visible, tmp_path / "vm", headers="exact")
    argv = kernels.vng_command(visible, modules=modules, name="k", exec_="true", kvm=False)
    assert [a for a in argv if a.startswith("--rodir")] == [f"--rodir={checkout}={checkout}"]
    monkeypatch.setattr(kernels, "source_root", lambda: tmp_path)
    monkeypatch.setattr(kernels.sys, "prefix", str(tmp_path / ".venv"))
    argv = kernels.vng_command(visible, modules=modules, name="k", exec_="true", kvm=False)
    assert not [a for a in argv if a.startswith("--rodir")]


@pytest.mark.parametrize("path", ["/tmp/a b", "/tmp/a=b", "/tmp/$(id)", "relative"])
def test_paths_vngs_line_would_split_are_refused_naming_them(tmp_path: Path, path: str) -> None:
    kernel = _extracted(tmp_path / "cache")
    modules = kernels.modules_tree(kernel, tmp_path / "vm", headers="none")
    with pytest.raises(DevstackError, match=f"a VM cannot be given {re.escape(repr(path))}"):
        kernels.vng_command(
            kernel, modules=modules, name="k", exec_="true", rwdirs={"/x": Path(path)}
        )


def test_vng_command_wants_a_tree_from_modules_tree(tmp_path: Path) -> None:
    kernel = _extracted(tmp_path / "cache")
    with pytest.raises(DevstackError, match="not a tree made by modules_tree"):
        kernels.vng_command(kernel, modules=kernel.modules, name="k", exec_="true", kvm=False)


def test_cache_dir_is_the_environments_else_the_checkouts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(kernels.CACHE_ENV, str(tmp_path))
    assert kernels.cache_dir() == tmp_path
    monkeypatch.delenv(kernels.CACHE_ENV)
    assert kernels.cache_dir() == Path(__file__).resolve().parents[2] / "var" / "kernels"


@pytest.mark.parametrize("version", kernels.KNOWN)
def test_resolve_names_a_release_apt_can_download(version: str) -> None:
    # apt-cache reads the local lists: no network, but the lists must be there.
    if not Path("/var/lib/apt/lists").is_dir() or not any(Path("/var/lib/apt/lists").iterdir()):
        pytest.skip("no apt package lists on this machine")
    release = kernels.resolve(version)
    assert re.fullmatch(rf"{re.escape(version)}(\.\d+)*(-\d+|\+deb\d+)-amd64", release)
    needed = kernels.packages(release)
    assert needed[:2] == [f"linux-image-{release}-unsigned", f"linux-headers-{release}"]
    assert any(p.startswith("linux-kbuild-") for p in needed)
    assert any(p.endswith("-common") for p in needed)


def test_fetch_reuses_the_cache_and_clears_a_killed_fetch(tmp_path: Path) -> None:
    release = kernels.resolve("6.1")
    kernel = _extracted(tmp_path, release)
    leftover = tmp_path / ".fetch-6.1-12345" / "root"
    leftover.mkdir(parents=True)
    assert kernels.fetch("6.1", cache=tmp_path) == kernel
    assert not leftover.parent.exists()


def _on_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, name: str, script: str) -> None:
    """A shell script called `name`, first on PATH for this test."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / name
    fake.write_text(f"#!/bin/sh\n{script}\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")


def test_fetch_without_apt_lists_uses_what_is_cached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kernel = _extracted(tmp_path, "6.1.0-7-amd64")
    _extracted(tmp_path, "6.1.0-12-amd64")
    # apt-cache failing as it does without lists: the newest cached kernel still boots.
    _on_path(monkeypatch, tmp_path, "apt-cache", "echo 'E: no lists' >&2\nexit 100")
    assert kernels.fetch("6.1", cache=tmp_path).release == "6.1.0-12-amd64"
    (tmp_path / "6.1.0-12-amd64" / "boot" / "vmlinuz-6.1.0-12-amd64").unlink()
    assert kernels.fetch("6.1", cache=tmp_path) == kernel
    for entry in ("6.1.0-7-amd64", "6.1.0-12-amd64"):
        shutil.rmtree(tmp_path / entry)
    with pytest.raises(DevstackError, match=r"E: no lists\): run `apt-get update`$"):
        kernels.fetch("6.1", cache=tmp_path)


def test_fetch_asks_apt_again_only_once_its_lists_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """setup.sh fetches both kernels on every run: with the lists unchanged since the last
    resolve, the remembered release is used without an apt-cache call (~1 s each here)."""
    lists = tmp_path / "lists"
    lists.mkdir()
    os.utime(lists, (1, 1))
    monkeypatch.setattr(kernels, "APT_LISTS", lists)
    release = kernels.resolve("6.1")
    cache = tmp_path / "cache"
    kernel = _extracted(cache, release)
    assert kernels.fetch("6.1", cache=cache) == kernel  # resolved with apt, remembered
    # From now on apt-cache would fail, and say it was called.
    called = tmp_path / "called"
    _on_path(monkeypatch, tmp_path, "apt-cache", f"touch {called}\necho 'E: asked' >&2\nexit 100")
    assert kernels.fetch("6.1", cache=cache) == kernel
    assert not called.exists()
    # `apt-get update` since: apt is asked again (failing, the cached kernel is used).
    os.utime(lists)
    assert kernels.fetch("6.1", cache=cache) == kernel
    assert called.exists()
    # A remembered release no longer in the cache is not taken on trust either.
    called.unlink()
    (cache / ".resolved-6.1").write_text("6.1.0-1-amd64\n")
    assert kernels.fetch("6.1", cache=cache) == kernel
    assert called.exists()


@pytest.mark.parametrize(
    ("modules", "hardware"),
    [(["kvm", "kvm_pvm"], False), (["kvm"], False), (["kvm", "kvm_intel"], True)],
)
def test_kvm_counts_only_when_its_backend_is_hardware_virtualization(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, modules: list[str], hardware: bool
) -> None:
    """On a nested host without VMX/SVM, /dev/kvm is PVM's: QEMU opens it and its firmware
    runs, but a distro kernel hangs; such a host emulates. With kvm_intel or kvm_amd, QEMU is
    asked (here it is a stand-in that spins, as a working KVM's firmware does)."""
    for name in modules:
        (tmp_path / "module" / name).mkdir(parents=True)
    monkeypatch.setattr(kernels, "SYS_MODULE", tmp_path / "module")
    _on_path(monkeypatch, tmp_path, "qemu-system-x86_64", "exec sleep 30")
    monkeypatch.setattr(kernels.os, "access", lambda path, mode: path == "/dev/kvm")
    kernels.kvm_works.cache_clear()
    try:
        assert kernels.kvm_works() is hardware
    finally:
        kernels.kvm_works.cache_clear()
