"""``all`` before its prompt: one page (each change on one line, the diffs left to -v), then a summary."""

from __future__ import annotations

import io
from pathlib import Path

from rich.console import Console

from keybuzz_fix import config
from keybuzz_fix.cluster.convert import plan_convert
from keybuzz_fix.cluster.objects import parse_objects
from keybuzz_fix.cluster.observed import observed_from_objects
from keybuzz_fix.inventory import Host
from keybuzz_fix.report.changes import ChangeView
from keybuzz_fix.report.output import PlanOutput
from keybuzz_fix.report.steps import StepLog, plan_summary

CFG = config.load_config()
STATE = Path(__file__).parent.parent / "data" / "convert" / "01-kubectl-list" / "state.yaml"


def the_plan():  # type: ignore[no-untyped-def]
    objs = parse_objects(STATE.read_text(), str(STATE))
    return plan_convert(CFG, observed_from_objects(objs, CFG))


def shown(*, diffs: bool) -> list[str]:
    out = io.StringIO()
    view = ChangeView(Console(file=out, width=400, color_system=None), PlanOutput.TEXT, "convert", diffs=diffs)
    plan = the_plan()
    view.plan("convert: plan", plan.changes, warnings=plan.warnings, notes=plan.notes, shown_env=plan.shown_env)
    return out.getvalue().splitlines()


def test_without_v_each_change_is_one_line_and_the_warnings_stay() -> None:
    short, full = shown(diffs=False), shown(diffs=True)
    plan = the_plan()
    # the title, one line per change, the notes, the warnings: no diff line (all says once what -v adds)
    apps = {n.split(": ")[0] for n in plan.notes}  # the notes about one app on one line
    assert len(short) == 1 + len(plan.changes) + len(apps) + len(plan.warnings), short
    for app in apps:
        (joined,) = [line for line in short if line.startswith(f"  note {app}: ")]
        assert all(n.split(": ", 1)[1] in joined for n in plan.notes if n.startswith(f"{app}: "))
    assert sum(line.lstrip().startswith(("+", "-", "@@")) for line in full) > 20  # the diffs are what -v adds
    assert not any(line.lstrip().startswith(("+", "-", "@@")) for line in short)
    assert len(short) * 3 < len(full), (len(short), len(full))
    assert [line for line in short if "warning" in line] == [line for line in full if "warning" in line] != []
    assert not any("--show-values" in line for line in short)  # no value is shown, none is masked


class _Planned:
    """A worker's UFW plan as the summary reads it: its host and its rule changes."""

    def __init__(self, name: str, changes: int) -> None:
        self.host = Host(name, "198.18.0.1", None, "root", "prod", "k3s", "worker")
        self.changes = ["rule"] * changes


def test_the_summary_says_what_changes_what_is_deleted_and_the_warnings() -> None:
    plan = the_plan()
    planned = [_Planned("k8s-worker-01", 6), _Planned("k8s-worker-02", 6), _Planned("k8s-worker-03", 0)]
    lines = plan_summary(planned, plan.changes, 2, plan.warnings)  # type: ignore[arg-type]
    assert lines[0] == "ufw: 12 rule(s) to add on 2 of 3 worker(s)"
    assert lines[1].startswith(f"convert: {sum(1 for c in plan.changes if c.changes)} change(s), deleting ")
    assert "2 Deployment(s)" in lines[1] and "2 HorizontalPodAutoscaler(s)" in lines[1]
    assert lines[2] == "ingress: 2 route(s) to apply"
    assert [line for line in lines if line.startswith("warning: ")] == [f"warning: {w}" for w in plan.warnings]
    assert any("API_INTERNAL_URL" in line and "ClusterIP Service" in line for line in lines)
    out = io.StringIO()
    StepLog(Console(file=out, width=400, color_system=None)).plan_summary(lines)
    printed = out.getvalue().splitlines()
    assert printed[0] == "summary" and printed[1] == "  " + lines[0] and len(printed) == len(lines) + 1


def test_ctrl_c_while_planning_names_the_step_and_says_nothing_changed() -> None:
    from keybuzz_fix.flows.allplan import while_planning as _while_planning

    log = StepLog(Console(file=io.StringIO(), color_system=None))
    assert str(_while_planning(log)) == "interrupted while planning (ufw); nothing changed"
    log.record("ufw", "planned", "30 rule change(s)", 0.3, show=False)
    assert str(_while_planning(log)) == "interrupted while planning (convert); nothing changed"  # a raw Ctrl-C
    log.record("convert", "interrupted", "interrupted (Ctrl-C): …; re-run convert to finish", 0.1, show=False)
    assert str(_while_planning(log)) == "interrupted while planning (convert); nothing changed"
