"""The ``memproxy`` command line: thin typer commands (:mod:`.commands`) over one task each (:mod:`.tasks`)."""

from proxy.cli.commands import app, main

__all__ = ["app", "main"]
