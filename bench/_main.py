"""What every benchmark's main shares: options, progress lines, medians, the machine it ran
on, a scratch directory, and the output (a table, or one JSON document with --json).

Not a benchmark itself. A benchmark's main reads:

    args = _main.options(__doc__, rounds=5, db=True).parse_args()
    log = _main.progress(args)
    with _main.scratch("ft-bench-x-") as workdir:
        ...
    return _main.finish(args, summary, print_table)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

M = TypeVar("M")
B = TypeVar("B")

DBS = ("sqlite", "postgresql")


def options(
    doc: str | None,
    *,
    rounds: int | None = None,
    rounds_help: str = "",
    db: bool = False,
    as_json: bool = True,
) -> argparse.ArgumentParser:
    """The benchmark's parser, its description the docstring's first paragraph; --json unless
    the benchmark only prints, --rounds and --db (sqlite or postgresql) when asked for."""
    parser = argparse.ArgumentParser(description=(doc or "").split("\n\n")[0])
    if rounds is not None:
        parser.add_argument("--rounds", type=int, default=rounds, help=rounds_help or None)
    if db:
        parser.add_argument("--db", choices=DBS, default="sqlite")
    if as_json:
        parser.add_argument("--json", action="store_true", help="print one JSON document instead")
    return parser


def progress(args: argparse.Namespace) -> Callable[[str], None]:
    """Progress lines: on stdout, or on stderr when stdout holds the JSON document."""

    def log(line: str) -> None:
        print(line, file=sys.stderr if args.json else sys.stdout, flush=True)

    return log


def start(
    parser: argparse.ArgumentParser, *, root: bool = False
) -> tuple[argparse.Namespace, Callable[[str], None]]:
    """The parsed options and the progress function; exits 2 without root when it is needed."""
    args = parser.parse_args()
    if root and not_root():
        raise SystemExit(2)
    return args, progress(args)


def side_by_side(
    count: int,
    measure: Callable[[], M],
    baseline: Callable[[], B],
    log: Callable[[str], None],
    line: Callable[[M, B], str],
) -> tuple[list[M], list[B]]:
    """One warm-up measurement, then `count` rounds of ours followed by its baseline: drift
    and other load hit both alike."""
    measure()
    log("warm-up done")
    ours: list[M] = []
    base: list[B] = []
    for i in range(count):
        ours.append(measure())
        base.append(baseline())
        log(f"round {i + 1}/{count}: {line(ours[-1], base[-1])}")
    return ours, base


def not_root() -> bool:
    """True (and says so) when the benchmark cannot load eBPF programs."""
    if os.geteuid() == 0:
        return False
    print("needs root (eBPF)", file=sys.stderr)
    return True


def median(values: Iterable[float | None]) -> float | None:
    """The median of the values that were measured (None: that sample has none)."""
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def machine(**fields: Any) -> dict[str, Any]:
    """`fields`, then the kernel, the CPUs and the time of the run."""
    return {
        **fields,
        "kernel": os.uname().release,
        "cpus": os.cpu_count(),
        "at": datetime.now().isoformat(timespec="seconds"),
    }


@contextlib.contextmanager
def scratch(prefix: str) -> Iterator[Path]:
    """A temp dir for the benchmark's stack; on failure the end of every log it holds is
    printed first; removed in any case."""
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield workdir
    except BaseException:
        print_log_tails(workdir)
        raise
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def print_log_tails(workdir: Path, lines: int = 40) -> None:
    """After a failure: the end of every *.log the stack wrote, on stderr."""
    for path in sorted(workdir.glob("*.log")):
        tail = path.read_text(errors="replace").splitlines()[-lines:]
        sys.stderr.write(f"--- {path.name} (last {len(tail)} lines)\n" + "\n".join(tail) + "\n")


def finish(
    args: argparse.Namespace, summary: dict[str, Any], print_table: Callable[[Any], None]
) -> int:
    """The JSON document with --json, else the table; the exit code."""
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print_table(summary)
    return 0
