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

    from keybuzz_fix.fanout import Outcome
    from keybuzz_fix.firewall import Action
    from keybuzz_fix.firewall_apply import HostPlan, HostResult

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


def action_json(action: Action) -> dict[str, Any]:
    """Return one firewall action as JSON."""
    return {"kind": action.kind.value, "rule": action.rule.describe() if action.rule else None,
            "command": action.command, "reason": action.reason}


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


def firewall_summary(console: Console, outcomes: Sequence[Outcome[HostResult]] | Sequence[Outcome[HostPlan]],
                     title: str) -> None:
    """Print the per-host summary table."""
    from rich.markup import escape
    from rich.table import Table

    from keybuzz_fix.firewall_apply import HostPlan, HostResult, plan_status

    table = Table(title=title, title_justify="left")
    for col in ("HOST", "ADDRESS", "OUTCOME", "DETAIL"):
        table.add_column(col, overflow="fold")
    for o in outcomes:
        if not o.ok:
            status, detail = "failed", str(getattr(o.error, "problem", o.error))
        elif isinstance(o.result, HostResult):
            status = o.result.status.value
            detail = o.result.message or (f"{len(o.result.applied)} change(s) applied" if o.result.applied
                                          else "all rules already present")
        else:
            assert isinstance(o.result, HostPlan)
            status = plan_status(o.result).value
            detail = "; ".join(a.reason for a in o.result.blocked) or (
                f"{len(o.result.changes)} change(s) planned" if o.result.changes else "all rules already present")
        table.add_row(o.host.hostname, o.host.private_ip, f"[{STATUS_STYLE[status]}]{status}[/]", escape(detail))
    console.print(table)


def firewall_json(outcomes: Sequence[Outcome[HostResult]] | Sequence[Outcome[HostPlan]], *, dry_run: bool,
                  accepted: Sequence[tuple[str, str]], exit_code: ExitCode) -> dict[str, Any]:
    """Return the machine-readable summary of a firewall run."""
    from keybuzz_fix.firewall_apply import HostPlan, HostResult, overview, plan_status

    hosts = []
    for o in outcomes:
        entry: dict[str, Any] = {"hostname": o.host.hostname, "address": o.host.private_ip,
                                 "seconds": round(o.seconds, 3)}
        if not o.ok:
            entry.update(status="failed", error=str(o.error), error_type=type(o.error).__name__)
        elif isinstance(o.result, HostResult):
            entry.update(status=o.result.status.value, applied=list(o.result.applied),
                         actions=[action_json(a) for a in o.result.actions], message=o.result.message)
        else:
            assert isinstance(o.result, HostPlan)
            entry.update(status=plan_status(o.result).value, actions=[action_json(a) for a in o.result.actions],
                         ufw_active=o.result.facts.active)
        hosts.append(entry)
    return {"dry_run": dry_run, "exit_code": int(exit_code), "summary": overview(outcomes), "hosts": hosts,
            "accepted_host_keys": [{"host": h, "key": k} for h, k in accepted]}
