"""What ``validate`` shows: the scorecard as a table with its evidence, as JSON, or as JUnit XML for CI."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from keybuzz_fix.checks.scorecard import Scorecard
from keybuzz_fix.errors import ExitCode
from keybuzz_fix.hints import hint
from keybuzz_fix.report.output import STATUS_STYLE, ScoreFormat, print_json, write_stdout

if TYPE_CHECKING:
    from rich.console import Console


def show_scorecard(console: Console, card: Scorecard, output: ScoreFormat, *, note: str = "") -> None:
    """Show the scorecard in the format asked for."""
    if output is ScoreFormat.JSON:
        print_json(scorecard_json(card))
    elif output is ScoreFormat.JUNIT:
        write_stdout(scorecard_junit(card))
    else:
        scorecard_table(console, card, note=note)


def scorecard_table(console: Console, card: Scorecard, *, note: str = "") -> None:
    """Print the scorecard: one row per check with its evidence, then the score."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"keybuzz-fix scorecard — N = {card.workers} workers", title_justify="left")
    for col, kwargs in (
        ("#", {"justify": "right"}),
        ("CHECK", {"ratio": 2}),
        ("RESULT", {}),
        ("EVIDENCE", {"ratio": 3}),
        ("TIME", {"justify": "right"}),
    ):
        table.add_column(col, overflow="fold", **kwargs)
    for c in card.checks:
        table.add_row(
            str(c.number),
            escape(c.name),
            f"[{STATUS_STYLE[c.status]}]{c.status.upper()}[/]",
            escape(c.detail),
            f"{c.seconds:.1f}s",
        )
    console.print(table)
    if card.extended:
        title = hint("--extended", "Per worker (--extended, not counted in the score)", "Per worker (not counted)")
        ext = Table(title=title, title_justify="left")
        for col in ("WORKER", "CHECK", "RESULT", "EVIDENCE"):
            ext.add_column(col, overflow="fold")
        for r in card.extended:
            ext.add_row(r.host, escape(r.check), f"[{STATUS_STYLE[r.status]}]{r.status.upper()}[/]", escape(r.detail))
        console.print(ext)
    verdict = "[bold green]PASS[/]" if card.ok else "[bold red]FAIL[/]"
    need = hint("--strict", "100 % (--strict)", "100 %") if card.strict else f"{card.threshold} %"
    console.print(
        f"Score: {card.passed}/{card.total} = {card.score:.1f} % (pass at ≥ {need}) {verdict}"
        f" in {card.seconds:.1f} s" + (f" — {escape(note)}" if note else "")
    )


def scorecard_json(card: Scorecard) -> dict[str, Any]:
    """Return the scorecard as JSON data (``-o json``)."""
    return {
        "command": "validate",
        "score": round(card.score, 1),
        "passed": card.passed,
        "total": card.total,
        "threshold": card.threshold,
        "strict": card.strict,
        "required": card.required,
        "ok": card.ok,
        "exit_code": int(ExitCode.of(card)),
        "workers": card.workers,
        "seconds": round(card.seconds, 3),
        "checks": [
            {"number": c.number, "name": c.name, "status": c.status, "detail": c.detail, "seconds": round(c.seconds, 3)}
            for c in card.checks
        ],
        "extended": [{"host": r.host, "check": r.check, "status": r.status, "detail": r.detail} for r in card.extended],
    }


def scorecard_junit(card: Scorecard) -> str:
    """Return the scorecard as JUnit XML (``-o junit``): one testcase per check.

    ``--extended`` rows go in a second test suite, so a CI view shows them apart from the score.
    """
    import xml.etree.ElementTree as ET

    root = ET.Element(
        "testsuites",
        name="keybuzz-fix validate",
        tests=str(card.total + len(card.extended)),
        failures=str(card.total - card.passed + sum(not r.passed for r in card.extended)),
        time=f"{card.seconds:.3f}",
    )
    suite = ET.SubElement(
        root,
        "testsuite",
        name="scorecard",
        tests=str(card.total),
        failures=str(card.total - card.passed),
        errors="0",
        skipped="0",
        time=f"{card.seconds:.3f}",
    )
    props = ET.SubElement(suite, "properties")
    for key, value in (
        ("score", f"{card.score:.1f}"),
        ("threshold", str(card.threshold)),
        ("required", str(card.required)),
        ("workers", str(card.workers)),
        ("result", "pass" if card.ok else "fail"),
    ):
        ET.SubElement(props, "property", name=key, value=value)
    for c in card.checks:
        case = ET.SubElement(
            suite, "testcase", classname="keybuzz-fix.scorecard", name=f"{c.number}. {c.name}", time=f"{c.seconds:.3f}"
        )
        _junit_outcome(case, c.passed, c.detail)
    if card.extended:
        ext = ET.SubElement(
            root,
            "testsuite",
            name="extended (not scored)",
            tests=str(len(card.extended)),
            failures=str(sum(not r.passed for r in card.extended)),
            errors="0",
            skipped="0",
        )
        for r in card.extended:
            case = ET.SubElement(ext, "testcase", classname=f"keybuzz-fix.extended.{r.host}", name=r.check)
            _junit_outcome(case, r.passed, r.detail)
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def _junit_outcome(case: Any, passed: bool, detail: str) -> None:
    import xml.etree.ElementTree as ET

    if not passed:
        fail = ET.SubElement(case, "failure", message=detail, type="fail")
        fail.text = detail
    out = ET.SubElement(case, "system-out")
    out.text = detail
