"""fleettrace: run the controller, and talk to it."""

from __future__ import annotations

from typing import Any

__all__ = ["main"]


def __getattr__(name: str) -> Any:
    # Lazy: library modules (controller/kinds) use cli.text without loading every command.
    if name == "main":
        from controller.cli.main import main

        globals()["main"] = main  # the import bound the submodule to this name
        return main
    raise AttributeError(name)
