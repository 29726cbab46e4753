"""fleettrace: run the controller, and talk to it."""

from controller.cli.main import main

__all__ = ["main"]
