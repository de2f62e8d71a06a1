"""Turn the measurements into the measured block of RESULTS.md (and keep the raw data as JSON)."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.timing import Sample, Summary

BEGIN = "<!-- measured: written by benchmarks/run; edit outside this block -->"
END = "<!-- end of measured block -->"


def _s(x: float) -> str:
    return f"{x:.2f}"


def _cell(summary: Summary) -> str:
    return f"{_s(summary.wall)} ({_s(summary.wall_min)}–{_s(summary.wall_max)})"


def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _target(name: str, measured: float | None, limit: float, unit: str = "×") -> str:
    if measured is None:
        return f"| {name} | not measured | ≤ {limit:g}{unit} | – |"
    verdict = "met" if measured <= limit else "**missed**"
    return f"| {name} | {measured:.2f}{unit} | ≤ {limit:g}{unit} | {verdict} |"


def render(data: dict[str, Any]) -> str:
    """Return the measured block (markdown) for the data of one benchmarks/run."""
    lines = [BEGIN, "", f"Measured {data['date']} with `{data['command']}` in {data['total_s'] / 60:.1f} min.", ""]
    lines += ["| | |", "| --- | --- |"]
    lines += [f"| {k} | {v} |" for k, v in data["machine"].items()]
    q = data["quiet"]
    lines += [
        f"| load before the run | {q['load']:.2f} (1-min average; waited {q['waited_s']} s for a quiet machine"
        + ("" if q["quiet"] else f"; **not quiet**: {len(q['others'])} other test process(es)")
        + ") |"
    ]
    lines += [
        f"| load during the runs | median {data['load_median']:.2f}, max {data['load_max']:.2f} "
        "(1-min average at the start of each run; includes the benchmark's own previous run) |"
    ]
    others = data.get("others_seen") or []
    names = sorted({" ".join(o.split()[1:4])[:70] for o in others})
    lines += [
        f"| other test processes seen between runs | {len(set(others))}"
        + (": " + "; ".join(f"`{n}`" for n in names[:6]) if names else "")
        + " |",
        "",
    ]
    if data.get("errors"):
        lines += [
            "**Parts that failed in this run** (their numbers are missing below):",
            "",
            *[f"- {e}" for e in data["errors"]],
            "",
        ]
    ufw = data.get("ufw") or {}
    if ufw:
        lines += _ufw_tables(ufw)
    lines += _startup_table(data.get("startup") or {})
    if "cluster" in data:
        lines += _cluster_tables(data["cluster"])
    else:
        lines += ["### `convert` and `validate`", "", "Not run in this invocation (see `--only`).", ""]
    lines += ["### Targets", "", "| target | measured | limit | |", "| --- | --- | --- | --- |"]
    lines += _targets(data)
    lines += ["", END]
    return "\n".join(lines)


def _ufw_tables(ufw: dict[str, Any]) -> list[str]:
    lines = [
        "### `ufw` on K lab hosts",
        "",
        "Seconds, median (min–max) of the runs; CPU = user + sys of the command's whole process tree "
        "(ssh clients and Ansible workers included); machine CPU = every process on the machine during "
        "the run, the lab hosts' sshd and ufw included (they run on the same 2 cores).",
        "",
        "| K | tool | runs | cold: wall | cold: CPU | cold: machine CPU | no-op: wall | no-op: CPU "
        "| no-op: machine CPU |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for k, entry in sorted(ufw.items(), key=lambda kv: int(kv[0])):
        for tool, modes in entry["summary"].items():
            c, n = modes["cold"], modes["no-op"]
            lines.append(
                f"| {k} | {tool} | {c.n} | {_cell(c)} | {_s(c.cpu)} | {_s(c.machine_cpu)} | {_cell(n)} "
                f"| {_s(n.cpu)} | {_s(n.machine_cpu)} |"
            )
    lines.append("")
    ks = sorted(ufw, key=int)
    per_host = []
    for k in ks:
        hs = ufw[k]["kbf_host_seconds"]
        per_host.append(f"K={k}: cold {_s(_median(hs['cold']))} s, no-op {_s(_median(hs['no-op']))} s")
    lines += [
        "keybuzz-fix's own per-host time as its JSON reports it (cold: the apply and read-back round "
        "trip; no-op: connecting and probing), median: " + "; ".join(per_host) + ".",
        "",
    ]
    peaks = [
        f"K={k}: {ufw[k]['kbf_peaks'][0]} fds, {ufw[k]['kbf_peaks'][1]} threads" for k in ks if "kbf_peaks" in ufw[k]
    ]
    if peaks:
        lines += [
            "keybuzz-fix's most open file descriptors and threads at once (sampled every 10 ms): "
            + "; ".join(peaks)
            + ".",
            "",
        ]
    if len(ks) >= 2:
        lo, hi = ks[0], ks[-1]
        span = int(hi) - int(lo)
        rows = []
        for tool in ufw[hi]["summary"]:
            a, b = ufw[lo]["summary"][tool]["cold"], ufw[hi]["summary"][tool]["cold"]
            rows.append(
                f"| {tool} | {_s((b.cpu - a.cpu) / span)} | {_s((b.machine_cpu - a.machine_cpu) / span)} "
                f"| {_s((b.wall - a.wall) / span)} |"
            )
        lines += [
            f"Marginal cost of one more host (cold, slope from K={lo} to K={hi}):",
            "",
            "| tool | client CPU s/host | machine CPU s/host | wall s/host |",
            "| --- | ---: | ---: | ---: |",
            *rows,
            "",
        ]
    return lines


def _startup_table(startup: dict[str, Summary]) -> list[str]:
    if not startup:
        return []
    floor = startup.get('python -c "import typer, rich"')
    lines = [
        "### Start-up",
        "",
        "| command | runs | wall s | CPU s | CPU ÷ typer+rich import |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, s in startup.items():
        ratio = f"{s.cpu / floor.cpu:.2f}" if floor else "–"
        lines.append(f"| `{name}` | {s.n} | {_cell(s)} | {_s(s.cpu)} | {ratio} |")
    return [*lines, ""]


def _cluster_tables(cluster: dict[str, Any]) -> list[str]:
    found = cluster.get("commands", {})
    lines = ["### `convert` on the test control plane", ""]
    if cluster.get("convert"):
        runs = cluster["convert"]
        lines += ["| | median | min–max |", "| --- | ---: | ---: |"]
        for key, label in (
            ("tool_to_ready", "convert: start → DaemonSets ready (s)"),
            ("controller", "DaemonSet controller: first created → all ready (s)"),
            ("overhead", "added by the tool (s)"),
            ("first_ds_created", "start → first DaemonSet created (s)"),
            ("wall", "convert: whole run, to exit (s)"),
            ("cpu", "convert: CPU (s)"),
        ):
            vals = [r[key] for r in runs]
            lines.append(f"| {label} | {_s(_median(vals))} | {_s(min(vals))}–{_s(max(vals))} |")
    else:
        lines.append(
            "**Not measured**: `keybuzz-fix convert` "
            + ("failed" if found.get("convert") else "does not exist in this tree yet")
            + "; benchmarks/run measures it as soon as it does."
        )
    lines += ["", "### `validate` against its slowest check", ""]
    if cluster.get("validate"):
        lines += [
            "| | process wall s | scorecard s | slowest check s | CPU s | process ÷ slowest | scorecard ÷ slowest |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for label, runs in cluster["validate"].items():
            w, t, sl = ([r[k] for r in runs] for k in ("wall", "in_tool", "slowest_check"))
            lines.append(
                f"| `validate`{' --extended' if label == 'extended' else ''} ({len(runs)} runs) "
                f"| {_s(_median(w))} | {_s(_median(t))} | {_s(_median(sl))} "
                f"| {_s(_median([r['cpu'] for r in runs]))} "
                f"| {_median([a / b for a, b in zip(w, sl, strict=True)]):.2f} "
                f"| {_median([a / b for a, b in zip(t, sl, strict=True)]):.2f} |"
            )
    else:
        lines.append(
            "**Not measured**: `keybuzz-fix validate` "
            + ("failed" if found.get("validate") else "does not exist in this tree yet")
            + "; benchmarks/run measures it as soon as it does."
        )
    return [*lines, ""]


def _targets(data: dict[str, Any]) -> list[str]:
    ufw = data.get("ufw") or {}

    def cold(k: str, tool: str) -> Summary | None:
        return ufw.get(k, {}).get("summary", {}).get(tool, {}).get("cold")

    kbf20, loop20, ans20, kbf5 = (
        cold("20", "keybuzz-fix"),
        cold("20", "ssh loop"),
        cold("20", "ansible"),
        cold("5", "keybuzz-fix"),
    )
    rows = [
        _target(
            "`ufw` on 20 hosts ÷ sequential ssh loop (cold, wall)",
            kbf20.wall / loop20.wall if kbf20 and loop20 else None,
            0.25,
        ),
        _target("`ufw` on 20 hosts ÷ Ansible (cold, wall)", kbf20.wall / ans20.wall if kbf20 and ans20 else None, 0.33),
        _target("`ufw` 5 → 20 hosts growth (cold, wall)", kbf20.wall / kbf5.wall if kbf20 and kbf5 else None, 1.6),
    ]
    startup = data.get("startup") or {}
    helps, floor = startup.get("keybuzz-fix --help"), startup.get('python -c "import typer, rich"')
    rows.append(
        _target("`--help` ÷ `import typer, rich` (CPU)", helps.cpu / floor.cpu if helps and floor else None, 1.5)
    )
    rows.append(
        _target("`--help` ÷ `import typer, rich` (wall)", helps.wall / floor.wall if helps and floor else None, 1.5)
    )
    cluster = data.get("cluster") or {}
    v = (cluster.get("validate") or {}).get("plain")
    rows.append(
        _target(
            "`validate` ÷ its slowest check (process wall)",
            _median([r["wall"] / r["slowest_check"] for r in v]) if v else None,
            1.3,
        )
    )
    rows.append(
        _target(
            "`validate` ÷ its slowest check (scorecard, in process)",
            _median([r["in_tool"] / r["slowest_check"] for r in v]) if v else None,
            1.3,
        )
    )
    c = cluster.get("convert")
    rows.append(
        _target(
            "`convert` over the controller's readiness time",
            _median([r["overhead"] for r in c]) if c else None,
            2.0,
            " s",
        )
    )
    return rows


def write(path: Path, block: str) -> None:
    """Replace the measured block of RESULTS.md (or create the file around it)."""
    text = path.read_text() if path.exists() else "# Benchmarks\n\n" + BEGIN + "\n" + END + "\n"
    head, sep, rest = text.partition(BEGIN)
    if not sep:
        path.write_text(text.rstrip("\n") + "\n\n" + block + "\n")
        return
    _, sep2, tail = rest.partition(END)
    path.write_text(head + block + (tail if sep2 else "\n"))


def summarize_ufw(samples: dict[str, dict[str, list[Sample]]]) -> dict[str, dict[str, Summary]]:
    """Summaries per tool and mode."""
    return {tool: {mode: Summary.of(s) for mode, s in modes.items() if s} for tool, modes in samples.items()}
