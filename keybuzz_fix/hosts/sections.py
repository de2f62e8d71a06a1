"""Probe output: one marker format and one splitter for every script the tool runs on a node.

A probe (a remote script that reads facts) prints what it finds in sections, each opened by a line
``@@keybuzz-fix@@ <name>`` (:func:`section_header` writes the command that prints it);
:func:`split_sections` cuts the output back into them for the probe's pure parser. The apply
script of a UFW change marks each command's exit status the same way (``@@keybuzz-fix@@ apply
<index> <status>``). A probe that prints a file's lines puts them behind a ``|``, so that none can
pass for a section header.
"""

from __future__ import annotations

MARK = "@@keybuzz-fix@@"


def section_header(name: str) -> str:
    """Return the shell command that opens section ``name`` of a probe's output."""
    return f"echo '{MARK} {name}'"


def section_name(line: str) -> str | None:
    """Return the name of the section ``line`` opens, or ``None`` when it is a line of output."""
    return line[len(MARK) :].strip() if line.startswith(MARK) else None


def split_sections(text: str) -> dict[str, list[str]]:
    """Split probe output into its sections; a later section of the same name replaces an earlier one.

    Lines before the first header are not part of any section. Only ``\\n`` ends a line: a carriage
    return inside a UFW comment is part of the comment.
    """
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.split("\n"):
        name = section_name(line)
        if name is not None:
            current = sections[name] = []
        elif current is not None:
            current.append(line)
    return sections
