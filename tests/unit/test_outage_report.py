"""What the operator reads: wording of the report layer (pure, a recording console)."""

from __future__ import annotations

from rich.console import Console

from keybuzz_fix.report.changes import ChangeView
from keybuzz_fix.report.output import Output


def _view() -> tuple[ChangeView, Console]:
    console = Console(record=True, width=200, force_terminal=False)
    return ChangeView(console, Output.TEXT, "convert"), console


def test_a_check_before_the_prompt_does_not_call_itself_a_dry_run():
    view, console = _view()
    view.accepted_by_server(8, before_confirm=True)
    text = console.export_text()
    assert text.strip() == "checked: the API server accepted all 8 change(s) (server-side dry run)"
    assert "nothing changed" not in text


def test_a_dry_run_says_nothing_changed():
    view, console = _view()
    view.accepted_by_server(8)
    assert console.export_text().strip() == (
        "dry run: the API server accepted all 8 change(s) (server-side dry run); nothing changed"
    )
