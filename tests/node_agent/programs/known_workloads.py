"""Workloads whose answers are known, for tcpconnlat, offcputime and vfs_latency, and the
checks of a trace's results against them: used on this kernel and inside the 6.1 VM guest.

Each workload is a process that says who it is (a JSON line: pid, comm), waits for "go" on
stdin, does its known work, says "done" and stays until stdin closes (its stacks are then
still there to symbolize).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from node_agent.protocol import CounterTable, FoldedStacks, Log2Histogram, Snapshot

RTO_S = 1.0  # TCP's initial retransmission timeout: a dropped SYN is sent again after it
NAP_MS = 10
NAP_SHORTFALL = 0.95  # of the naps' time, the least offcputime may count (check_naps)
NAP_FUNCTION = "fleettrace_nap"

# argv: port, n. n connects over IPv4 and n over IPv6 loopback to `port`; then 3 to port+1,
# whose listener's accept queue (backlog 1: 2 connections) is full for the third: its first
# SYN is dropped and sent again after the initial RTO, so that connect takes ~1 s.
CONNECTS = r"""
import json, os, select, socket, sys, time
port, n = int(sys.argv[1]), int(sys.argv[2])
comm = open("/proc/self/comm").read().strip()
print(json.dumps({"pid": os.getpid(), "comm": comm}), flush=True)
sys.stdin.readline()
for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
    server = socket.socket(family)
    server.bind((host, port))
    server.listen(64)
    for _ in range(n):
        client = socket.create_connection((host, port))
        server.accept()[0].close()
        client.close()
    server.close()
server = socket.socket()
server.bind(("127.0.0.1", port + 1))
server.listen(1)
fillers = [socket.create_connection(("127.0.0.1", port + 1)) for _ in range(2)]
time.sleep(0.2)
slow = socket.socket()
slow.setblocking(False)
slow.connect_ex(("127.0.0.1", port + 1))
time.sleep(0.3)
accepted = [server.accept()[0] for _ in range(2)]
select.select([], [slow], [], 10)
print(json.dumps({"done": True, "error": slow.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)}),
      flush=True)
sys.stdin.readline()
"""

# argv: n. n naps of NAP_MS in NAP_FUNCTION, whose own syscall instruction keeps it on the
# user stack (libc's nanosleep has no frame pointer: unwinding from it would skip the caller).
NAPS_C = f"""
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

__attribute__((noinline)) long {NAP_FUNCTION}(const struct timespec *ts) {{
    long ret;
    __asm__ volatile("syscall" : "=a"(ret) : "a"(35L), "D"(ts), "S"(0L)
                     : "rcx", "r11", "memory");
    return ret;
}}

int main(int argc, char **argv) {{
    char line[16];
    int n = argc > 1 ? atoi(argv[1]) : 50;
    struct timespec ts = {{0, {NAP_MS} * 1000 * 1000}};
    char comm[32] = {{0}};
    FILE *f = fopen("/proc/self/comm", "r");
    if (f) {{ if (fgets(comm, sizeof comm, f)) comm[strcspn(comm, "\\n")] = 0; fclose(f); }}
    printf("{{\\"pid\\": %d, \\"comm\\": \\"%s\\"}}\\n", getpid(), comm);
    fflush(stdout);
    if (!fgets(line, sizeof line, stdin))
        return 1;
    for (int i = 0; i < n; i++)
        {NAP_FUNCTION}(&ts);
    puts("{{\\"done\\": true}}");
    fflush(stdout);
    return fgets(line, sizeof line, stdin) ? 0 : 0;
}}
"""

# argv: path, reads, writes. On a file of a tmpfs: `reads` 1-byte reads, `writes` 1-byte
# writes (os.read/os.write: one vfs_read/vfs_write each).
FILE_IO = r"""
import json, os, sys
path, reads, writes = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
os.write(fd, b"x" * 4096)
comm = open("/proc/self/comm").read().strip()
print(json.dumps({"pid": os.getpid(), "comm": comm}), flush=True)
sys.stdin.readline()
for i in range(reads):
    os.lseek(fd, i % 4096, 0)
    os.read(fd, 1)
for i in range(writes):
    os.write(fd, b"y")
print(json.dumps({"done": True}), flush=True)
sys.stdin.readline()
"""


@dataclass
class Workload:
    """A started workload process: who it is, and how to start and end its work."""

    proc: subprocess.Popen[str]
    pid: int
    comm: str

    def go(self) -> dict[str, object]:
        """Start the work and wait until it is done; what it said when done."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        said: dict[str, object] = json.loads(self.proc.stdout.readline() or "{}")
        return said

    def end(self) -> None:
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


@contextmanager
def started(argv: Sequence[str]) -> Iterator[Workload]:
    proc = subprocess.Popen(list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        me = json.loads(proc.stdout.readline())
        workload = Workload(proc, int(me["pid"]), str(me["comm"]))
        yield workload
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


@contextmanager
def netns(name: str) -> Iterator[str]:
    """A network namespace of our own with loopback up; deleted afterwards."""
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False)


def connects_argv(netns: str | None, port: int, n: int) -> list[str]:
    prefix = ["ip", "netns", "exec", netns] if netns else []
    return [*prefix, sys.executable, "-c", CONNECTS, str(port), str(n)]


def naps_binary(directory: Path) -> Path:
    """NAPS_C built with frame pointers and symbols, as `ft_naps` in `directory`."""
    src = directory / "ft_naps.c"
    src.write_text(NAPS_C)
    out = directory / "ft_naps"
    cmd = ["gcc", "-O0", "-g", "-fno-omit-frame-pointer", "-include", "string.h"]
    subprocess.run([*cmd, "-o", str(out), str(src)], check=True)
    return out


def file_io_argv(tmpfs: Path, reads: int, writes: int) -> list[str]:
    """FILE_IO on a fresh tmpfs mounted at `tmpfs` in a mount namespace of its own."""
    script = (
        f'mount -t tmpfs ft-vfs-test {tmpfs} && exec {sys.executable} -c "$0" '
        f"{tmpfs}/data {reads} {writes}"
    )
    return ["unshare", "-m", "--propagation", "private", "sh", "-c", script, FILE_IO]


def _table(snapshot: Snapshot, name: str) -> CounterTable | None:
    tables = (r for r in snapshot.results if isinstance(r, CounterTable))
    return next((t for t in tables if t.name == name), None)


def _rows(table: CounterTable) -> list[dict[str, object]]:
    names = [f.name for f in table.key_fields] + list(table.value_fields)
    return [dict(zip(names, [*keys, *values], strict=True)) for keys, values in table.rows]


def check_connects(snapshot: Snapshot, pid: int, comm: str, port: int, n: int) -> list[str]:
    """What is wrong in tcpconnlat's answer to CONNECTS (empty: right)."""
    table = _table(snapshot, "connects")
    if table is None:
        return ["no connects table"]
    rows = [r for r in _rows(table) if r["pid"] == pid]
    problems = []
    for daddr, dport, count in (("127.0.0.1", port, n), ("::1", port, n)):
        got = sum(int(str(r["count"])) for r in rows if (r["daddr"], r["dport"]) == (daddr, dport))
        if got != count:
            problems.append(f"{daddr}:{dport}: {got} connects, not {count}")
    slow = [r for r in rows if (r["daddr"], r["dport"]) == ("127.0.0.1", port + 1)]
    if [int(str(r["count"])) for r in slow] != [3]:
        problems.append(f"127.0.0.1:{port + 1}: {slow}, not one row of 3 connects")
    else:
        total_us = int(str(slow[0]["total_us"]))
        # One connect waited for the RTO: at least 1 s, and not a second RTO (3 s).
        if not RTO_S * 1e6 <= total_us < 2.5 * RTO_S * 1e6:
            problems.append(f"127.0.0.1:{port + 1}: {total_us} us in all, not in [1 s, 2.5 s)")
    if any(r["comm"] != comm for r in rows):
        problems.append(f"comm is not {comm!r}: {rows}")
    hists = [
        r
        for r in snapshot.results
        if isinstance(r, Log2Histogram) and r.labels == {"daddr": "127.0.0.1", "dport": port + 1}
    ]
    slow_buckets = [(slot, c) for h in hists for slot, c in h.buckets if slot >= 19]
    if sum(c for _, c in slow_buckets) != 1:  # 2**19 us = 0.52 s
        problems.append(f"histogram of 127.0.0.1:{port + 1}: {hists}, not one ~1 s connect")
    return problems


def nap_total_us(stacks: FoldedStacks) -> int:
    return sum(s.count for s in stacks.stacks if any(f.startswith(NAP_FUNCTION) for f in s.frames))


def check_naps(snapshot: Snapshot, comm: str, n: int) -> list[str]:
    """What is wrong in offcputime's answer to NAPS_C (empty: right)."""
    stacks = next((r for r in snapshot.results if isinstance(r, FoldedStacks)), None)
    if stacks is None:
        return ["no folded stacks"]
    total = nap_total_us(stacks)
    want = n * NAP_MS * 1000
    # A nap never ends early, and waking late (timer slack, a busy or emulated CPU) adds a
    # little. But blocked time can fall short of it: a task preempted after arming its timer
    # and before it blocks waits runnable first, which offcputime (without `preempted`) does
    # not count. On a loaded CI machine: 495,699 us of 500,000.
    low, high = want * NAP_SHORTFALL, want * 1.5
    problems = []
    if not low <= total <= high:
        # Where the rest went (a nap whose user stack was not captured, say), to judge by.
        others = [s for s in stacks.stacks if not any(f.startswith(NAP_FUNCTION) for f in s.frames)]
        elsewhere = "; ".join(f"{';'.join(s.frames)} {s.count}" for s in others[:5])
        problems.append(
            f"{total} us in {NAP_FUNCTION}, not in [{low:g}, {high:g}];"
            f" other stacks: {elsewhere or 'none'}"
        )
    if stacks.unit != "usec":
        problems.append(f"unit {stacks.unit}")
    if {s.frames[0] for s in stacks.stacks} - {comm}:
        problems.append(f"stacks of other processes: {stacks.folded()[:5]}")
    return problems


def check_file_io(snapshot: Snapshot, reads: int, writes: int) -> list[str]:
    """What is wrong in vfs_latency's answer to FILE_IO (empty: right)."""
    table = _table(snapshot, "vfs_ops")
    if table is None:
        return ["no vfs_ops table"]
    rows = {(r["fs"], r["op"]): int(str(r["count"])) for r in _rows(table)}
    problems = []
    for op, want in (("read", reads), ("write", writes)):
        if rows.get(("tmpfs", op)) != want:
            problems.append(f"tmpfs {op}: {rows.get(('tmpfs', op))}, not {want} (rows {rows})")
    hists = [r for r in snapshot.results if isinstance(r, Log2Histogram)]
    by_labels = {(h.labels.get("fs"), h.labels.get("op")): h.total for h in hists}
    if by_labels.get(("tmpfs", "read")) != reads:
        problems.append(f"tmpfs read histogram holds {by_labels.get(('tmpfs', 'read'))}")
    return problems


Check = Callable[[Snapshot], list[str]]
