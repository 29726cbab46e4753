"""The README's first command on a machine that looks fresh: no kernel build tree, no sudo.

It runs exactly what the README says, in a private mount namespace with an empty tmpfs over
/lib/modules and a PATH without sudo, twice: the first run must set the headers up and show
the fleet side by side with its outliers; the second (right after, as a newcomer would) must
be as good and its setup silent.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from devstack.harness import clean_env
from tests.helpers import run_in_own_mounts

pytestmark = [pytest.mark.root, pytest.mark.bcc]

REPO = Path(__file__).resolve().parents[2]


def readme_commands() -> list[str]:
    """The commands of the README's "two commands" block, comments dropped."""
    text = (REPO / "README.md").read_text()
    section = text.split("## The two commands", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block, "the README's two-commands section has no sh block"
    return [line.split("#", 1)[0].strip() for line in block.group(1).splitlines() if line.strip()]


def test_the_readme_names_the_demo_and_the_tests_plainly() -> None:
    first, second = readme_commands()
    assert first == "bash scripts/demo.sh"
    assert second == "bash scripts/test.sh"
    assert (REPO / ".ci" / "run").read_text().count("bash scripts/test.sh") == 1


def _path_without_sudo(root: Path) -> str:
    """A PATH with every command of this machine's PATH except sudo (symlinks)."""
    dirs = []
    for d in ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"):
        src = Path(d)
        if not src.is_dir() or src.is_symlink():
            continue
        dst = root / d.strip("/").replace("/", "_")
        dst.mkdir(parents=True)
        for entry in src.iterdir():
            if entry.name != "sudo":
                (dst / entry.name).symlink_to(entry)
        dirs.append(str(dst))
    return ":".join(dirs)


def test_the_first_command_works_on_a_fresh_machine_twice(tmp_path: Path) -> None:
    first = readme_commands()[0]
    path = _path_without_sudo(tmp_path / "bin")
    out = tmp_path / "out"
    out.mkdir()
    script = tmp_path / "fresh.sh"
    script.write_text(
        "\n".join(
            [
                "set -u",
                "mount -t tmpfs tmpfs /lib/modules",
                f"export PATH={shlex.quote(path)}",
                "if command -v sudo; then echo 'sudo is on PATH' >&2; exit 9; fi",
                f"cd {shlex.quote(str(REPO))}",
                f"{first} >{out}/1.out 2>{out}/1.err; echo $? >{out}/1.rc",
                f"{first} >{out}/2.out 2>{out}/2.err; echo $? >{out}/2.rc",
            ]
        )
        + "\n"
    )
    run_in_own_mounts(script, clean_env(), timeout_s=900)

    for run in ("1", "2"):
        rc = int((out / f"{run}.rc").read_text())
        stdout = (out / f"{run}.out").read_text()
        stderr = (out / f"{run}.err").read_text()
        assert rc == 0, f"run {run} exited {rc}:\n{stderr[-3000:]}\n{stdout[-3000:]}"
        # Side by side: a table with every demo host, and the report's outlier sentences.
        assert re.search(r"^SYSCALL\s+db-1\s+web-1\s+web-2\s+TOTAL$", stdout, re.M), stdout
        assert "report: outliers, strongest first" in stdout
        assert re.search(r"^  (web|db)-\d: .* the fleet median", stdout, re.M), stdout
        assert "dev: stack down: no processes, namespaces, links or cgroups left" in stderr
    first_err = (out / "1.err").read_text() + (out / "1.out").read_text()
    if not Path("/sys/kernel/kheaders.tar.xz").exists():  # else bcc needs no build tree
        assert "setup: warning: no headers for kernel" in first_err or "setup: linking" in first_err
    second = (out / "2.out").read_text() + (out / "2.err").read_text()
    assert not [line for line in second.splitlines() if line.startswith("setup:")], second
