"""Decoders of runqlat, syscall_latency and biolatency on fake map entries (no bcc, no root)."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace as Key
from typing import Any

import pytest

from node_agent.errors import BadParameter
from node_agent.programs import biolatency, runqlat, syscall_latency
from node_agent.programs.biolatency.disks import disk_name, split_dev
from node_agent.programs.decode import syscall_name
from node_agent.programs.runqlat.cgroups import CgroupNames
from node_agent.programs.spec import DecodeContext, ProgramSpec
from node_agent.protocol import Limits


class FakeProgram:
    """Just enough of a LoadedProgram for decoders: fixed map contents."""

    def __init__(self, maps: dict[str, list[tuple[Any, int]]]) -> None:
        self.maps = maps

    def items(self, table: str) -> list[tuple[Any, int]]:
        return self.maps[table]


def _decode(spec: ProgramSpec, maps: dict[str, list[tuple[Any, int]]], **params: Any) -> list[Any]:
    program: Any = FakeProgram(maps)
    return spec.decode(DecodeContext(program, spec.validate_params(params), Limits()))


def test_runqlat_per_pid_groups_by_process_and_merges_slots() -> None:
    entries = [
        (Key(tgid=10, comm=b"web\0\0", cgroup=0, slot=3), 5),
        (Key(tgid=10, comm=b"web\0\0", cgroup=0, slot=4), 2),
        (Key(tgid=11, comm=b"db\0", cgroup=0, slot=3), 1),
        (Key(tgid=12, comm=b"idle", cgroup=0, slot=3), 0),  # empty counts are dropped
    ]
    hists = _decode(runqlat.SPEC, {"runqlat": entries}, per="pid", unit="msec")
    assert [(h.labels, h.unit, h.buckets) for h in hists] == [
        ({"pid": 10, "comm": "web"}, "msec", [(3, 5), (4, 2)]),
        ({"pid": 11, "comm": "db"}, "msec", [(3, 1)]),
    ]


def test_runqlat_per_none_is_one_unlabelled_histogram() -> None:
    entries = [(Key(tgid=0, comm=b"", cgroup=0, slot=s), 1) for s in (1, 1, 2)]
    (hist,) = _decode(runqlat.SPEC, {"runqlat": entries})
    assert (hist.name, hist.unit, hist.labels, hist.buckets) == (
        "runqlat",
        "usec",
        {},
        [(1, 2), (2, 1)],
    )


def test_runqlat_per_cgroup_names_groups_by_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "svc" / "web").mkdir(parents=True)
    web = os.stat(tmp_path / "svc" / "web").st_ino
    monkeypatch.setattr(runqlat, "cgroup2_mount", lambda: tmp_path)
    entries = [
        (Key(tgid=0, comm=b"", cgroup=web, slot=2), 3),
        (Key(tgid=0, comm=b"", cgroup=7, slot=2), 1),
    ]
    hists = _decode(runqlat.SPEC, {"runqlat": entries}, per="cgroup")
    assert [h.labels for h in hists] == [
        {"cgroup_id": web, "cgroup": "/svc/web"},
        {"cgroup_id": 7, "cgroup": "cgroup_7"},  # gone, or outside the walk: named by id
    ]


def test_cgroup_names_walks_once_and_bounds_the_walk(tmp_path: Path) -> None:
    for name in ("a", "b", "c"):
        (tmp_path / name).mkdir()
    names = CgroupNames(tmp_path)
    assert names(os.stat(tmp_path).st_ino) == "/"
    assert names(os.stat(tmp_path / "b").st_ino) == "/b"
    (tmp_path / "d").mkdir()
    assert names(os.stat(tmp_path / "d").st_ino).startswith("cgroup_")  # walked already
    assert CgroupNames(None)(5) == "cgroup_5"
    bounded = CgroupNames(tmp_path, max_dirs=2)  # the root and one more
    known = [n for n in "abcd" if not bounded(os.stat(tmp_path / n).st_ino).startswith("cgroup_")]
    assert len(known) == 1


def test_syscall_latency_labels_by_syscall_name() -> None:
    entries = [(Key(nr=39, slot=1), 7), (Key(nr=39, slot=2), 1), (Key(nr=0, slot=5), 2)]
    hists = _decode(syscall_latency.SPEC, {"latency": entries}, unit="nsec")
    assert [(h.labels, h.unit, h.buckets) for h in hists] == [
        ({"syscall": syscall_name(39)}, "nsec", [(1, 7), (2, 1)]),
        ({"syscall": syscall_name(0)}, "nsec", [(5, 2)]),
    ]


def test_syscall_latency_filter_translates_names(monkeypatch: pytest.MonkeyPatch) -> None:
    table = {"read": 0, "getppid": 110, "exit": 60, "exit_group": 231}
    monkeypatch.setattr(syscall_latency, "syscall_numbers", lambda: table)
    spec = syscall_latency.SPEC
    defines = spec.defines(spec.validate_params({"syscall": "getppid", "unit": "nsec"}))
    assert defines == {
        "FT_UNIT_DIV": 1,
        "FT_NR_EXIT": 60,
        "FT_NR_EXIT_GROUP": 231,
        "FT_SYSCALL_NR": 110,
    }
    assert "FT_SYSCALL_NR" not in spec.defines(spec.validate_params({}))
    for bad in ("getpid", "exit"):
        with pytest.raises(BadParameter) as err:
            spec.defines(spec.validate_params({"syscall": bad}))
        assert err.value.field == "params.syscall"


def test_split_dev_uses_the_kernel_encoding() -> None:
    assert split_dev((254 << 20) | 3) == (254, 3)
    assert split_dev((8 << 20) | 0xFFFFF) == (8, 0xFFFFF)


def test_disk_name_reads_devname_or_falls_back(tmp_path: Path) -> None:
    (tmp_path / "254:0").mkdir()
    (tmp_path / "254:0" / "uevent").write_text("MAJOR=254\nMINOR=0\nDEVNAME=vda\nDEVTYPE=disk\n")
    assert disk_name(254 << 20, tmp_path) == "vda"
    assert disk_name((8 << 20) | 16, tmp_path) == "8:16"


def test_biolatency_per_disk_and_for_all(tmp_path: Path) -> None:
    for dev, name in (("254:0", "vda"), ("259:0", "nvme0n1")):
        (tmp_path / dev).mkdir()
        (tmp_path / dev / "uevent").write_text(f"DEVNAME={name}\n")
    labels = biolatency.labels_of(True, tmp_path)
    assert labels(Key(dev=259 << 20, slot=1)) == {"disk": "nvme0n1"}
    assert biolatency.labels_of(False)(Key(dev=259 << 20, slot=1)) == {}
    entries = [(Key(dev=0, slot=6), 4), (Key(dev=0, slot=7), 1)]
    (hist,) = _decode(biolatency.SPEC, {"biolatency": entries}, per_disk=False, unit="msec")
    assert (hist.labels, hist.unit, hist.buckets) == ({}, "msec", [(6, 4), (7, 1)])
