"""What ``diagnose`` shows: the path matrix, the ranked causes with their evidence and fixes, or JSON."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
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


_PATH_WIDTH = len("node → underlay DF") + 4  # the widest path label, with the table's borders and padding


def fitting(nodes: list[str], width: int) -> list[list[str]]:
    """Split the matrix's node columns into parts that each fit ``width`` with the path column; at least one a part."""
    parts: list[list[str]] = [[]]
    used = _PATH_WIDTH
    for node in nodes:
        need = max(len(node), len("99/99")) + 3
        if parts[-1] and used + need > width:
            parts.append([])
            used = _PATH_WIDTH
        parts[-1].append(node)
        used += need
    return parts if nodes else []


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
    title = "paths probed, from a pod and from the node (ok/probed)"
    for part, nodes in enumerate(fitting(list(grid), console.width)):
        # too many nodes for the width: the matrix in parts, each node's name whole (never "k8s-wor…")
        table = Table(title=title if part == 0 else None, title_justify="left")
        table.add_column("path", no_wrap=True)
        for node in nodes:
            table.add_column(node, justify="center", no_wrap=True)
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
    notes: dict[str, list[str]] = {}  # what was said of each node, grouped below by what was said
    for n in found.nodes:
        if n.error:
            console.print(f"[bold red]{escape(n.name)}[/]: {escape(n.error)}")
        elif n.capture is not None and not n.capture.pod:
            notes.setdefault("no pod network namespace (/var/run/netns/cni-*): probed from the node only", []).append(
                n.name
            )
        if n.capture is not None:
            missing = unprobed(n.capture.probes)
            if missing:
                notes.setdefault(f"not probed (no tool): {', '.join(missing)}", []).append(n.name)
            if not n.capture.complete:
                notes.setdefault("capture cut short", []).append(n.name)
    for note, names in notes.items():
        console.print(f"[yellow]{escape(host_list(names))}[/]: {escape(note)}")
    if found.cluster.error:
        console.print(f"[yellow]API side not read[/]: {escape(found.cluster.error)}")
    problems = [f for f in found.findings if f.problem]
    for i, f in enumerate(problems, start=1):
        console.print(
            f"\n[bold]{i}. {f.cause.value}[/] — {escape(f.title)} — "
            f"[{styles[f.status]}]{f.status.value}[/]: {escape(f.summary)}"
        )
        for wheres, lines in grouped_evidence(f.evidence, addresses(found)):
            console.print(f"   [bold]{escape(host_list(wheres))}[/]")
            for line in lines[:12]:
                console.print(f"     {escape(line)}")
            if len(lines) > 12:
                console.print(f"     [dim]… {len(lines) - 12} more line(s): -o json has every line[/]")
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
    unchecked = gaps(found)
    if not healthy(found.findings, found.paths):
        verdict = "[bold red]not healthy[/]"
    elif unchecked:  # nothing wrong was seen, but not everything was looked at: never a plain "healthy"
        verdict = f"[bold yellow]no problem found, but not everything was checked[/] ({escape('; '.join(unchecked))})"
    else:
        verdict = "[bold green]healthy[/]"
    console.print(
        f"\n{verdict}: {len(problems)} problem finding(s), {failed}/{len(found.paths)} path(s) fail, "
        f"in {found.seconds:.1f} s"
    )


def gaps(found: Diagnosis) -> list[str]:
    """Return what was not checked: causes, probes without their tool, nodes without a pod namespace, the API."""
    out = [f"{f.cause.value} not checked" for f in found.findings if f.status is Status.NOT_CHECKED and not f.info]
    notool: dict[str, list[str]] = {}
    nopod: list[str] = []
    for n in found.nodes:
        if n.capture is None:
            continue
        for probe in unprobed(n.capture.probes):
            notool.setdefault(probe, []).append(n.name)
        if not n.capture.pod:
            nopod.append(n.name)
    out += [f"{probe} not probed on {host_list(names)} (no tool)" for probe, names in notool.items()]
    if nopod:
        out.append(f"no probe from a pod on {host_list(nopod)}")
    if found.cluster.error:
        out.append("API side not read")
    return out


def unprobed(probes: Iterable[Any]) -> list[str]:
    """Return the paths not probed for want of a tool, named as the matrix names them (``pod → DNS svc``)."""
    kinds = {(p.source, p.kind) for p in probes if p.result == "notool"}
    order = {c: i for i, c in enumerate(COLUMNS)}
    return [f"{source} → {HEADS.get(kind, kind)}" for source, kind in sorted(kinds, key=lambda c: order.get(c, 99))]


_NUMBERED = re.compile(r"^(.*?)(\d+)$")


def host_list(names: Iterable[str]) -> str:
    """Return host names sorted and listed once, runs folded: ``k8s-worker-01..05`` for five numbered names in a row."""
    out: list[str] = []
    run: list[tuple[str, str]] = []  # (prefix, digits) of the current run

    def flush() -> None:
        if len(run) > 2:
            out.append(f"{run[0][0]}{run[0][1]}..{run[-1][1]}")
        else:
            out.extend(f"{a}{b}" for a, b in run)
        run.clear()

    for name in sorted(set(names)):
        m = _NUMBERED.match(name)
        if m and run:
            prefix, digits = run[-1]
            if m[1] == prefix and len(m[2]) == len(digits) and int(m[2]) == int(digits) + 1:
                run.append((m[1], m[2]))
                continue
        flush()
        if m:
            run.append((m[1], m[2]))
        else:
            out.append(name)
    flush()
    return ", ".join(out)


def addresses(found: Diagnosis) -> dict[str, str]:
    """Return every node's known address -> its name (servers.tsv or the captures, and the Nodes' InternalIP)."""
    out = {n.address: n.name for n in found.nodes if n.address}
    for api in found.cluster.nodes:
        if api.internal_ip:
            out.setdefault(api.internal_ip, api.name)
    return out


def grouped_evidence(
    evidence: Mapping[str, Sequence[str]], known: Mapping[str, str]
) -> list[tuple[list[str], list[str]]]:
    """Group the evidence of hosts that saw the same thing: ``[(hosts, lines)]``, each block shown once.

    In each host's lines its own address reads "this node" and the other nodes' addresses "another node",
    so that the same rule missing on eight hosts is one block; identical lines in a row fold into one
    with a count ("(×7)"). ``-o json`` keeps every line as captured.
    """
    if not known:
        pattern = None
    else:
        pattern = re.compile(
            r"(?<![\d.])(" + "|".join(re.escape(a) for a in sorted(known, key=len, reverse=True)) + r")(?![\d.])"
        )
    blocks: dict[tuple[str, ...], list[str]] = {}
    for where, lines in evidence.items():
        own = {a for a, name in known.items() if name == where}

        def general(line: str, own: set[str] = own) -> str:
            if pattern is None:
                return line
            return pattern.sub(lambda m: "this node" if m[1] in own else "another node", line)

        folded: list[str] = []
        last, count = None, 0
        for line in [*(general(x) for x in lines), None]:
            if line == last:
                count += 1
                continue
            if last is not None:
                folded.append(last + (f" (×{count})" if count > 1 else ""))
            last, count = line, 1
        blocks.setdefault(tuple(folded), []).append(where)
    return [(wheres, list(lines)) for lines, wheres in blocks.items()]


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
        "command": "diagnose",
        "healthy": healthy(found.findings, found.paths),
        "not_checked": gaps(found),
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
