"""Which kernel helpers a program may call, checked in its bytecode before anything loads.

An allowlist of read-only tracing helpers, in the spirit of Inspektor Gadget's read-only
preset: read memory and the current task, keep state in the program's own maps, send events
to the program's own buffers. Anything else (writing user memory, overriding returns,
signals, packet writers, bpf syscalls from bpf, the global trace pipe, timers, tail calls,
kfuncs) is refused, and so is a helper newer than our table.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass

from node_agent.errors import PolicyViolation
from node_agent.runtime.helper_ids import HELPER_NAMES

ALLOWED_HELPERS = frozenset(
    {
        # the program's own maps
        "map_lookup_elem",
        "map_update_elem",
        "map_delete_elem",
        "map_push_elem",
        "map_pop_elem",
        "map_peek_elem",
        # reading memory
        "probe_read",
        "probe_read_str",
        "probe_read_user",
        "probe_read_user_str",
        "probe_read_kernel",
        "probe_read_kernel_str",
        # clocks, CPU, randomness
        "ktime_get_ns",
        "ktime_get_boot_ns",
        "ktime_get_coarse_ns",
        "jiffies64",
        "get_smp_processor_id",
        "get_numa_node_id",
        "get_prandom_u32",
        # the current task
        "get_current_pid_tgid",
        "get_current_uid_gid",
        "get_current_comm",
        "get_current_task",
        "get_current_task_btf",
        "get_current_cgroup_id",
        "get_current_ancestor_cgroup_id",
        "get_ns_current_pid_tgid",
        "current_task_under_cgroup",
        "task_pt_regs",
        # stacks
        "get_stackid",
        "get_stack",
        "get_task_stack",
        # the probe's own context
        "get_func_ip",
        "get_attach_cookie",
        "get_func_arg",
        "get_func_ret",
        "get_func_arg_cnt",
        # out to the program's own buffers and counters
        "perf_event_output",
        "perf_event_read",
        "perf_event_read_value",
        "perf_prog_read_value",
        "ringbuf_output",
        "ringbuf_reserve",
        "ringbuf_submit",
        "ringbuf_discard",
        "ringbuf_query",
        # pure functions on the program's own memory
        "strncmp",
        "snprintf",
    }
)

# bcc auto-attaches functions by name; these kinds return verdicts the kernel acts on.
DECIDING_PREFIXES = ("lsm__",)
CALL = 0x85  # BPF_JMP | BPF_CALL
LD_IMM64 = 0x18  # takes two instruction slots
HELPER, BPF_TO_BPF, KFUNC = 0, 1, 2  # a call's src_reg
INSN = struct.Struct("<BBhi")


@dataclass(frozen=True)
class Call:
    function: str
    kind: int
    target: int

    def describe(self) -> str:
        if self.kind == HELPER:
            return f"helper bpf_{helper_name(self.target)}"
        if self.kind == KFUNC:
            return f"kfunc call (BTF id {self.target})"
        return f"call of kind {self.kind}"


def helper_name(helper_id: int) -> str:
    return HELPER_NAMES.get(helper_id, f"#{helper_id}")


def calls(function: str, code: bytes) -> list[Call]:
    """The call instructions of one function's bytecode."""
    out: list[Call] = []
    offset = 0
    while offset + INSN.size <= len(code):
        opcode, regs, _, imm = INSN.unpack_from(code, offset)
        if opcode == CALL:
            out.append(Call(function, regs >> 4, imm))
        offset += 2 * INSN.size if opcode == LD_IMM64 else INSN.size
    return out


def allowed(call: Call) -> bool:
    if call.kind == HELPER:
        return HELPER_NAMES.get(call.target) in ALLOWED_HELPERS
    # A call into the same program is fine (its own calls are checked too); kfuncs (kind 2)
    # and unknown kinds are not: none is read-only by contract.
    return call.kind == BPF_TO_BPF


def check_functions(functions: Iterable[tuple[str, bytes]]) -> int:
    """Refuse a program that calls anything off the allowlist; returns the calls checked."""
    checked = 0
    for function, code in functions:
        if function.startswith(DECIDING_PREFIXES):
            raise PolicyViolation(
                f"{function}: an LSM program decides what the kernel allows; this agent loads"
                " only programs that observe"
            )
        for call in calls(function, code):
            checked += 1
            if not allowed(call):
                raise PolicyViolation(
                    f"{call.describe()} is not allowed (called in {function}): this agent"
                    " loads only read-only tracing helpers",
                    detail="allowed helpers: "
                    + ", ".join(f"bpf_{name}" for name in sorted(ALLOWED_HELPERS)),
                )
    return checked
