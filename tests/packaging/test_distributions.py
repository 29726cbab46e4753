"""The three distributions, built for real: what each wheel holds, what it requires, and a
controller-only machine (the agent's and the controller's wheels, no fleettrace-dev).

The agent's wheel is built by the bootstrap's own builder (what a host receives); the
controller's by `pip wheel --no-deps` of a copy of the whole checkout, agent/ and tools/
included, so a package-discovery mistake would show up in it.
"""

from __future__ import annotations

import shutil
import site
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import node_agent
from controller.bootstrap.artifacts import Artifacts, agent_source, source_files, wheel_metadata

REPO = Path(__file__).resolve().parents[2]
# What a copy of the checkout leaves out: environments, caches and build output.
_NOT_SOURCE = shutil.ignore_patterns(
    ".venv", ".git", "var", "build", "dist", "*.egg-info", "__pycache__", "*.pyc", ".*_cache"
)


@dataclass(frozen=True)
class Wheels:
    agent: Path
    controller: Path
    dev: Path


def _pip(*args: str) -> None:
    argv = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", *args]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> Wheels:
    work = tmp_path_factory.mktemp("wheels")
    agent = Artifacts(work / "artifacts").agent_wheel().path
    tree = work / "checkout"
    shutil.copytree(REPO, tree, ignore=_NOT_SOURCE)
    _pip("wheel", "--no-deps", "--wheel-dir", str(work / "controller"), str(tree))
    _pip("wheel", "--no-deps", "--wheel-dir", str(work / "dev"), str(tree / "tools"))
    (controller,) = (work / "controller").glob("*.whl")
    (dev,) = (work / "dev").glob("*.whl")
    return Wheels(agent=agent, controller=controller, dev=dev)


def _top_levels(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as archive:
        return {name.split("/", 1)[0] for name in archive.namelist()}


def _names(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as archive:
        return archive.namelist()


def test_the_agents_wheel_holds_the_agent_and_nothing_else(wheels: Wheels) -> None:
    assert wheels.agent.name == f"fleettrace_agent-{node_agent.__version__}-py3-none-any.whl"
    assert _top_levels(wheels.agent) == {
        "node_agent",
        f"fleettrace_agent-{node_agent.__version__}.dist-info",
    }
    names = _names(wheels.agent)
    # The catalog's C sources travel with it (package data), and the CLI a host runs.
    assert "node_agent/programs/prelude.h" in names
    assert "node_agent/programs/syscalls/program.c" in names
    assert "node_agent/worker.py" in names
    assert not [n for n in names if "controller" in n.split("/")[0] or "devstack" in n]


def test_the_agents_wheel_requires_only_the_agents_dependencies(wheels: Wheels) -> None:
    version, requirements = wheel_metadata(wheels.agent)
    assert version == node_agent.__version__
    names = sorted(r.split("[")[0].split(">")[0].split("<")[0].split("=")[0] for r in requirements)
    assert names == ["celery", "cryptography", "pydantic", "pydantic-settings", "redis"]


def test_the_controllers_wheel_has_no_agent_and_no_devstack(wheels: Wheels) -> None:
    version = node_agent.__version__
    assert wheels.controller.name == f"fleettrace-{version}-py3-none-any.whl"
    assert _top_levels(wheels.controller) == {"controller", f"fleettrace-{version}.dist-info"}
    names = _names(wheels.controller)
    assert "controller/console/templates/base.html" in names  # its package data came along
    assert "controller/migrations/env.py" in names
    assert not [n for n in names if "devstack" in n or "node_agent" in n]


def test_one_version_everywhere(wheels: Wheels) -> None:
    """node_agent.__version__ is the version (the agent's pyproject reads it); the controller's
    and fleettrace-dev's versions and their pins say the same, as their built metadata shows."""
    version = node_agent.__version__
    assert wheel_metadata(wheels.agent)[0] == version
    controller_version, controller_needs = wheel_metadata(wheels.controller)
    assert controller_version == version
    assert [r for r in controller_needs if r.startswith("fleettrace")] == [
        f"fleettrace-agent=={version}"
    ]
    dev_version, dev_needs = wheel_metadata(wheels.dev)
    assert dev_version == version
    assert [r for r in dev_needs if r.startswith("fleettrace")] == [f"fleettrace=={version}"]


def test_the_dev_wheel_holds_devstack_only(wheels: Wheels) -> None:
    assert _top_levels(wheels.dev) == {
        "devstack",
        f"fleettrace_dev-{node_agent.__version__}.dist-info",
    }


def test_the_hosts_cache_key_covers_the_agents_tree_only() -> None:
    """A host's wheel is rebuilt when agent/ changes, and only then."""
    source = agent_source()
    assert source == REPO / "agent"
    files = [p.relative_to(source).as_posix() for p in source_files(source)]
    assert "pyproject.toml" in files and "node_agent/__init__.py" in files
    assert "node_agent/programs/prelude.h" in files
    assert all((source / f).resolve().is_relative_to(source) for f in files)


# -- a controller-only machine: the two wheels, without fleettrace-dev ------------------------


@pytest.fixture(scope="module")
def controller_only(wheels: Wheels, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh venv with the agent's and the controller's wheels installed (no devstack); the
    third-party libraries come from this venv's site-packages, added after the install."""
    venv = tmp_path_factory.mktemp("controller-only") / "venv"
    subprocess.run(
        ["/usr/bin/python3", "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120
    )
    python = venv / "bin" / "python"
    _pip("--python", str(python), "install", "--no-deps", "--no-index", str(wheels.agent),
         str(wheels.controller))  # fmt: skip
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True, timeout=30,
    ).stdout.strip()  # fmt: skip
    # This venv's site-packages and the system's, as plain path lines: the editable installs'
    # .pth files in them are not run, so the checkout's packages stay out.
    libraries = "".join(f"{p}\n" for p in site.getsitepackages())
    (Path(purelib) / "libraries.pth").write_text(libraries)
    yield venv


def _run(venv: Path, *argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(venv / "bin" / argv[0]), *argv[1:]],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env={"PATH": "/usr/bin:/bin", "HOME": str(cwd)},
        check=False,
    )


def test_a_controller_only_machine_has_the_controller_and_the_agent_but_no_devstack(
    controller_only: Path, tmp_path: Path
) -> None:
    code = (
        "import importlib.util as u, controller, node_agent\n"
        "print(controller.__file__, node_agent.__file__, u.find_spec('devstack'))"
    )
    found = _run(controller_only, "python", "-c", code, cwd=tmp_path)
    assert found.returncode == 0, found.stderr
    controller_file, agent_file, devstack = found.stdout.split()
    assert controller_file.startswith(str(controller_only))  # the wheel's, not the checkout's
    assert agent_file.startswith(str(controller_only))
    assert devstack == "None"
    helped = _run(controller_only, "fleettrace", "--help", cwd=tmp_path)
    assert helped.returncode == 0, helped.stderr
    assert "hosts" in helped.stdout


@pytest.mark.parametrize("argv", [["dev", "up"], ["dev"], ["dev", "demo", "--keep"]])
def test_fleettrace_dev_without_devstack_is_one_line_and_a_failure(
    controller_only: Path, tmp_path: Path, argv: list[str]
) -> None:
    done = _run(controller_only, "fleettrace", *argv, cwd=tmp_path)
    assert done.returncode == 2  # as for any other command it refuses
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("fleettrace: error: `fleettrace dev` is a checkout's tool")
    assert "scripts/setup.sh" in done.stderr
