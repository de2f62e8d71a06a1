"""The floor plan stays readable: no module over 400 lines, no cli/ module over 300 (ARCHITECTURE.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "keybuzz_fix"
MODULES = sorted(PACKAGE.rglob("*.py"))


def _limit(path: Path) -> int:
    return 300 if path.parent.name == "cli" else 400


def test_the_package_has_modules() -> None:
    assert len(MODULES) > 40


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_module_length(path: Path) -> None:
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= _limit(path), f"{path.relative_to(PACKAGE.parent)}: {lines} lines (at most {_limit(path)})"
