"""Rendering of plans and summaries: rich text for people, JSON for machines.

Everything that prints goes through here so the commands stay thin and the formats stay
consistent. JSON goes to stdout unadorned (no rich markup, no wrapping).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from keybuzz_fix.errors import ExitCode
from keybuzz_fix.inventory import Host

if TYPE_CHECKING:
    from rich.console import Console

    from keybuzz_fix.checks.diagnose import ClusterView, Finding, NodeView
    from keybuzz_fix.checks.scorecard import Scorecard
    from keybuzz_fix.flows.ingress import IngressPlan
    from keybuzz_fix.hosts.parallel import Outcome
    from keybuzz_fix.hosts.ufw.apply import HostPlan, HostResult
    from keybuzz_fix.hosts.ufw.rules import Action

STATUS_STYLE = {
    "unchanged": "green",
    "changed": "bold green",
    "planned": "yellow",
    "blocked": "bold yellow",
    "failed": "bold red",
    "pass": "green",
    "fail": "bold red",
}


def print_json(data: Any) -> None:
    """Print JSON to stdout, nothing else."""
    print(json.dumps(data, indent=2, ensure_ascii=False, default=str))


def inventory_table(console: Console, hosts: Sequence[Host], title: str) -> None:
    """Print the selected hosts."""
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for col in ("HOSTNAME", "PRIVATE IP", "PUBLIC IP", "USER", "ROLE", "SUBROLE", "ENV"):
        table.add_column(col)
    for h in hosts:
        table.add_row(h.hostname, h.private_ip, h.public_ip or "-", h.user, h.role, h.subrole, h.env)
    console.print(table)


def diagnosis(
    console: Console,
    findings: Sequence[Finding],
    nodes: Sequence[NodeView],
    cluster: ClusterView,
    *,
    seconds: float,
    accepted: Sequence[tuple[str, str]],
) -> None:
    """Print the probe matrix and the ranked findings with their evidence and fixes."""
    from rich.markup import escape
    from rich.table import Table

    from keybuzz_fix.checks.diagnose import Status, healthy, matrix

    styles = {
        Status.CONFIRMED: "bold red",
        Status.SUSPECTED: "bold yellow",
        Status.NOT_CHECKED: "yellow",
        Status.OK: "green",
    }
    cells = {
        "ok": "[green]ok[/]",
        "fail": "[bold red]FAIL[/]",
        "mtu": "[bold yellow]MTU[/]",
        "n/a": "[dim]n/a[/]",
        "self": "[dim]·[/]",
    }
    grid = matrix(nodes)
    table = Table(title=f"ping {len(grid)} × {len(grid)} node(s) over flannel.1 (row → column)", title_justify="left")
    table.add_column("FROM \\ TO")
    for name in grid:
        table.add_column(name, justify="center")
    for src, row in grid.items():
        table.add_row(src, *(cells[c] for c in row.values()))
    console.print(table)
    if cluster.error:
        console.print(f"[yellow]API not read[/]: {escape(cluster.error)}")
    for n in nodes:
        if n.error:
            console.print(f"[bold red]{escape(n.host.hostname)}[/] ({n.host.private_ip}): {escape(n.error)}")
    for i, f in enumerate(findings, start=1):
        console.print(
            f"\n[bold]{i}. {escape(f.title)}[/] — [{styles[f.status]}]{f.status.value}[/]: {escape(f.summary)}"
        )
        if f.problem:
            for host, lines in f.evidence.items():
                console.print(f"   [bold]{escape(host)}[/]")
                for line in lines:
                    console.print(f"     {escape(line)}")
            console.print(f"   [bold]fix:[/] {escape(f.fix)}")
        for host, why in f.not_checked.items():
            console.print(f"   [yellow]not checked[/] on {escape(host)}: {escape(why)}")
    for host, key in accepted:
        console.print(f"[yellow]accepted new host key[/] for {host}: {key}")
    verdict = "[bold green]overlay healthy[/]" if healthy(findings) else "[bold red]overlay not healthy[/]"
    console.print(f"\n{verdict} ({sum(f.problem for f in findings)} problem finding(s)) in {seconds:.1f} s")


def diagnosis_json(
    findings: Sequence[Finding],
    nodes: Sequence[NodeView],
    cluster: ClusterView,
    *,
    seconds: float,
    accepted: Sequence[tuple[str, str]],
    exit_code: ExitCode,
) -> dict[str, Any]:
    """Return the machine-readable diagnosis."""
    from keybuzz_fix.checks.diagnose import healthy, matrix

    hosts = []
    for n in nodes:
        entry: dict[str, Any] = {
            "hostname": n.host.hostname,
            "address": n.host.private_ip,
            "status": "failed" if n.error and n.facts is None else "probed",
        }
        if n.error:
            entry["error"] = n.error
        if n.facts is not None:
            entry.update(kernel=n.facts.kernel, tools=sorted(n.facts.tools), flannel_address=n.facts.flannel_addr)
        hosts.append(entry)
    return {
        "healthy": healthy(findings),
        "exit_code": int(exit_code),
        "seconds": round(seconds, 3),
        "findings": [dict(rank=i, **f.to_json()) for i, f in enumerate(findings, start=1)],
        "matrix": matrix(nodes),
        "hosts": hosts,
        "cluster": {
            "read": cluster.error is None,
            "error": cluster.error,
            "dns_ip": cluster.dns_ip,
            "nodes": len(cluster.nodes),
        },
        "accepted_host_keys": [{"host": h, "key": k} for h, k in accepted],
    }


def action_json(action: Action) -> dict[str, Any]:
    """Return one firewall action as JSON."""
    return {
        "kind": action.kind.value,
        "rule": action.rule.describe() if action.rule else None,
        "command": action.command,
        "reason": action.reason,
    }


def firewall_plans(console: Console, outcomes: Sequence[Outcome[HostPlan]]) -> None:
    """Print each host's plan: what would run and what is already in place."""
    from rich.markup import escape

    for o in outcomes:
        head = f"[bold]{o.host.hostname}[/] ({o.host.private_ip})"
        if not o.ok:
            console.print(f"{head}: [bold red]cannot plan[/]: {escape(str(o.error))}")
            continue
        assert o.result is not None
        state = "active" if o.result.facts.active else "inactive"
        console.print(f"{head}: ufw {state}")
        for a in o.result.actions:
            if a.changes:
                console.print(f"  [yellow]+[/] {escape(a.command or '')}")
            elif a.kind.value == "blocked":
                console.print(f"  [bold yellow]![/] {escape(a.reason)}")
            else:
                console.print(f"  [green]=[/] {escape(a.reason)}")


def firewall_summary(
    console: Console, outcomes: Sequence[Outcome[HostResult]] | Sequence[Outcome[HostPlan]], title: str
) -> None:
    """Print the per-host summary table."""
    from rich.markup import escape
    from rich.table import Table

    from keybuzz_fix.hosts.ufw.apply import HostPlan, HostResult, plan_status

    table = Table(title=title, title_justify="left")
    for col in ("HOST", "ADDRESS", "OUTCOME", "DETAIL"):
        table.add_column(col, overflow="fold")
    for o in outcomes:
        if not o.ok:
            status, detail = "failed", str(getattr(o.error, "problem", o.error))
        elif isinstance(o.result, HostResult):
            status = o.result.status.value
            detail = o.result.message or (
                f"{len(o.result.applied)} change(s) applied" if o.result.applied else "all rules already present"
            )
        else:
            assert isinstance(o.result, HostPlan)
            status = plan_status(o.result).value
            detail = "; ".join(a.reason for a in o.result.blocked) or (
                f"{len(o.result.changes)} change(s) planned" if o.result.changes else "all rules already present"
            )
        table.add_row(o.host.hostname, o.host.private_ip, f"[{STATUS_STYLE[status]}]{status}[/]", escape(detail))
    console.print(table)


def firewall_json(
    outcomes: Sequence[Outcome[HostResult]] | Sequence[Outcome[HostPlan]],
    *,
    dry_run: bool,
    accepted: Sequence[tuple[str, str]],
    exit_code: ExitCode,
) -> dict[str, Any]:
    """Return the machine-readable summary of a firewall run."""
    from keybuzz_fix.hosts.ufw.apply import HostPlan, HostResult, overview, plan_status

    hosts = []
    for o in outcomes:
        entry: dict[str, Any] = {
            "hostname": o.host.hostname,
            "address": o.host.private_ip,
            "seconds": round(o.seconds, 3),
        }
        if not o.ok:
            entry.update(status="failed", error=str(o.error), error_type=type(o.error).__name__)
        elif isinstance(o.result, HostResult):
            entry.update(
                status=o.result.status.value,
                applied=list(o.result.applied),
                actions=[action_json(a) for a in o.result.actions],
                message=o.result.message,
            )
        else:
            assert isinstance(o.result, HostPlan)
            entry.update(
                status=plan_status(o.result).value,
                actions=[action_json(a) for a in o.result.actions],
                ufw_active=o.result.facts.active,
            )
        hosts.append(entry)
    return {
        "dry_run": dry_run,
        "exit_code": int(exit_code),
        "summary": overview(outcomes),
        "hosts": hosts,
        "accepted_host_keys": [{"host": h, "key": k} for h, k in accepted],
    }


# -- ingress / validate ----------------------------------------------------------------------------


def ingress_plan(console: Console, plan: IngressPlan, *, dry_run: bool) -> None:
    """Print the ingress-nginx findings and each route's diff (the server's dry-run answer)."""
    from rich.markup import escape

    console.print("[bold]ingress-nginx[/] (checked, never changed):")
    for f in plan.findings:
        mark = "[green]✓[/]" if f.ok else "[bold red]✗[/]"
        console.print(f"  {mark} {escape(f.subject)}: {escape(f.detail)}")
    console.print(
        "[bold]Ingress routes[/] (server-side apply, field manager keybuzz-fix"
        + (", --force-conflicts" if plan.force_conflicts else "")
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
    if dry_run:
        console.print("[yellow]dry run: nothing changed (the diff is the API server's dry-run answer)[/]")


def ingress_summary(console: Console, plan: IngressPlan, *, dry_run: bool) -> None:
    """Print the one-line outcome of the ingress step."""
    bad = len(plan.mismatches)
    routes = ", ".join(f"{r.name} {r.status.value}" for r in plan.routes)
    head = "ingress: plan" if dry_run else "ingress: result"
    controller = "ingress-nginx as expected" if not bad else f"ingress-nginx: {bad} mismatch(es), left as found"
    style = "green" if plan.exit_code == ExitCode.OK else "bold red"
    console.print(f"[{style}]{head}[/]: {controller}; {routes}")


def ingress_json(plan: IngressPlan, *, dry_run: bool) -> dict[str, Any]:
    """Return the machine-readable outcome of the ingress step."""
    return {
        "dry_run": dry_run,
        "exit_code": int(plan.exit_code),
        "force_conflicts": plan.force_conflicts,
        "controller": [{"subject": f.subject, "ok": f.ok, "detail": f.detail} for f in plan.findings],
        "routes": [{"name": r.name, "status": r.status.value, "diff": r.diff, "error": r.error} for r in plan.routes],
    }


_ROUTE_STYLE = {
    "unchanged": "green",
    "create": "yellow",
    "update": "yellow",
    "created": "bold green",
    "updated": "bold green",
    "conflict": "bold red",
    "failed": "bold red",
}


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
        ext = Table(title="Per worker (--extended, not counted in the score)", title_justify="left")
        for col in ("WORKER", "CHECK", "RESULT", "EVIDENCE"):
            ext.add_column(col, overflow="fold")
        for r in card.extended:
            ext.add_row(r.host, escape(r.check), f"[{STATUS_STYLE[r.status]}]{r.status.upper()}[/]", escape(r.detail))
        console.print(ext)
    verdict = "[bold green]PASS[/]" if card.ok else "[bold red]FAIL[/]"
    need = "100 % (--strict)" if card.strict else f"{card.threshold} %"
    console.print(
        f"Score: {card.passed}/{card.total} = {card.score:.1f} % (pass at ≥ {need}) {verdict}"
        f" in {card.seconds:.1f} s" + (f" — {escape(note)}" if note else "")
    )


# -- convert / rollback ----------------------------------------------------------------------------

if TYPE_CHECKING:
    from collections.abc import Callable, Collection

    from keybuzz_fix.cluster.changes import Change
    from keybuzz_fix.cluster.rollout import StuckPod

_CHANGE_STYLE = {
    "create": "yellow",
    "update": "yellow",
    "patch": "yellow",
    "delete": "bold yellow",
    "unchanged": "green",
    "done": "bold green",
    "validated": "green",
    "planned": "yellow",
    "not done": "bold red",
}


def change_plan(
    console: Console,
    title: str,
    changes: Sequence[Change],
    *,
    refusals: Sequence[str] = (),
    warnings: Sequence[str] = (),
    notes: Sequence[str] = (),
    show_values: bool = False,
    shown_env: Collection[str] = (),
) -> None:
    """Print a plan of object changes: each action with its reason and diff, env values masked unless asked."""
    from rich.markup import escape

    from keybuzz_fix.cluster.objects import diff, mask_values, project, strip_server_fields

    def shown(obj: Any) -> Any:
        return obj if obj is None or show_values else mask_values(obj, shown_env)

    console.print(f"[bold]{escape(title)}[/]")
    for c in changes:
        console.print(f"  [{_CHANGE_STYLE[c.label]}]{c.label:>9}[/] {escape(c.target)}: {escape(c.reason)}")
        if not c.changes or c.after is None:
            continue
        left: Any = None
        if c.compare_to is not None:
            left = strip_server_fields(c.compare_to)
        elif c.before is not None:
            left = project(strip_server_fields(c.before), c.after)
        for line in diff(shown(left), shown(c.after), c.target):
            style = (
                "green"
                if line.startswith("+")
                else "red"
                if line.startswith("-")
                else "cyan"
                if line.startswith("@@")
                else "dim"
            )
            console.print(f"      [{style}]{escape(line)}[/]", soft_wrap=True)
    for n in notes:
        console.print(f"  [cyan]rewritten[/] {escape(n)}")
    for w in warnings:
        console.print(f"  [bold yellow]warning[/] {escape(w)}")
    for r in refusals:
        console.print(f"  [bold red]refused[/] {escape(r)}")
    if not show_values and any(c.changes for c in changes):
        console.print("  [dim]env values are masked; --show-values reveals them[/]")


def change_summary(console: Console, title: str, changes: Sequence[Change], outcome: Callable[[Change], str]) -> None:
    """Print what happened to each change."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for col in ("ACTION", "OBJECT", "OUTCOME", "DETAIL"):
        table.add_column(col, overflow="fold")
    for c in changes:
        result = outcome(c)
        table.add_row(c.label, escape(c.target), f"[{_CHANGE_STYLE[result]}]{result}[/]", escape(c.reason))
    console.print(table)


def stuck_pods(console: Console, pods: Sequence[StuckPod]) -> None:
    """Print the pods that kept a rollout from being ready, with their latest events."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="pods not ready", title_justify="left")
    for col in ("POD", "NODE", "PHASE", "WHY", "LATEST EVENTS"):
        table.add_column(col, overflow="fold")
    for p in pods:
        table.add_row(escape(p.name), p.node or "-", p.phase, escape(p.reason), escape("\n".join(p.events)))
    console.print(table)
