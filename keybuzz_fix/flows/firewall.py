"""The imperative shell of the SSH-side commands (``ufw``, ``overlay``).

Plan on every host, show the plan, ask once, apply, report. The result fails when any host failed
or needs the operator, so a cron job or CI step notices.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from keybuzz_fix.flows import Connections
from keybuzz_fix.hosts.ufw.apply import FirewallRun
from keybuzz_fix.hosts.ufw.plan import FirewallResult, HostExtra, HostOutcome
from keybuzz_fix.hosts.ufw.rules import UfwRule
from keybuzz_fix.inventory import Host
from keybuzz_fix.report.hosts import FirewallView
from keybuzz_fix.report.output import Output

if TYPE_CHECKING:
    from rich.console import Console


def run_firewall(
    console: Console,
    reach: Connections,
    *,
    command: str,
    hosts: Sequence[Host],
    rules: Sequence[UfwRule],
    enable: bool,
    dry_run: bool,
    yes: bool,
    output: Output,
    extra: HostExtra | None = None,
) -> FirewallResult:
    """Open ``rules`` on every host (plan, show, confirm, apply, read back); return how every host ended."""
    view = FirewallView(console, output)
    run = FirewallRun(
        hosts=hosts,
        desired=lambda _h: list(rules),
        ssh=reach.ssh,
        command=command,
        enable=enable,
        concurrency=reach.concurrency,
        extra=extra,
    )
    try:
        planned = run.plan(view.progress())
        changing = [o for o in planned if o.changes]
        if dry_run or not changing:
            result = _result(run, planned, dry_run=dry_run)
            view.finish(
                result, f"{command}: plan (dry run, nothing changed)" if dry_run else f"{command}: nothing to do"
            )
            return result
        view.plans(planned)
        total = sum(len(o.changes) for o in changing)
        view.confirm(f"Apply {total} change(s) on {len(changing)} host(s)?", yes=yes)
        result = _result(run, run.apply(planned, view.progress()), dry_run=False)
        view.finish(result, f"{command}: result")
        return result
    finally:
        run.close()


def _result(run: FirewallRun, outcomes: Sequence[HostOutcome], *, dry_run: bool) -> FirewallResult:
    known_hosts = run.ssh.known_hosts or run.accepted.where
    return FirewallResult(run.command, tuple(outcomes), dry_run, tuple(run.accepted.entries), known_hosts)
