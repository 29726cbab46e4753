"""The real runtime: bcc from the distro, with compiler and verifier output captured."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import re
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from node_agent.errors import (
    AttachError,
    FleettraceError,
    PolicyViolation,
    ProgramCompileError,
    UnsupportedProgram,
    VerifierRejected,
)
from node_agent.headers.probe import Headers, compile_note, layout_defines, unsupported_reason
from node_agent.overhead import OverheadMeter
from node_agent.runtime.base import EventCallback
from node_agent.runtime.compiler_output import filter_diagnostics
from node_agent.runtime.helpers import check_functions

log = logging.getLogger(__name__)
PINNED = re.compile(r"failed to pin map: (\S+?),? error: Operation not permitted")


@contextlib.contextmanager
def captured_stderr() -> Iterator[Callable[[], str]]:
    """Redirect fd 2 (where libbcc and LLVM write) to a file while the block runs.

    An anonymous memory file: it needs no readable directory (see runtime.sandbox)."""
    with os.fdopen(os.memfd_create("compiler-output", os.MFD_CLOEXEC), "w+b") as sink:
        saved = os.dup(2)
        try:
            os.dup2(sink.fileno(), 2)
            yield lambda: _read_all(sink)
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def _read_all(sink: Any) -> str:
    sink.flush()
    sink.seek(0)
    data: bytes = sink.read()
    return data.decode("utf-8", "replace")


def _classify(exc: Exception, output: str) -> Exception:
    message = str(exc)
    log_text = filter_diagnostics(output)
    pinned = PINNED.search(log_text)
    if pinned:  # the sandbox refused bpf(BPF_OBJ_GET/BPF_OBJ_PIN): see runtime.sandbox
        return PolicyViolation(
            f"pinned maps are not allowed (the program names {pinned.group(1)})",
            detail=log_text,
        )
    if "Failed to compile" in message:
        return ProgramCompileError("the C source did not compile", detail=log_text or message)
    if "Failed to load BPF program" in message:
        return VerifierRejected(
            f"the kernel verifier rejected the program: {message.split(': ', 1)[-1]}",
            detail=log_text or message,
        )
    if "Failed to attach" in message or "attach" in message.lower():
        return AttachError(message, detail=log_text or None)
    return ProgramCompileError(message, detail=log_text or None)


class BccProgram:
    """A loaded bcc module; see runtime.base.LoadedProgram."""

    def __init__(self, bpf: Any) -> None:
        self._bpf = bpf
        self._closed = False

    def items(self, table: str) -> list[tuple[Any, Any]]:
        from bcc import table as bcc_table

        t = self._bpf[table]
        percpu = isinstance(t, bcc_table.PerCpuHash | bcc_table.PerCpuArray)
        pairs: list[tuple[Any, Any]]
        try:
            pairs = list(t.items_lookup_batch())
        except Exception:
            pairs = list(t.items())
        if percpu:
            return [(k, _sum_percpu(v)) for k, v in pairs]
        return pairs

    def stack(self, table: str, stack_id: int) -> list[int]:
        if stack_id < 0:
            return []
        try:
            return [int(a) for a in self._bpf[table].walk(stack_id)]
        except KeyError:
            return []

    def symbolize(self, addr: int, pid: int | None) -> str:
        if pid is None:
            raw: bytes = self._bpf.ksym(addr)
        else:
            raw = self._bpf.sym(addr, pid, show_module=True)
        return raw.decode("utf-8", "replace")

    def open_events(
        self, table: str, on_event: EventCallback, on_lost: Callable[[int], None]
    ) -> None:
        t = self._bpf[table]

        def _cb(cpu: int, data: Any, size: int) -> None:
            on_event(t.event(data))

        t.open_perf_buffer(_cb, page_cnt=64, lost_cb=on_lost)

    def poll_events(self, timeout_ms: int) -> None:
        if self._bpf.perf_buffers:
            self._bpf.perf_buffer_poll(timeout=timeout_ms)
        else:
            time.sleep(timeout_ms / 1000)

    def attach_perf_sample(self, fn: str, frequency_hz: int) -> None:
        from bcc import BPF, PerfSWConfig, PerfType

        with captured_stderr() as output:
            try:
                self._bpf.load_func(fn, BPF.PERF_EVENT)
                self._bpf.attach_perf_event(
                    ev_type=PerfType.SOFTWARE,
                    ev_config=PerfSWConfig.CPU_CLOCK,
                    fn_name=fn,
                    sample_freq=frequency_hz,
                )
            except Exception as exc:
                raise _classify(exc, output()) from exc

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._bpf.cleanup()


def _sum_percpu(values: Any) -> Any:
    first = values[0]
    if isinstance(first, ctypes.Structure):
        return first  # structs are not summed; programs keep per-CPU maps scalar
    return sum(int(v) for v in values)


def _functions(bpf: Any) -> Iterator[tuple[str, bytes]]:
    """Every function of a compiled module with its bytecode, as it would be loaded."""
    from bcc import lib

    for i in range(lib.bpf_num_functions(bpf.module)):
        name: bytes = lib.bpf_function_name(bpf.module, i)
        yield name.decode("utf-8", "replace"), bpf.dump_func(name)


class BccRuntime:
    """Compiles with bcc's clang, loads through the verifier, attaches auto probes.

    `headers`, when known: none refuses every program before it compiles, a failed compile
    with approximate headers says so, and with approximate headers the struct members a
    program reads are placed where the kernel's BTF says (node_agent.headers.probe)."""

    def __init__(self, headers: Headers | None = None) -> None:
        self.headers = headers

    def load(
        self, source: str, cflags: list[str], *, kernel_fields: Mapping[str, str] | None = None
    ) -> tuple[BccProgram, float, float]:
        headers = self.headers
        reason = unsupported_reason(headers) if headers is not None else None
        if reason is not None:
            raise UnsupportedProgram(reason)
        if headers is not None and kernel_fields:
            cflags = [*cflags, *layout_defines(headers, kernel_fields)]
        try:
            return self._load(source, cflags)
        except ProgramCompileError as exc:
            note = compile_note(headers) if headers is not None else None
            if note is None:
                raise
            raise ProgramCompileError(f"{exc.message} ({note})", detail=exc.detail) from exc

    def _load(self, source: str, cflags: list[str]) -> tuple[BccProgram, float, float]:
        from bcc import BPF

        attach_s = 0.0

        class _TimedBPF(BPF):  # type: ignore[misc]
            def _trace_autoload(self) -> None:
                nonlocal attach_s
                # Compiled, nothing loaded yet: the seam where every function's bytecode is
                # checked against the helper allowlist before any of it reaches the kernel.
                try:
                    check_functions(_functions(self))
                except FleettraceError:
                    self.cleanup()
                    raise
                start = time.monotonic()
                try:
                    super()._trace_autoload()
                finally:
                    attach_s = time.monotonic() - start

        start = time.monotonic()
        with captured_stderr() as output:
            try:
                bpf = _TimedBPF(text=source, cflags=cflags)
            except FleettraceError:
                raise
            except Exception as exc:
                raise _classify(exc, output()) from exc
        total = time.monotonic() - start
        log.debug("loaded program in %.3fs (attach %.3fs)", total, attach_s)
        return BccProgram(bpf), total - attach_s, attach_s

    def cost_meter(self) -> OverheadMeter:
        return OverheadMeter.start()
