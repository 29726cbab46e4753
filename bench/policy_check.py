"""What the agent's policy adds to starting a trace: helper check, source check, seccomp filter.

For every catalog program (and the custom example from program_costs.py), the same run
compiles it with bcc without loading anything (the baseline: what every trace pays anyway),
then times the helper allowlist check over the compiled bytecode of all its functions, and
the source check of the custom program; the ratio is check time over compile time. The
seccomp filter is installed once per trace process; its cost is timed in a fresh process.

    sudo .venv/bin/python bench/policy_check.py [--repeat 2000]
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from typing import Any

import _main
from program_costs import CUSTOM_SOURCE

from node_agent.programs import catalog
from node_agent.programs.custom.source_policy import check_source
from node_agent.protocol import MapDecl, MapKind, TraceRequest
from node_agent.runtime.bcc_runtime import _functions
from node_agent.runtime.helpers import check_functions
from node_agent.trace import prepare

SECCOMP_SCRIPT = r"""
import time
from node_agent.runtime.sandbox import forbid_pinned_objects
t = time.perf_counter()
forbid_pinned_objects()
print((time.perf_counter() - t) * 1e6)
"""


def request(name: str) -> TraceRequest:
    if name == "custom":
        maps = [MapDecl(name="counts", kind=MapKind.counter)]
        return TraceRequest(run_id="b", program=name, duration_s=1, source=CUSTOM_SOURCE, maps=maps)
    return TraceRequest(run_id="b", program=name, duration_s=1)


def compiled(source: str, cflags: list[str]) -> tuple[Any, float]:
    """A compiled module with nothing loaded, and the seconds the compile took."""
    from bcc import BPF

    class CompileOnly(BPF):  # type: ignore[misc]
        def _trace_autoload(self) -> None:
            pass

    start = time.perf_counter()
    bpf = CompileOnly(text=source.encode(), cflags=cflags)
    return bpf, time.perf_counter() - start


def main() -> int:
    parser = _main.options(__doc__, as_json=False)
    parser.add_argument("--repeat", type=int, default=2000)
    args = parser.parse_args()
    print(f"policy check vs compile, same run; check = median of {args.repeat} repeats")
    header = ("program", "insns", "calls", "compile ms", "check us", "ratio")
    print(f"{header[0]:<16} " + " ".join(f"{h:>10}" for h in header[1:]))
    ratios = []
    for name in sorted(catalog()):
        prepared = prepare(request(name), allow_custom=True)
        bpf, compile_s = compiled(prepared.source, prepared.cflags)
        functions = list(_functions(bpf))
        insns = sum(len(code) // 8 for _, code in functions)
        calls = check_functions(functions)
        times = []
        for _ in range(args.repeat):
            start = time.perf_counter()
            check_functions(functions)
            times.append(time.perf_counter() - start)
        check_s = statistics.median(times)
        ratios.append(check_s / compile_s)
        print(
            f"{name:<16} {insns:>10} {calls:>10} {compile_s * 1e3:>10.1f} {check_s * 1e6:>10.1f}"
            f" {check_s / compile_s:>10.2e}"
        )
        bpf.cleanup()
    times = []
    for _ in range(args.repeat):
        start = time.perf_counter()
        check_source(CUSTOM_SOURCE)
        times.append(time.perf_counter() - start)
    print(f"source check of the custom example: {statistics.median(times) * 1e6:.1f} us")
    seccomp = [
        float(
            subprocess.run(
                [sys.executable, "-c", SECCOMP_SCRIPT], capture_output=True, text=True, check=True
            ).stdout
        )
        for _ in range(5)
    ]
    median = statistics.median(seccomp)
    print(f"seccomp filter install, median of 5 processes: {median:.0f} us")
    print(f"largest check/compile ratio: {max(ratios):.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
