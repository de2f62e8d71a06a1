"""What ``diagnose`` shows: the ping matrix and the ranked findings with their evidence and fixes, or JSON."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from keybuzz_fix.checks.diagnose import Certainty, Diagnosis, Finding, healthy, matrix
from keybuzz_fix.errors import ExitCode
from keybuzz_fix.report.hosts import host_entry
from keybuzz_fix.report.output import Output, print_json

if TYPE_CHECKING:
    from rich.console import Console


def show_diagnosis(console: Console, found: Diagnosis, output: Output) -> None:
    """Show a diagnosis in the format asked for."""
    if output is Output.JSON:
        print_json(diagnosis_json(found))
    else:
        diagnosis_text(console, found)


def diagnosis_text(console: Console, found: Diagnosis) -> None:
    """Print the probe matrix and the ranked findings with their evidence and fixes."""
    from rich.markup import escape
    from rich.table import Table

    findings, nodes, cluster = found.findings, found.nodes, found.cluster
    styles = {
        Certainty.CONFIRMED: "bold red",
        Certainty.SUSPECTED: "bold yellow",
        Certainty.NOT_CHECKED: "yellow",
        Certainty.OK: "green",
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
    for host, key in found.accepted:
        console.print(f"[yellow]accepted new host key[/] for {host}: {key}")
    verdict = "[bold green]overlay healthy[/]" if healthy(findings) else "[bold red]overlay not healthy[/]"
    console.print(f"\n{verdict} ({sum(f.problem for f in findings)} problem finding(s)) in {found.seconds:.1f} s")


def diagnosis_json(found: Diagnosis) -> dict[str, Any]:
    """Return the machine-readable diagnosis."""
    hosts = []
    for n in found.nodes:
        entry = {**host_entry(n.host), "status": "failed" if n.error and n.facts is None else "probed"}
        if n.error:
            entry["error"] = n.error
        if n.facts is not None:
            entry.update(kernel=n.facts.kernel, tools=sorted(n.facts.tools), flannel_address=n.facts.flannel_addr)
        hosts.append(entry)
    cluster = found.cluster
    return {
        "command": "diagnose",
        "healthy": healthy(found.findings),
        "exit_code": int(ExitCode.of(found)),
        "seconds": round(found.seconds, 3),
        "findings": [dict(rank=i, **finding_json(f)) for i, f in enumerate(found.findings, start=1)],
        "matrix": matrix(found.nodes),
        "hosts": hosts,
        "cluster": {
            "read": cluster.error is None,
            "error": cluster.error,
            "dns_ip": cluster.dns_ip,
            "nodes": len(cluster.nodes),
        },
        "accepted_host_keys": [{"host": h, "key": k} for h, k in found.accepted],
    }


def finding_json(finding: Finding) -> dict[str, Any]:
    """Return one finding as ``diagnose -o json`` prints it."""
    return {
        "check": finding.check.value,
        "title": finding.title,
        "status": finding.status.value,
        "summary": finding.summary,
        "hosts": list(finding.hosts),
        "evidence": {h: list(lines) for h, lines in finding.evidence.items()},
        "not_checked": dict(finding.not_checked),
        "fix": finding.fix,
    }
