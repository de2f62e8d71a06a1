"""What the operator reads: wording of the report layer (pure, a recording console)."""

from __future__ import annotations

from rich.console import Console

from keybuzz_fix.report.changes import ChangeView
from keybuzz_fix.report.output import Output


def _view() -> tuple[ChangeView, Console]:
    console = Console(record=True, width=200, force_terminal=False)
    return ChangeView(console, Output.TEXT, "convert"), console


def test_a_check_before_the_prompt_does_not_call_itself_a_dry_run():
    view, console = _view()
    view.accepted_by_server(8, before_confirm=True)
    text = console.export_text()
    assert text.strip() == "checked: the API server accepted all 8 change(s) (server-side dry run)"
    assert "nothing changed" not in text


def test_a_dry_run_says_nothing_changed():
    view, console = _view()
    view.accepted_by_server(8)
    assert console.export_text().strip() == (
        "dry run: the API server accepted all 8 change(s) (server-side dry run); nothing changed"
    )


def _route(name: str, status):
    from keybuzz_fix.cluster.ingress import RoutePlan

    desired = {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": {"name": name, "namespace": "kb"}}
    return RoutePlan(desired, None, status)


class _InterruptedAt:
    """An API client whose server-side apply is interrupted (Ctrl-C) at the n-th write."""

    def __init__(self, at: int) -> None:
        self.at, self.calls = at, []

    def apply(self, obj, *, force=False, dry_run=False):
        self.calls.append(obj["metadata"]["name"])
        if len(self.calls) == self.at:
            raise KeyboardInterrupt
        return obj


def test_ctrl_c_while_applying_routes_says_which_were_applied(state_dir):
    import json

    import pytest

    from keybuzz_fix.cluster.ingress import RouteStatus
    from keybuzz_fix.errors import Interrupted
    from keybuzz_fix.flows.ingress import apply_routes

    routes = [
        _route("front", RouteStatus.CREATE),
        _route("same", RouteStatus.UNCHANGED),
        _route("api", RouteStatus.UPDATE),
        _route("extra", RouteStatus.CREATE),
    ]
    kube = _InterruptedAt(2)
    with pytest.raises(Interrupted) as stopped:
        apply_routes(kube, routes, force=False, command="ingress")
    assert kube.calls == ["front", "api"]  # the third write was never sent
    assert str(stopped.value) == (
        "interrupted (Ctrl-C) while applying the Ingress routes: applied: kb/front; "
        "in flight, may or may not be applied: kb/api; not applied: kb/extra; re-run ingress to finish"
    )
    log = [json.loads(line) for line in (state_dir / "audit.jsonl").read_text().splitlines()]
    assert [(e["where"], e["outcome"]) for e in log] == [("Ingress kb/front", "ok"), ("Ingress kb/api", "unknown")]


def test_the_all_question_names_the_cluster_the_inventory_and_counts_deletions(tmp_path):
    from keybuzz_fix.cluster.changes import Change, Verb
    from keybuzz_fix.report.steps import Target, question

    target = Target("https://10.0.0.100:6443", "kubeconfig /k, context prod", tmp_path / "servers.tsv", 5, "keybuzz")
    convert = [
        Change(Verb.APPLY, "DaemonSet", "keybuzz", "keybuzz-api", "create"),
        Change(Verb.NONE, "Service", "keybuzz", "keybuzz-front", "already"),
        Change(Verb.DELETE, "HorizontalPodAutoscaler", "keybuzz", "keybuzz-api", "delete"),
        Change(Verb.DELETE, "Deployment", "keybuzz", "keybuzz-api", "delete"),
        Change(Verb.DELETE, "Deployment", "keybuzz", "keybuzz-front", "delete"),
    ]
    assert question(target, 5, convert, 2) == (
        f"Apply to cluster https://10.0.0.100:6443 (kubeconfig /k, context prod); 5 worker(s) from "
        f"{tmp_path / 'servers.tsv'}: ufw on 5 worker(s); convert: 4 change(s) in namespace keybuzz, deleting "
        "1 HorizontalPodAutoscaler(s), 2 Deployment(s); 2 Ingress route(s); then validate?"
    )
    # only what changes is asked about
    only_routes = question(target, 0, [Change(Verb.NONE, "Service", "keybuzz", "keybuzz-front", "already")], 2)
    assert only_routes.endswith("5 worker(s) from " + f"{tmp_path / 'servers.tsv'}: 2 Ingress route(s); then validate?")


def _host(name: str = "k8s-worker-04", ip: str = "127.0.0.1"):
    from keybuzz_fix.inventory import Host

    return Host(name, ip, None, "root", "prod", "k3s", "worker")


def test_a_refused_ssh_connection_is_said_in_the_tools_words(tmp_path):
    import socket

    import pytest

    from keybuzz_fix.errors import HostUnreachable
    from keybuzz_fix.hosts.ssh import open_session
    from keybuzz_fix.hosts.sshoptions import SshOptions

    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there now: a real refusal
    (tmp_path / "known_hosts").write_text("")
    (tmp_path / "ssh_config").write_text(f"Host *\n    Port {port}\n")
    options = SshOptions(
        known_hosts=tmp_path / "known_hosts",
        ssh_config=tmp_path / "ssh_config",
        system_ssh_config=None,
        connect_timeout=3,
    )
    with pytest.raises(HostUnreachable) as failed:
        open_session(_host(), options)
    message = str(failed.value)
    assert message == (
        f"k8s-worker-04: cannot connect to 127.0.0.1:{port}: connection refused: nothing listens on the SSH port "
        "(sshd down?)"
    )
    assert "Errno" not in message and "Unable to connect" not in message


def test_all_names_each_stuck_worker_and_how_to_go_on():
    from keybuzz_fix.errors import HostUnreachable
    from keybuzz_fix.hosts.ufw.run import HostOutcome, HostStatus
    from keybuzz_fix.report.steps import stuck_workers

    dead = HostOutcome(
        _host(), HostStatus.FAILED, error=HostUnreachable("k8s-worker-04", "cannot connect to 10.0.0.104:22: timed out")
    )
    text = stuck_workers([dead])
    assert text.startswith(
        "ufw: 1 worker(s) cannot be changed safely: k8s-worker-04 unreachable (cannot connect to 10.0.0.104:22: "
        "timed out); nothing changed; to go on without them"
    )


def test_all_ends_by_pointing_at_diagnose_then_rollback(tmp_path):
    from keybuzz_fix.report.steps import next_steps

    first, then = next_steps(tmp_path / "servers.tsv")
    assert f"`keybuzz-fix diagnose {tmp_path / 'servers.tsv'}` finds why" in first
    assert "`keybuzz-fix rollback --latest`" in then and "leaves the UFW rules and the Ingress routes" in then


def test_all_points_at_rollback_once_diagnose_saw_the_overlay_healthy_and_at_overlay_while_broken(tmp_path):
    import datetime as dt

    from keybuzz_fix.cluster.observed import OverlaySeen
    from keybuzz_fix.report.steps import next_steps

    when = dt.datetime(2026, 11, 30, 7, 50, tzinfo=dt.UTC)
    servers = tmp_path / "servers.tsv"
    (healthy,) = next_steps(servers, OverlaySeen(True, when))
    assert healthy.startswith("diagnose found the overlay healthy at 07:50 UTC: the workaround is no longer needed")
    assert "`keybuzz-fix rollback --latest`" in healthy and "diagnose " + str(servers) not in healthy
    broken, then = next_steps(servers, OverlaySeen(False, when, "ufw-blocks-vxlan"))
    assert "still broken — diagnose found the overlay broken at 07:50 UTC (ufw-blocks-vxlan)" in broken
    assert f"`keybuzz-fix overlay {servers}` fixes what UFW blocks" in broken
    assert then.startswith("Once diagnose says the overlay is healthy, `keybuzz-fix rollback --latest`")
    assert next_steps(servers, OverlaySeen(None, when)) == next_steps(servers)  # not everything checked: as unknown


def test_hosts_with_the_same_ufw_plan_are_shown_once_together():
    import io

    from rich.console import Console

    from keybuzz_fix.hosts.ufw.facts import UfwFacts
    from keybuzz_fix.hosts.ufw.plan import Action, ActionKind
    from keybuzz_fix.hosts.ufw.rules import UfwRule
    from keybuzz_fix.hosts.ufw.run import HostOutcome
    from keybuzz_fix.report.hosts import firewall_plans

    rule = UfwRule(port="31695", proto="tcp", source="10.0.0.0/16")
    add = Action(ActionKind.ADD, "missing", rule=rule)
    kept = Action(ActionKind.NOOP, "already open by rule 2", rule=rule)
    outcomes = [
        HostOutcome.planned(_host(f"k8s-worker-0{i}", f"10.0.0.1{i}"), UfwFacts(True, True), [add]) for i in (1, 2)
    ] + [HostOutcome.planned(_host("k8s-worker-03", "10.0.0.13"), UfwFacts(True, True), [kept])]
    out = io.StringIO()
    firewall_plans(Console(file=out, width=300, color_system=None), outcomes)
    assert out.getvalue().splitlines() == [
        "k8s-worker-01 (10.0.0.11), k8s-worker-02 (10.0.0.12): ufw active",
        f"  + {rule.command()}",
        "k8s-worker-03 (10.0.0.13): ufw active",
        "  = already open by rule 2",
    ]
