"""The imperative shell of the SSH-side commands (``ufw``, ``overlay``).

Plan on every host, show the plan, ask once, apply, report. The exit code is non-zero when any
host failed or needs the operator, so a cron job or CI step notices.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from keybuzz_fix.cli.options import Output
from keybuzz_fix.errors import Aborted, ExitCode, UsageError
from keybuzz_fix.hosts.ssh import SshOptions
from keybuzz_fix.hosts.ufw.apply import FirewallRun, HostExtra, HostPlan, HostResult, Status
from keybuzz_fix.hosts.ufw.rules import UfwRule
from keybuzz_fix.inventory import Host
from keybuzz_fix.report import hosts as report

if TYPE_CHECKING:
    from rich.console import Console


def confirm(console: Console, question: str, *, yes: bool) -> None:
    """Ask the operator; ``--yes`` answers for them. A closed stdin never means yes."""
    if yes:
        return
    if not sys.stdin.isatty():
        raise UsageError(
            f"{question} — needs confirmation but stdin is not a terminal; "
            "pass --yes to proceed, or --dry-run to only see the plan"
        )
    import typer

    if not typer.confirm(question, default=False):
        raise Aborted("nothing changed (answered no)")


def run_firewall(
    console: Console,
    *,
    command: str,
    hosts: Sequence[Host],
    desired: Callable[[Host], list[UfwRule]],
    ssh: SshOptions,
    enable: bool,
    dry_run: bool,
    yes: bool,
    concurrency: int,
    output: Output,
    extra: HostExtra | None = None,
) -> ExitCode:
    """Run a firewall change across ``hosts`` and report; return the exit code."""
    run = FirewallRun(
        hosts=hosts, desired=desired, ssh=ssh, command=command, enable=enable, concurrency=concurrency, extra=extra
    )
    quiet = output is Output.JSON
    try:
        planned = run.plan(None if quiet else console)
        plans = [o.result for o in planned if o.ok and o.result is not None]
        changing = [p for p in plans if p.changes]
        if dry_run or not changing:
            code = _code(planned, plans)
            _finish(
                console,
                output,
                planned,
                dry_run=dry_run,
                run=run,
                code=code,
                title=f"{command}: plan (dry run, nothing changed)" if dry_run else f"{command}: nothing to do",
            )
            return code
        if not quiet:
            report.firewall_plans(console, planned)
        total = sum(len(p.changes) for p in changing)
        confirm(console, f"Apply {total} change(s) on {len(changing)} host(s)?", yes=yes)
        applied = run.apply(plans, None if quiet else console)
        outcomes = [o for o in planned if not o.ok] + list(applied)
        order = {h.hostname: i for i, h in enumerate(hosts)}
        outcomes.sort(key=lambda o: order[o.host.hostname])
        failed = any(
            not o.ok or (isinstance(o.result, HostResult) and o.result.status is Status.BLOCKED) for o in outcomes
        )
        code = ExitCode.FAILURE if failed else ExitCode.OK
        _finish(console, output, outcomes, dry_run=False, run=run, code=code, title=f"{command}: result")
        return code
    finally:
        run.close()


def _code(planned: Sequence[object], plans: Sequence[HostPlan]) -> ExitCode:
    if len(plans) != len(planned) or any(p.blocked for p in plans):
        return ExitCode.FAILURE
    return ExitCode.OK


def _finish(
    console: Console,
    output: Output,
    outcomes: Sequence[object],
    *,
    dry_run: bool,
    run: FirewallRun,
    code: ExitCode,
    title: str,
) -> None:
    if output is Output.JSON:
        report.print_json(
            report.firewall_json(
                outcomes,  # type: ignore[arg-type]
                dry_run=dry_run,
                accepted=run.accepted.entries,
                exit_code=code,
            )
        )
        return
    if dry_run:
        report.firewall_plans(console, outcomes)  # type: ignore[arg-type]
    report.firewall_summary(console, outcomes, title)  # type: ignore[arg-type]
    for host, key in run.accepted.entries:
        console.print(f"[yellow]accepted new host key[/] for {host}: {key} (recorded in {run.ssh.known_hosts})")
