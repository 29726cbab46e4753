"""What lands on a traced host: the agent's wheel against the single wheel shipped before.

Before: the wheel bootstrap built at commit 78979e2 (`--before`), by that commit's own
builder in a temporary `git worktree` (removed afterwards): node_agent plus all of
controller (API, bootstrap, console, devstack). After: the agent's wheel from agent/, built
by today's builder. Both go with the wheelhouse of their base requirements (the same
packages: checked and shown). Each round installs each into a fresh venv exactly as the
bootstrap's install step does (`/usr/bin/python3 -m venv --system-site-packages`, then
`pip --isolated install --no-index --find-links <wheels> <wheel>`), before and after
interleaved. Sizes are bytes on disk (file sizes; the .pyc files pip compiles included).

    .venv/bin/python bench/install_size.py [--rounds 3] [--before 78979e2] [--json]
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import _main
from bootstrap import local_target  # bench/bootstrap.py: this machine as the host

from controller.bootstrap.artifacts import (
    ArtifactFile,
    Artifacts,
    TargetPlatform,
    source_root,
    wheel_metadata,
)

BEFORE = "78979e2"
# The old commit's builder, run from its worktree: the wheel its bootstrap shipped.
OLD_BUILD = (
    "import sys; from pathlib import Path; import controller.bootstrap.artifacts as a\n"
    "assert a.__file__.startswith(sys.argv[2]), a.__file__\n"
    "builder = a.Artifacts(Path(sys.argv[1]))\n"
    "with builder._locked():\n"
    "    print(builder._agent_dir())\n"
)


@dataclass(frozen=True)
class Shipped:
    label: str
    wheel: Path
    wheel_bytes: int
    dependencies: tuple[ArtifactFile, ...]
    requirements: list[str]


def run(*argv: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=900, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:4])} ...: {(done.stdout + done.stderr)[-2000:]}")
    return done.stdout


def build_before(repo: Path, commit: str, workdir: Path) -> Path:
    """The old single wheel, by the old commit's builder; its worktree removed after."""
    tree = workdir / "before-tree"
    run("git", "-C", str(repo), "worktree", "add", "--detach", str(tree), commit)
    try:
        env = {**os.environ, "PYTHONPATH": str(tree)}
        out = run(sys.executable, "-c", OLD_BUILD, str(workdir / "before-cache"), str(tree),
                  cwd=tree, env=env)  # fmt: skip
        (wheel,) = Path(out.strip()).glob("*.whl")
        kept = workdir / wheel.name
        shutil.copy2(wheel, kept)
        return kept
    finally:
        run("git", "-C", str(repo), "worktree", "remove", "--force", str(tree))


def shipped(label: str, wheel: Path, artifacts: Artifacts, target: TargetPlatform) -> Shipped:
    requirements = wheel_metadata(wheel)[1]
    deps = artifacts.wheelhouse(target, requirements)
    return Shipped(label, wheel, wheel.stat().st_size, deps, requirements)


def tree_bytes(root: Path) -> tuple[int, int]:
    """(bytes, files) under root, symlinks not followed."""
    size = files = 0
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            size += path.stat().st_size
            files += 1
    return size, files


def record_bytes(site: Path, wheel: Path) -> tuple[int, int, int]:
    """(bytes, files, .py modules) the wheel's distribution installed, from its RECORD."""
    name, version = wheel.name.split("-")[:2]
    record = site / f"{name}-{version}.dist-info" / "RECORD"
    size = files = modules = 0
    for line in record.read_text().splitlines():
        path = (site / line.rsplit(",", 2)[0]).resolve()
        if path.is_file():
            size += path.stat().st_size
            files += 1
            modules += path.suffix == ".py"
    return size, files, modules


def install(item: Shipped, workdir: Path) -> dict[str, Any]:
    """A fresh venv and the wheel in it, as bootstrap's install step does it."""
    wheels = workdir / "wheels"
    venv = workdir / "venv"
    shutil.rmtree(workdir, ignore_errors=True)
    wheels.mkdir(parents=True)
    for f in (item.wheel, *(d.path for d in item.dependencies)):
        shutil.copy2(f, wheels / f.name)
    run("/usr/bin/python3", "-m", "venv", "--system-site-packages", str(venv))
    empty, _ = tree_bytes(venv)
    python = str(venv / "bin" / "python")
    env = {"PATH": "/usr/bin:/bin", "PIP_CONFIG_FILE": "/dev/null"}
    started = time.monotonic()
    run(python, "-m", "pip", "--isolated", "install", "-q", "--no-index", "--find-links",
        str(wheels), str(wheels / item.wheel.name), env=env)  # fmt: skip
    took = time.monotonic() - started
    site = Path(run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"))
    own, files, modules = record_bytes(Path(str(site).strip()), item.wheel)
    total, total_files = tree_bytes(venv)
    probe = "import importlib.util as u; print(u.find_spec('controller') is not None)"
    importable = run(python, "-c", probe, cwd=workdir).strip() == "True"
    return {
        "install_s": round(took, 2),
        "package_bytes": own,
        "package_files": files,
        "package_modules": modules,
        "venv_bytes": total,
        "venv_files": total_files,
        "venv_added_bytes": total - empty,  # what pip install put in the fresh venv
        "controller_importable": importable,
    }


def main() -> int:
    parser = _main.options(__doc__, rounds=3, rounds_help="installs of each, interleaved")
    parser.add_argument("--before", default=BEFORE, help="the commit of the single wheel")
    args = parser.parse_args()
    log = _main.progress(args)
    repo = source_root()
    if repo is None:
        raise SystemExit("run it from a fleettrace checkout")
    target = local_target()
    artifacts = Artifacts(repo / "var" / "artifacts")
    with _main.scratch("ft-bench-install-") as workdir:
        log(f"building the single wheel of {args.before} in a temporary worktree")
        before = shipped("before", build_before(repo, args.before, workdir), artifacts, target)
        after = shipped("after", artifacts.agent_wheel().path, artifacts, target)
        log(f"before: {before.wheel.name}; after: {after.wheel.name}")
        items = (before, after)
        samples: dict[str, list[dict[str, Any]]] = {"before": [], "after": []}
        for i in range(args.rounds):
            for item in items:
                samples[item.label].append(install(item, workdir / item.label))
            b, a = samples["before"][-1], samples["after"][-1]
            log(f"round {i + 1}/{args.rounds}: install {b['install_s']}s -> {a['install_s']}s")
    summary: dict[str, Any] = _main.machine(before_commit=args.before)
    for item in items:
        last = samples[item.label][-1]
        summary[item.label] = {
            "wheel": item.wheel.name,
            "wheel_bytes": item.wheel_bytes,
            "dependencies": len(item.dependencies),
            "dependency_bytes": sum(d.size for d in item.dependencies),
            "requirements": item.requirements,
            **{k: v for k, v in last.items() if k != "install_s"},
            "install_s_median": _main.median(s["install_s"] for s in samples[item.label]),
            "install_s": [s["install_s"] for s in samples[item.label]],
        }
    return _main.finish(args, summary, print_table)


def _mb(value: float) -> str:
    return f"{value / 1e6:.2f} MB"


# (row label, the measure's key, how it is shown)
ROWS = (
    ("wheel", "wheel_bytes", _mb),
    ("wheelhouse (deps)", "dependency_bytes", _mb),
    ("fleettrace installed", "package_bytes", _mb),
    ("  its files", "package_files", str),
    ("  its .py modules", "package_modules", str),
    ("venv: added by install", "venv_added_bytes", _mb),
    ("venv: total", "venv_bytes", _mb),
    ("pip install s (median)", "install_s_median", "{:.2f}".format),
)


def print_table(summary: dict[str, Any]) -> None:
    b, a = summary["before"], summary["after"]
    before = f"before ({summary['before_commit']})"
    print(f"{'':<24}{before:>18}{'after':>14}{'after/before':>14}")
    for label, key, shown in ROWS:
        print(f"{label:<24}{shown(b[key]):>18}{shown(a[key]):>14}{a[key] / b[key]:>14.3f}")
    print(f"wheelhouse wheels: before {b['dependencies']}, after {a['dependencies']}")
    print(
        f"controller importable on the host: before {b['controller_importable']}, "
        f"after {a['controller_importable']}"
    )
    same = "the same" if b["requirements"] == a["requirements"] else "DIFFERENT"
    print(f"base requirements: {same} ({', '.join(a['requirements'])})")


if __name__ == "__main__":
    sys.exit(main())
