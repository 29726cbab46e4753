"""What a host installs: the agent's wheel (agent/ of this checkout) and its dependencies.

Both are built once and cached under the artifacts dir: the wheel by version and a hash of
the source tree (var/artifacts/agent/<version>-<hash>), the wheelhouse by its requirements
and the target's Python and platform (var/artifacts/wheelhouse/<py>-<arch>-<glibc>-<hash>).
Each dir has a manifest.json with every file's sha256, so uploads can skip identical files.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from controller.errors import ControllerError

log = logging.getLogger(__name__)
PACKAGES = ("node_agent",)  # the agent's distribution: the controller never ships
TOP_FILES = ("pyproject.toml", "README.md", "LICENSE")
_SKIP = shutil.ignore_patterns("__pycache__", "*.pyc", "*.pyo", "*.egg-info")
BUILD_TIMEOUT_S = 600.0
# Agent builds kept in the cache (each edit of the checkout makes one).
KEEP_BUILDS = 5


class ArtifactError(ControllerError):
    status = 500


@dataclass(frozen=True)
class TargetPlatform:
    """The host's Python and platform, as preflight found them."""

    python: str  # "3.11"
    arch: str  # uname -m: x86_64, aarch64, ...
    glibc: str | None  # "2.36"; None on a musl host (not supported)
    implementation: str = "cp"

    @property
    def key(self) -> str:
        return f"{self.implementation}{self.python.replace('.', '')}-{self.arch}-glibc{self.glibc}"

    def platform_tags(self) -> list[str]:
        if self.glibc is None:
            raise ArtifactError("only glibc hosts are supported (no musllinux wheelhouse)")
        major, minor = (int(x) for x in self.glibc.split(".")[:2])
        if major != 2:
            raise ArtifactError(f"unexpected glibc version {self.glibc}")
        tags = [f"manylinux_2_{m}_{self.arch}" for m in range(minor, 4, -1)]
        legacy = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}
        tags += [f"{name}_{self.arch}" for m, name in legacy.items() if m <= minor]
        return tags

    def pip_args(self) -> list[str]:
        abi = f"{self.implementation}{self.python.replace('.', '')}"
        args = ["--only-binary=:all:", "--python-version", self.python]
        args += ["--implementation", self.implementation, "--abi", abi, "--abi", "abi3"]
        args += ["--abi", "none"]
        for tag in self.platform_tags():
            args += ["--platform", tag]
        return args


@dataclass(frozen=True)
class ArtifactFile:
    name: str
    path: Path
    sha256: str
    size: int


@dataclass(frozen=True)
class Bundle:
    """Everything one host needs, agent wheel first."""

    version: str  # the agent's version, as its heartbeat reports it
    build_id: str  # version + source hash: what the install step compares
    wheel: ArtifactFile
    dependencies: tuple[ArtifactFile, ...]

    @property
    def files(self) -> tuple[ArtifactFile, ...]:
        return (self.wheel, *self.dependencies)


class ArtifactSource(Protocol):
    def bundle(self, target: TargetPlatform) -> Bundle: ...


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def source_root() -> Path | None:
    """This checkout's root (where pyproject.toml is), or None for an installed controller."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / "pyproject.toml").exists() else None


def agent_source() -> Path | None:
    """The agent distribution's tree in this checkout (what a host's wheel is built from)."""
    root = source_root()
    return (
        root / "agent"
        if root is not None and (root / "agent" / "pyproject.toml").exists()
        else None
    )


def source_files(root: Path) -> list[Path]:
    """The files a wheel of `root` is built from (what the source hash covers)."""
    files = [root / name for name in TOP_FILES if (root / name).is_file()]
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*")):
            parts = set(path.relative_to(root).parts)
            if (
                path.is_file()
                and "__pycache__" not in parts
                and path.suffix not in (".pyc", ".pyo")
            ):
                files.append(path)
    return files


def source_hash(root: Path) -> str:
    digest = hashlib.sha256()
    for path in source_files(root):
        digest.update(str(path.relative_to(root)).encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()[:16]


def wheel_metadata(wheel: Path) -> tuple[str, list[str]]:
    """(version, base requirements) from a wheel's METADATA: extras' requirements left out."""
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        text = archive.read(name).decode()
    version = ""
    requirements = []
    for line in text.splitlines():
        if not line.strip():
            break  # the headers end at the first blank line
        key, _, value = line.partition(": ")
        if key == "Version":
            version = value.strip()
        elif key == "Requires-Dist" and not re.search(r"\bextra\s*==", value):
            requirements.append(value.strip())
    if not version:
        raise ArtifactError(f"{wheel.name} has no version in its metadata")
    return version, requirements


def _manifest(directory: Path, **extra: object) -> None:
    files = [
        {"name": p.name, "sha256": sha256_file(p), "size": p.stat().st_size}
        for p in sorted(directory.glob("*.whl"))
    ]
    (directory / "manifest.json").write_text(json.dumps({**extra, "files": files}, indent=2))


def _read_manifest(directory: Path) -> tuple[dict[str, Any], tuple[ArtifactFile, ...]]:
    data = json.loads((directory / "manifest.json").read_text())
    files = tuple(
        ArtifactFile(f["name"], directory / f["name"], f["sha256"], int(f["size"]))
        for f in data["files"]
    )
    return data, files


def _prune(directory: Path, *, keep: int) -> None:
    builds = sorted(directory.iterdir(), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in builds[keep:]:
        shutil.rmtree(old, ignore_errors=True)


class Artifacts:
    """Builds and caches bundles; safe to share between threads and processes."""

    def __init__(
        self, cache_dir: Path, *, source: Path | None = None, python: str = sys.executable
    ) -> None:
        self.cache_dir = cache_dir.resolve()
        self.source = source or agent_source()
        self.python = python
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        with self._lock, (self.cache_dir / ".lock").open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def bundle(self, target: TargetPlatform) -> Bundle:
        with self._locked():
            agent_dir = self._agent_dir()
            data, files = _read_manifest(agent_dir)
            version, build_id = str(data["version"]), str(data["build_id"])
            requirements = [str(r) for r in data["requirements"]]
            deps_dir = self._wheelhouse(target, requirements)
            _, deps = _read_manifest(deps_dir)
        return Bundle(version=version, build_id=build_id, wheel=files[0], dependencies=deps)

    def agent_wheel(self) -> ArtifactFile:
        """The agent's wheel alone, built (or found in the cache) as a bundle's is."""
        with self._locked():
            _, files = _read_manifest(self._agent_dir())
        return files[0]

    def wheelhouse(
        self, target: TargetPlatform, requirements: list[str]
    ) -> tuple[ArtifactFile, ...]:
        """The wheels of `requirements` for `target`, downloaded (or found in the cache) as a
        bundle's dependencies are."""
        with self._locked():
            _, files = _read_manifest(self._wheelhouse(target, requirements))
        return files

    def _agent_dir(self) -> Path:
        if self.source is None:
            raise ArtifactError("no source checkout to build the agent wheel from")
        digest = source_hash(self.source)
        found = sorted(self.cache_dir.glob(f"agent/*-{digest}/manifest.json"))
        if found:
            return found[0].parent
        log.info("building the agent wheel from %s (source %s)", self.source, digest)
        work = Path(tempfile.mkdtemp(prefix=".build-", dir=self.cache_dir))
        try:
            tree = work / "src"
            tree.mkdir()
            for path in (self.source / name for name in TOP_FILES):
                if path.is_file():
                    shutil.copy2(path, tree / path.name)
            for package in PACKAGES:
                shutil.copytree(self.source / package, tree / package, ignore=_SKIP)
            # Named by what was copied: the checkout may change while this builds.
            digest = source_hash(tree)
            out = work / "out"
            self._pip("wheel", "--no-deps", "--wheel-dir", str(out), str(tree))
            wheels = list(out.glob("fleettrace_agent-*.whl"))
            if len(wheels) != 1:
                raise ArtifactError(f"pip wheel made {len(wheels)} agent wheels, not one")
            version, requirements = wheel_metadata(wheels[0])
            _manifest(
                out, version=version, build_id=f"{version}+{digest}", requirements=requirements
            )
            final = self.cache_dir / "agent" / f"{version}-{digest}"
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(out, final)
            _prune(final.parent, keep=KEEP_BUILDS)
            return final
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def _wheelhouse(self, target: TargetPlatform, requirements: list[str]) -> Path:
        digest = hashlib.sha256("\n".join(sorted(requirements)).encode()).hexdigest()[:12]
        final = self.cache_dir / "wheelhouse" / f"{target.key}-{digest}"
        if (final / "manifest.json").exists():
            return final
        log.info("downloading the agent's dependencies for %s", target.key)
        work = Path(tempfile.mkdtemp(prefix=".deps-", dir=self.cache_dir))
        try:
            out = work / "wheels"
            self._pip("download", *target.pip_args(), "--dest", str(out), *requirements)
            strays = [p.name for p in out.iterdir() if p.suffix != ".whl"]
            if strays:
                raise ArtifactError(f"the wheelhouse holds non-wheels: {', '.join(strays)}")
            _manifest(out, target=target.key, requirements=requirements)
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(out, final)
            return final
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def _pip(self, *args: str) -> None:
        argv = [self.python, "-m", "pip", "--disable-pip-version-check", "-q", *args]
        try:
            subprocess.run(
                argv, check=True, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S
            )
        except subprocess.CalledProcessError as exc:
            tail = (exc.stdout + exc.stderr).strip()[-2000:]
            raise ArtifactError(f"pip {args[0]} failed:\n{tail}") from None
        except subprocess.TimeoutExpired:
            raise ArtifactError(f"pip {args[0]} took longer than {BUILD_TIMEOUT_S:g}s") from None
