"""Hints that name an option: shown only when the command that runs has that option.

The same plan or error text is printed by several commands (``convert``'s plan also by ``all``;
an API conflict by every command that applies). A hint such as "--show-values reveals them" is
worth something only where ``--show-values`` exists: :func:`hint` asks the running command
(click's current context) and leaves the hint out, or says something else, elsewhere.
"""

from __future__ import annotations


def offered(option: str) -> bool:
    """Whether the running command accepts ``option`` (outside the command line, e.g. a library call: yes)."""
    import click

    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return True
    return any(option in p.opts or option in p.secondary_opts for p in ctx.command.params)


def hint(option: str, text: str, otherwise: str = "") -> str:
    """Return ``text`` (which names ``option``) if the running command has that option, else ``otherwise``."""
    return text if offered(option) else otherwise
