"""What ``ingress`` shows: the controller as found, each route's diff and outcome, or JSON."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from keybuzz_fix.checks.ingress import IngressPlan
from keybuzz_fix.errors import ExitCode, KeybuzzFixError
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


def ingress_plan(console: Console, plan: IngressPlan, *, dry_run: bool, brief: bool = False) -> None:
    """Print the ingress-nginx findings and each route's diff (the server's dry-run answer).

    ``brief`` (``all`` without ``-v``): the findings that pass are counted, not listed, and each
    route is one line; what fails is always shown in full.
    """
    from rich.markup import escape

    passed = [f for f in plan.findings if f.ok]
    if brief and passed:
        console.print(
            f"[bold]ingress-nginx[/] (checked, never changed): {len(passed)} of {len(plan.findings)} check(s) pass"
            + (":" if plan.mismatches else "")
        )
    else:
        console.print("[bold]ingress-nginx[/] (checked, never changed):")
    for f in plan.mismatches if brief else plan.findings:
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
            + (f" ({escape(routes_of(r.desired))})" if brief else "")
            + (f" — {escape(r.error)}" if r.error else "")
        )
        for line in [] if brief else r.diff.splitlines():
            style = "green" if line.startswith("+") else "red" if line.startswith("-") else "dim"
            console.print(f"    [{style}]{escape(line)}[/]", soft_wrap=True)
        if r.serving:
            console.print(f"    [bold red]✗ ingress-nginx would not serve {escape(r.name)} as wanted:[/]")
        for problem in r.serving:
            console.print(f"      [red]{escape(problem.subject)}[/]: {escape(problem.detail)}", soft_wrap=True)
    if dry_run:
        console.print("[yellow]dry run: nothing changed (the diff is the API server's dry-run answer)[/]")


def routes_of(ingress: dict[str, Any]) -> str:
    """Say where an Ingress sends what: ``platform.keybuzz.io/ → Service keybuzz-front:80``."""
    out = []
    for rule in (ingress.get("spec") or {}).get("rules") or []:
        for path in ((rule.get("http") or {}).get("paths")) or []:
            service = (path.get("backend") or {}).get("service") or {}
            port = service.get("port") or {}
            out.append(
                f"{rule.get('host') or '*'}{path.get('path') or '/'} → Service {service.get('name')}:"
                f"{port.get('number') or port.get('name')}"
            )
    return ", ".join(out) or "no rules"


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


def ingress_json(plan: IngressPlan, *, dry_run: bool, error: KeybuzzFixError | None = None) -> dict[str, Any]:
    """Return the machine-readable outcome of the ingress step (``error``: why it stopped; routes as planned)."""
    return {
        "command": "ingress",
        "dry_run": dry_run,
        "exit_code": int(error.exit_code if error is not None else ExitCode.of(plan)),
        "error": str(error) if error is not None else None,
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
