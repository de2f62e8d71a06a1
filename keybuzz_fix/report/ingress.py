"""What ``ingress`` shows: the controller as found, each route's diff and outcome, or JSON."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from keybuzz_fix.checks.ingress import IngressPlan
from keybuzz_fix.errors import ExitCode
from keybuzz_fix.hints import hint

if TYPE_CHECKING:
    from rich.console import Console

_ROUTE_STYLE = {
    "unchanged": "green",
    "create": "yellow",
    "update": "yellow",
    "created": "bold green",
    "updated": "bold green",
    "conflict": "bold red",
    "failed": "bold red",
}


def ingress_plan(console: Console, plan: IngressPlan, *, dry_run: bool) -> None:
    """Print the ingress-nginx findings and each route's diff (the server's dry-run answer)."""
    from rich.markup import escape

    console.print("[bold]ingress-nginx[/] (checked, never changed):")
    for f in plan.findings:
        mark = "[green]✓[/]" if f.ok else "[bold red]✗[/]"
        console.print(f"  {mark} {escape(f.subject)}: {escape(f.detail)}")
    console.print(
        "[bold]Ingress routes[/] (server-side apply, field manager keybuzz-fix"
        + (hint("--force-conflicts", ", --force-conflicts", ", forced") if plan.force_conflicts else "")
        + "):"
    )
    for r in plan.routes:
        console.print(
            f"  {r.name}: [{_ROUTE_STYLE[r.status.value]}]{r.status.value}[/]"
            + (f" — {escape(r.error)}" if r.error else "")
        )
        for line in r.diff.splitlines():
            style = "green" if line.startswith("+") else "red" if line.startswith("-") else "dim"
            console.print(f"    [{style}]{escape(line)}[/]", soft_wrap=True)
        if r.serving:
            console.print(f"    [bold red]✗ ingress-nginx would not serve {escape(r.name)} as wanted:[/]")
        for problem in r.serving:
            console.print(f"      [red]{escape(problem.subject)}[/]: {escape(problem.detail)}", soft_wrap=True)
    if dry_run:
        console.print("[yellow]dry run: nothing changed (the diff is the API server's dry-run answer)[/]")


def ingress_summary(console: Console, plan: IngressPlan, *, dry_run: bool) -> None:
    """Print the one-line outcome of the ingress step."""
    bad = len(plan.mismatches)
    routes = ", ".join(
        f"{r.name} {r.status.value}" + (f" (not served: {len(r.serving)} problem(s))" if r.serving else "")
        for r in plan.routes
    )
    head = "ingress: plan" if dry_run else "ingress: result"
    controller = "ingress-nginx as expected" if not bad else f"ingress-nginx: {bad} mismatch(es), left as found"
    style = "bold red" if plan.failed else "green"
    console.print(f"[{style}]{head}[/]: {controller}; {routes}")


def ingress_json(plan: IngressPlan, *, dry_run: bool) -> dict[str, Any]:
    """Return the machine-readable outcome of the ingress step."""
    return {
        "command": "ingress",
        "dry_run": dry_run,
        "exit_code": int(ExitCode.of(plan)),
        "force_conflicts": plan.force_conflicts,
        "controller": [{"subject": f.subject, "ok": f.ok, "detail": f.detail} for f in plan.findings],
        "routes": [
            {
                "name": r.name,
                "status": r.status.value,
                "diff": r.diff,
                "error": r.error,
                "served": not r.serving,
                "serving_problems": [{"subject": p.subject, "detail": p.detail} for p in r.serving],
            }
            for r in plan.routes
        ],
    }
