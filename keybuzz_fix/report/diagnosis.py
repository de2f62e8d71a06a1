"""What ``diagnose`` shows: the path matrix, the ranked causes with their evidence and fixes, or JSON."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from keybuzz_fix.checks.diagnose import Diagnosis, Finding, Path, Status, healthy
from keybuzz_fix.errors import ExitCode
from keybuzz_fix.report.output import Output, print_json

if TYPE_CHECKING:
    from rich.console import Console

COLUMNS = (
    ("pod", "pod"),
    ("pod", "pod-big"),
    ("pod", "api"),
    ("pod", "dns"),
    ("pod", "dns-pod"),
    ("pod", "nodeport"),
    ("node", "api"),
    ("node", "dns"),
    ("node", "dns-pod"),
    ("node", "nodeport"),
    ("node", "underlay"),
    ("node", "underlay-big"),
    ("node", "vtep"),
    ("node", "vtep-big"),
)
HEADS = {
    "pod": "pod IP",
    "pod-big": "pod IP DF",
    "api": "kubernetes",
    "dns": "DNS svc",
    "dns-pod": "DNS pod",
    "nodeport": "NodePort",
    "underlay": "underlay",
    "underlay-big": "underlay DF",
    "vtep": "VTEP",
    "vtep-big": "VTEP DF",
}


def show_diagnosis(console: Console, found: Diagnosis, output: Output) -> None:
    """Show a diagnosis in the format asked for."""
    if output is Output.JSON:
        print_json(diagnosis_json(found))
    else:
        diagnosis_text(console, found)


def cells(paths: tuple[Path, ...]) -> dict[str, dict[str, tuple[int, int]]]:
    """Return ``{node: {"pod/dns": (ok, probed)}}``: the path matrix, counted."""
    out: dict[str, dict[str, tuple[int, int]]] = {}
    for p in paths:
        key = f"{p.source}/{p.kind}"
        ok, total = out.setdefault(p.src, {}).get(key, (0, 0))
        out[p.src][key] = (ok + (1 if p.ok else 0), total + 1)
    return out


def diagnosis_text(console: Console, found: Diagnosis) -> None:
    """Print the path matrix, the problem findings with their evidence and fixes, then what was ruled out."""
    from rich.markup import escape
    from rich.table import Table

    styles = {
        Status.CONFIRMED: "bold red",
        Status.LIKELY: "bold yellow",
        Status.NOT_CHECKED: "yellow",
        Status.OK: "green",
    }
    grid = cells(found.paths)
    nodes = list(grid)
    if grid:
        table = Table(title="paths probed, from a pod and from the node (ok/probed)", title_justify="left")
        table.add_column("path")
        for node in nodes:
            table.add_column(node, justify="center")
        for source, kind in COLUMNS:
            key = f"{source}/{kind}"
            if not any(key in row for row in grid.values()):
                continue
            shown = []
            for node in nodes:
                ok, total = grid[node].get(key, (0, 0))
                shown.append(
                    "[dim]-[/]"
                    if not total
                    else f"[green]{ok}/{total}[/]"
                    if ok == total
                    else f"[bold red]{ok}/{total}[/]"
                )
            table.add_row(f"{source} → {HEADS[kind]}", *shown)
        console.print(table)
    for n in found.nodes:
        if n.error:
            console.print(f"[bold red]{escape(n.name)}[/]: {escape(n.error)}")
        elif n.capture is not None and not n.capture.pod:
            console.print(
                f"[yellow]{escape(n.name)}[/]: no pod network namespace (/var/run/netns/cni-*): "
                "probed from the node only"
            )
        if n.capture is not None:
            missing = [p.id for p in n.capture.probes if p.result == "notool"]
            if missing:
                console.print(f"[yellow]{escape(n.name)}[/]: not probed (no tool): {escape(', '.join(missing))}")
            if not n.capture.complete:
                console.print(f"[yellow]{escape(n.name)}[/]: its capture was cut short")
    if found.cluster.error:
        console.print(f"[yellow]API side not read[/]: {escape(found.cluster.error)}")
    problems = [f for f in found.findings if f.problem]
    for i, f in enumerate(problems, start=1):
        console.print(
            f"\n[bold]{i}. {f.cause.value}[/] — {escape(f.title)} — "
            f"[{styles[f.status]}]{f.status.value}[/]: {escape(f.summary)}"
        )
        for where, lines in f.evidence.items():
            console.print(f"   [bold]{escape(where)}[/]")
            for line in lines[:12]:
                console.print(f"     {escape(line)}")
        console.print(f"   [bold]fix:[/] {escape(f.fix)}")
    rest = [f for f in found.findings if not f.problem]
    if rest:
        console.print("\n[bold]also checked[/]")
    for f in rest:
        state = "info" if f.info else f.status.value
        style = "cyan" if f.info else styles[f.status]
        why = "; ".join(f"{h}: {w}" for h, w in f.not_checked.items())
        console.print(
            f"   [{style}]{state:11}[/] {f.cause.value}: {escape(f.summary)}" + (f" ({escape(why)})" if why else "")
        )
    for host, key in found.accepted:
        console.print(f"[yellow]accepted new host key[/] for {host}: {key}")
    failed = sum(p.failed for p in found.paths)
    verdict = "[bold green]healthy[/]" if healthy(found.findings, found.paths) else "[bold red]not healthy[/]"
    console.print(
        f"\n{verdict}: {len(problems)} problem finding(s), {failed}/{len(found.paths)} path(s) fail, "
        f"in {found.seconds:.1f} s"
    )


def diagnosis_json(found: Diagnosis) -> dict[str, Any]:
    """Return the machine-readable diagnosis."""
    hosts = []
    for n in found.nodes:
        entry: dict[str, Any] = {"hostname": n.name, "address": n.address, "status": "failed" if n.error else "probed"}
        if n.error:
            entry["error"] = n.error
        if n.capture is not None:
            entry.update(
                kernel=n.capture.kernel,
                complete=n.capture.complete,
                pod_netns=n.capture.pod.get("netns"),
                tools=sorted(n.capture.tools),
                not_probed=[p.id for p in n.capture.probes if p.result == "notool"],
            )
        hosts.append(entry)
    return {
        "healthy": healthy(found.findings, found.paths),
        "exit_code": int(ExitCode.of(found)),
        "seconds": round(found.seconds, 3),
        "findings": [dict(rank=i, **finding_json(f)) for i, f in enumerate(found.findings, start=1)],
        "paths": [path_json(p) for p in found.paths],
        "hosts": hosts,
        "cluster": {
            "read": found.cluster.error is None,
            "error": found.cluster.error,
            "nodes": len(found.cluster.nodes),
            "objects": found.cluster.objects is not None,
        },
        "accepted_host_keys": [{"host": h, "key": k} for h, k in found.accepted],
    }


def finding_json(finding: Finding) -> dict[str, Any]:
    """Return one finding as ``diagnose -o json`` prints it."""
    return {
        "cause": finding.cause.value,
        "title": finding.title,
        "status": finding.status.value,
        "problem": finding.problem,
        "info": finding.info,
        "summary": finding.summary,
        "hosts": list(finding.hosts),
        "evidence": {h: list(lines) for h, lines in finding.evidence.items()},
        "fix": finding.fix,
        "explains": list(finding.explains),
        "contradicts": list(finding.contradicts),
        "not_checked": dict(finding.not_checked),
    }


def path_json(p: Path) -> dict[str, Any]:
    """Return one probed path."""
    return {
        "node": p.src,
        "from": p.source,
        "kind": p.kind,
        "target": p.probe.target,
        "size": p.probe.size,
        "result": p.probe.result,
        "detail": p.probe.detail,
        "command": p.probe.command,
        "backends": [h.node for h in p.hops],
        "overlay": p.overlay,
        "masquerade": p.masquerade,
    }
