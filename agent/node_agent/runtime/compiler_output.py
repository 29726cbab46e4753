"""Compiler output with only what concerns the program and the kernel and bcc headers.

clang quotes the offending line of whatever file it was made to read; a diagnostic located
in any other file is dropped whole (location, quoted line, caret), so no error a viewer can
read ever carries a line of, say, /etc/shadow.
"""

from __future__ import annotations

import re

# bcc's in-memory files (the program is /virtual/main.c), clang's pseudo-files, and where
# kernel headers live: a build tree under /lib/modules or /usr/src, bcc's kheaders copy, the
# distro's uapi headers.
ALLOWED_PREFIXES = ("/virtual/", "/lib/modules/", "/usr/src/", "/tmp/kheaders-", "/usr/include/")
PSEUDO_FILES = ("<scratch space>", "<built-in>", "<command line>")
LOCATION = re.compile(
    r"^(?P<path>[^\s:][^:]*):\d+(?::\d+)?: (?:fatal error|error|warning|note|remark): "
)
INCLUDED = re.compile(r"^(?:In file included from|\s+from) (?P<path>[^:]+):\d+")
SUMMARY = re.compile(r"^\d+ (?:warning|error)s?(?: and \d+ (?:warning|error)s?)? generated\.$")


def allowed_location(path: str) -> bool:
    if path in PSEUDO_FILES:
        return True
    return path.startswith(ALLOWED_PREFIXES) and "/../" not in path


def filter_diagnostics(output: str) -> str:
    """The output without diagnostics located in files other than the allowed ones."""
    kept: list[str] = []
    keep = True
    withheld = 0
    for line in output.splitlines():
        location = LOCATION.match(line)
        included = INCLUDED.match(line)
        if location:
            keep = allowed_location(location.group("path"))
            withheld += not keep
            show = keep
        elif included:
            show = allowed_location(included.group("path"))
        elif SUMMARY.match(line):
            keep = show = True
        else:
            show = keep
        if show:
            kept.append(line)
    if withheld:
        kept.append(
            f"({withheld} diagnostic(s) located in files other than the program and the"
            " kernel and bcc headers withheld)"
        )
    return "\n".join(kept)
