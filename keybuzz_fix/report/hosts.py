"""What the SSH-side commands show: the inventory, and each host's UFW plan and outcome.

``ufw`` and ``overlay`` show the plan of every host, then one table of outcomes (or, with ``-o
json``, one JSON document); ``all`` shows the same pieces inside its steps.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from keybuzz_fix.errors import ExitCode
from keybuzz_fix.hints import hint
from keybuzz_fix.hosts.ufw.plan import Action, ActionKind
from keybuzz_fix.hosts.ufw.run import FirewallResult, HostOutcome, HostStatus, Wanted, tally
from keybuzz_fix.inventory import Host, Role
from keybuzz_fix.report.output import STATUS_STYLE, Output, confirm, print_json, progress_bar

if TYPE_CHECKING:
    from rich.console import Console

    from keybuzz_fix.report.output import ProgressBar

Key = TypeVar("Key", bound=Hashable)


def show_inventory(console: Console, hosts: Sequence[Host], role: Role, env: str, output: Output) -> None:
    """Show the selected hosts: a table, or JSON."""
    if output is Output.JSON:
        print_json(inventory_json(hosts))
    else:
        inventory_table(console, hosts, f"{len(hosts)} K3s {role.value} node(s), ENV={env}")


def inventory_table(console: Console, hosts: Sequence[Host], title: str) -> None:
    """Print the selected hosts."""
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for col in ("HOSTNAME", "PRIVATE IP", "PUBLIC IP", "USER", "ROLE", "SUBROLE", "ENV"):
        table.add_column(col)
    for h in hosts:
        table.add_row(h.hostname, h.private_ip, h.public_ip or "-", h.user, h.role, h.subrole, h.env)
    console.print(table)


def inventory_json(hosts: Sequence[Host]) -> list[dict[str, Any]]:
    """Return the hosts as ``inventory -o json`` prints them."""
    return [
        {
            "hostname": h.hostname,
            "private_ip": h.private_ip,
            "public_ip": h.public_ip,
            "user": h.user,
            "env": h.env,
            "role": h.role,
            "subrole": h.subrole,
        }
        for h in hosts
    ]


class FirewallView:
    """What a ``ufw`` or ``overlay`` run shows as it goes: text for people, or one JSON document at the end."""

    def __init__(self, console: Console, output: Output) -> None:
        self.console = console
        self.quiet = output is Output.JSON

    def progress(self) -> ProgressBar | None:
        """Return the progress bar of the hosts (none with ``-o json``)."""
        return None if self.quiet else progress_bar(self.console)

    def wanted(self, wanted: Wanted) -> None:
        """Show the rules wanted on every host and why, before anything is read from the hosts."""
        if not self.quiet:
            wanted_rules(self.console, wanted)

    def plans(self, outcomes: Sequence[HostOutcome]) -> None:
        """Show each host's plan, before the confirmation."""
        if not self.quiet:
            firewall_plans(self.console, outcomes)

    def confirm(self, question: str, *, yes: bool) -> None:
        """Ask once for every host."""
        confirm(question, yes=yes)

    def finish(self, result: FirewallResult, title: str) -> None:
        """Show how every host ended (with the plans, for a dry run), and the host keys recorded."""
        if self.quiet:
            print_json(firewall_json(result))
            return
        if result.dry_run:
            firewall_plans(self.console, result.outcomes)
        firewall_summary(self.console, result.outcomes, title)
        for host, key in result.accepted:
            self.console.print(f"[yellow]accepted new host key[/] for {host}: {key} (recorded in {result.known_hosts})")
        unknown = [o.host.hostname for o in result.outcomes if o.status is HostStatus.UNKNOWN]
        if unknown:
            self.console.print(
                f"[bold magenta]{len(unknown)} host(s) in an unknown state[/] ({', '.join(unknown)}): a change was "
                "in flight when the answers stopped; reading them again tells where they stand",
                soft_wrap=True,
            )
        if result.retry_file is not None:
            rerun = hint("--limit", f": re-run only them with [bold]--limit @{result.retry_file}[/]")
            self.console.print(
                f"[bold red]{len(result.failed_hosts)} host(s) failed[/] ({', '.join(result.failed_hosts)}); "
                f"their names are in {result.retry_file}{rerun}",
                soft_wrap=True,
            )


_READ_FROM = {
    "cluster": "read from the cluster",
    "config": "from the configuration",
    "--ports": "given on the command line",
}


def wanted_rules(console: Console, wanted: Wanted) -> None:
    """Print the rules wanted on every host: each with its purpose and where it was read; then the notes."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(
        title=f"{len(wanted.rules)} rule(s) wanted on every host, {_READ_FROM.get(wanted.read_from, wanted.read_from)}",
        title_justify="left",
    )
    for col in ("RULE", "WHY", "READ FROM"):
        table.add_column(col, overflow="fold")
    for w in wanted.rules:
        table.add_row(escape(w.rule.describe()), escape(w.purpose), escape(w.read_from))
    console.print(table)
    for note in wanted.notes:
        console.print(f"[yellow]note[/]: {escape(note)}")


def wanted_json(wanted: Wanted) -> list[dict[str, Any]]:
    """Return the wanted rules as JSON: the rule, its port, protocol and source network, why, and where it was read."""
    return [
        {
            "rule": w.rule.describe(),
            "port": int(w.rule.port)
            if w.rule.port and w.rule.port.isascii() and w.rule.port.isdigit()
            else w.rule.port,
            "proto": w.rule.proto,
            "from": w.rule.source,
            "purpose": w.purpose,
            "read_from": w.read_from,
        }
        for w in wanted.rules
    ]


def firewall_plans(console: Console, outcomes: Sequence[HostOutcome]) -> None:
    """Print each host's plan: what would run and what is already in place; hosts with the same plan together."""
    from rich.markup import escape

    for lines, hosts in _same_plan(outcomes, _plan_lines).items():
        names = ", ".join(f"[bold]{escape(o.host.hostname)}[/] ({o.host.private_ip})" for o in hosts)
        console.print(f"{names}{lines[0]}")
        for line in lines[1:]:
            console.print(line)


def _same_plan(outcomes: Sequence[HostOutcome], shown: Callable[[HostOutcome], Key]) -> dict[Key, list[HostOutcome]]:
    """Group hosts whose plans are shown alike, in the order they first appear: each plan printed once."""
    groups: dict[Key, list[HostOutcome]] = {}
    for o in outcomes:
        groups.setdefault(shown(o), []).append(o)
    return groups


def _plan_lines(o: HostOutcome) -> tuple[str, ...]:
    """One host's plan as markup lines: the state after its name, then each action."""
    from rich.markup import escape

    if o.facts is None:
        return (f": [bold red]cannot plan[/]: {escape(str(o.error))}",)
    lines = [f": ufw {'active' if o.facts.active else 'inactive'}"]
    for a in o.actions:
        if a.changes:
            lines.append(f"  [yellow]+[/] {escape(a.command or '')}")
        elif a.kind is ActionKind.BLOCKED:
            lines.append(f"  [bold yellow]![/] {escape(a.reason)}")
        else:
            lines.append(f"  [green]=[/] {escape(a.reason)}")
    return tuple(lines)


def wanted_brief(console: Console, wanted: Wanted) -> None:
    """Print the rules wanted on every worker, one line each with its purpose's first words (``all``'s page)."""
    from rich.markup import escape

    where = _READ_FROM.get(wanted.read_from, wanted.read_from)
    console.print(f"{len(wanted.rules)} rule(s) wanted on every worker, {escape(where)}:")
    for w in wanted.rules:
        console.print(f"  {escape(w.rule.describe())} — {escape(w.purpose.split(':')[0])}")
    for note in wanted.notes:
        console.print(f"[yellow]note[/]: {escape(note)}")


def firewall_brief(console: Console, outcomes: Sequence[HostOutcome]) -> None:
    """Print each worker's plan in one line, workers with the same plan together; what blocks a host in full.

    ``-v`` (:func:`firewall_plans`) shows every command that will run on each host.
    """
    from rich.markup import escape

    groups = _same_plan(outcomes, _brief_plan)
    for line, hosts in groups.items():
        names = [o.host.hostname for o in hosts]
        who = f"all {len(names)} workers" if len(groups) == 1 and len(names) > 1 else ", ".join(names)
        console.print(f"  [bold]{escape(who)}[/] {escape(line)}")


def _brief_plan(o: HostOutcome) -> str:
    if o.facts is None:
        return f"cannot plan: {o.error}"
    state = "ufw active" if o.facts.active else "ufw inactive"
    added = [a.rule.describe().split(" from ")[0].removeprefix("allow ") for a in o.actions if a.changes and a.rule]
    others = [a.command or a.reason for a in o.actions if a.changes and not a.rule]
    kept = sum(1 for a in o.actions if not a.changes and a.kind is not ActionKind.BLOCKED)
    blocked = [a.reason for a in o.actions if a.kind is ActionKind.BLOCKED]
    # every wanted rule to add: the list above says which; otherwise name the ones this host lacks
    partial = kept or blocked or others
    parts = [f"{len(added)} to add" + (f": {', '.join(added)}" if partial else "")] if added else []
    parts += others
    parts += [f"{kept} already open"] if kept else []
    parts += [f"blocked: {b}" for b in blocked]
    return f"({state}): " + ("; ".join(parts) or "nothing to do")


def firewall_summary(console: Console, outcomes: Sequence[HostOutcome], title: str) -> None:
    """Print the per-host summary table."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for col in ("HOST", "ADDRESS", "OUTCOME", "DETAIL"):
        table.add_column(col, overflow="fold")
    for o in outcomes:
        status = o.status.value
        table.add_row(o.host.hostname, o.host.private_ip, f"[{STATUS_STYLE[status]}]{status}[/]", escape(_detail(o)))
    console.print(table)


def _detail(o: HostOutcome) -> str:
    if o.error is not None:
        return o.error.problem
    if o.applied is not None:
        return o.message or (f"{len(o.applied)} change(s) applied" if o.applied else "every wanted port already open")
    return o.message or (f"{len(o.changes)} change(s) planned" if o.changes else "every wanted port already open")


def firewall_json(result: FirewallResult) -> dict[str, Any]:
    """Return the machine-readable summary of a firewall run."""
    hosts = []
    for o in result.outcomes:
        entry = {**host_entry(o.host), "seconds": round(o.seconds, 3)}
        if o.error is not None:  # failed, or unknown: a change was in flight when the answers stopped
            entry.update(status=o.status.value, error=str(o.error), error_type=type(o.error).__name__)
            if o.applied is not None:
                entry.update(applied=list(o.applied))
        elif o.applied is not None:
            entry.update(
                status=o.status.value,
                applied=list(o.applied),
                actions=[action_json(a) for a in o.actions],
                message=o.message,
            )
        else:
            assert o.facts is not None
            entry.update(
                status=o.status.value,
                actions=[action_json(a) for a in o.actions],
                ufw_active=o.facts.active,
                message=o.message,
            )
        hosts.append(entry)
    out: dict[str, Any] = {
        "command": result.command,
        "dry_run": result.dry_run,
        "exit_code": int(ExitCode.of(result)),
        "summary": tally(result.outcomes),
    }
    if result.wanted is not None:
        out.update(rules=wanted_json(result.wanted), read_from=result.wanted.read_from, notes=list(result.wanted.notes))
    out.update(hosts=hosts, accepted_host_keys=[{"host": h, "key": k} for h, k in result.accepted])
    out.update(retry_file=str(result.retry_file) if result.retry_file else None)
    return out


def host_entry(host: Host) -> dict[str, Any]:
    """Return how the JSON outputs name a host: its hostname and the address the tool reached it at."""
    return {"hostname": host.hostname, "address": host.private_ip}


def action_json(action: Action) -> dict[str, Any]:
    """Return one firewall action as JSON."""
    return {
        "kind": action.kind.value,
        "rule": action.rule.describe() if action.rule else None,
        "command": action.command,
        "reason": action.reason,
        "first": action.first,
    }
