"""The command line: Typer commands that parse options, build the connections and call a flow."""

from keybuzz_fix.cli.cluster import app, main

__all__ = ["app", "main"]
