"""The program catalog: every sub-package here with a SPEC is a program.

Adding a program is adding one folder: `__init__.py` with SPEC, and its `program.c`.
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache

from node_agent.errors import UnknownProgram
from node_agent.programs.spec import ProgramSpec


@cache
def catalog() -> dict[str, ProgramSpec]:
    specs: dict[str, ProgramSpec] = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        if not info.ispkg:
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        spec = getattr(module, "SPEC", None)
        if isinstance(spec, ProgramSpec):
            specs[spec.name] = spec
    return specs


def get_program(name: str) -> ProgramSpec:
    try:
        return catalog()[name]
    except KeyError:
        known = ", ".join(catalog())
        raise UnknownProgram(f"unknown program {name!r} (known: {known})") from None
