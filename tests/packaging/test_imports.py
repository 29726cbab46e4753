"""Who may import whom, read from the source (every import statement, lazy ones included).

- The controller and the dev tools use the agent's shared modules (protocol, kinds, catalog,
  durations, ...), never its command line, renderer or trace machinery, not even through a
  shared module that imports them.
- The agent's package imports neither the controller nor devstack: a host has neither.
- devstack is reached from the controller in one place only: `fleettrace dev`'s lazy import.
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ROOTS = {"controller": REPO, "node_agent": REPO / "agent", "devstack": REPO / "tools"}
# The agent's entry points and its processes: what a shared module must not be or pull in.
AGENT_ONLY = (
    "node_agent.cli",
    "node_agent.render",
    "node_agent.worker",
    "node_agent.runner",
    "node_agent.child",
    "node_agent.outbox",
    "node_agent.trace",
    "node_agent.settings",
    "node_agent.capabilities",
    "node_agent.runtime.bcc_runtime",  # runtime.base, the interface catalog specs name, is shared
    "node_agent.runtime.sandbox",
    "node_agent.zygote",
    "node_agent.zygote_process",
    "node_agent.selfstats",
)
# (importing file, module): `fleettrace dev` from a checkout, behind an ImportError.
DEVSTACK_DOORS = {("controller/cli/main.py", "devstack")}


def _module_name(path: Path) -> str:
    top = path.relative_to(REPO).parts[0]
    root = ROOTS["node_agent" if top == "agent" else "devstack" if top == "tools" else top]
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _files(package: str) -> dict[str, Path]:
    found = {}
    for path in sorted((ROOTS[package] / package).rglob("*.py")):
        if "__pycache__" not in path.parts:
            found[_module_name(path)] = path
    return found


MODULES = {name: path for package in ROOTS for name, path in _files(package).items()}


def _imports(path: Path) -> Iterator[str]:
    """Every module an import statement in `path` names, `from a import b` as a.b when b is
    a module of ours; relative imports resolved."""
    here = _module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            yield base
            for alias in node.names:
                if f"{base}.{alias.name}" in MODULES:
                    yield f"{base}.{alias.name}"


@functools.cache
def imports(path: Path) -> tuple[str, ...]:
    return tuple(_imports(path))


def _with_parents(module: str) -> list[str]:
    """Importing a.b.c runs a/__init__ and a/b/__init__ too."""
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def reached(start: Path) -> set[str]:
    """Our modules that importing `start` can load, directly or through each other."""
    seen: set[str] = set()
    todo = [m for name in imports(start) for m in _with_parents(name)]
    while todo:
        module = todo.pop()
        if module in seen or module not in MODULES:
            continue
        seen.add(module)
        todo += [m for name in imports(MODULES[module]) for m in _with_parents(name)]
    return seen


def _is_agent_only(module: str) -> bool:
    return any(module == bad or module.startswith(bad + ".") for bad in AGENT_ONLY)


def _relative(path: Path) -> str:
    return path.relative_to(REPO).as_posix()


def test_the_graph_is_read() -> None:
    """The reader finds what it must, so the rules below are checked on something."""
    assert {"controller.cli.main", "node_agent.cli", "devstack.cli"} <= set(MODULES)
    assert "node_agent.render" in reached(MODULES["node_agent.cli"])
    assert "node_agent.durations" in reached(MODULES["controller.console.forms"])
    assert "devstack" in set(imports(MODULES["controller.cli.main"]))


@pytest.mark.parametrize("package", ["controller", "devstack"])
def test_the_controller_and_the_dev_tools_use_only_the_agents_shared_modules(
    package: str,
) -> None:
    wrong = {}
    for name, path in _files(package).items():
        bad = sorted(m for m in reached(path) if _is_agent_only(m))
        if bad:
            wrong[name] = bad
    assert wrong == {}


def test_the_agent_imports_neither_the_controller_nor_devstack() -> None:
    wrong = {
        name: found
        for name, path in _files("node_agent").items()
        if (
            found := sorted(
                m for m in imports(path) if m.split(".")[0] in {"controller", "devstack"}
            )
        )
    }
    assert wrong == {}


def test_devstack_is_reached_from_the_controller_only_through_fleettrace_dev() -> None:
    doors = {
        (_relative(path), module.split(".")[0])
        for path in _files("controller").values()
        for module in imports(path)
        if module.split(".")[0] == "devstack"
    }
    assert doors == DEVSTACK_DOORS
    # ... and that import is lazy: inside a function, where ImportError is handled.
    main = ast.parse((REPO / "controller/cli/main.py").read_text())
    top_level = [n for n in main.body if isinstance(n, ast.ImportFrom)]
    assert all(n.module != "devstack" for n in top_level)
