"""The outage and its first repair, end to end: lab workers, the seeded control plane, a real load balancer.

What is real: five worker hosts with their own sshd and UFW (default deny incoming, so the
ingress NodePort 31695 is dropped, as in the outage); Debian's nginx as the load balancer on
a lab address, terminating TLS for platform.keybuzz.io and platform-api.keybuzz.io (certificate
from a test CA, passed with --ca-file) and forwarding both to the workers' NodePort with a short
upstream timeout, answering 504 when no worker answers, as the Hetzner load balancers do; the
API server the cluster checks read. What stands in: each worker's NodePort is a small HTTP
listener answering 200 for both sites, not ingress-nginx; the Kubernetes pods are kwok objects,
not processes, so the cluster and the hosts agree only by construction (same names and
addresses). The URL checks reach the load balancer through --resolve, exactly as an operator
would aim them at one Hetzner load balancer.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from keybuzz_fix.cli import app
from tests.cluster.fixtures import KeybuzzCluster
from tests.lab.hosts import INGRESS_PORT, SUBNET, HostSpec, Lab, free_base_ip
from tests.lab.loadbalancer import LoadBalancer

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("state_dir")]


@pytest.fixture(scope="module")
def load_balancer(
    lab_hosts: Lab, lab_factory: Callable[..., Lab], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LoadBalancer]:
    """nginx in its own lab host, in front of the five workers' NodePort 31695."""
    spec = HostSpec("lb-01", ufw_active=False, http_listener=False)
    with (
        lab_factory([spec], base_ip=free_base_ip(1, start=40)) as lb_lab,
        LoadBalancer(
            lb_lab.hosts[0],
            [h.ip for h in lab_hosts.hosts],
            tmp_path_factory.mktemp("lb"),
            connect_timeout=1.0,
            tries=2,
        ) as lb,
    ):
        yield lb


@pytest.fixture(scope="module")
def servers(lab_hosts: Lab, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return lab_hosts.servers_tsv(tmp_path_factory.mktemp("inventory") / "servers.tsv")


@pytest.fixture(scope="module")
def lab_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The lab's private network is 198.18.0.0/24 (10.0.0.0/16 in production)."""
    path = tmp_path_factory.mktemp("config") / "lab.yaml"
    path.write_text(f"firewall:\n  source: {SUBNET}\n  ports:\n    - {{port: {INGRESS_PORT}, proto: tcp}}\n")
    return path


def invoke(
    command: str, cluster: KeybuzzCluster, lab: Lab, lb: LoadBalancer, servers: Path, config: Path, *args: str
) -> Result:
    """Run ``command`` against the lab: its cluster, hosts and load balancer (resolved, TLS-checked)."""
    result = CliRunner().invoke(
        app,
        [
            command,
            str(servers),
            "--kubeconfig",
            str(cluster.kubeconfig),
            "--config",
            str(config),
            *lb.resolve_args(),
            "--ca-file",
            str(lb.ca_file),
            "--retries",
            "1",
            "--url-timeout",
            "4",
            "--identity",
            str(lab.identity_file),
            "--known-hosts",
            str(lab.known_hosts_file),
            "--timeout",
            "5",
            *args,
        ],
    )
    assert "Traceback" not in result.output
    return result


def validate(
    cluster: KeybuzzCluster, lab: Lab, lb: LoadBalancer, servers: Path, config: Path, *args: str
) -> tuple[int, dict]:
    result = invoke("validate", cluster, lab, lb, servers, config, "-o", "json", *args)
    try:
        return result.exit_code, json.loads(result.stdout)
    except ValueError:
        pytest.fail(f"no JSON (exit {result.exit_code}): {result.output}")


def rows(card: dict, check: str) -> dict[str, dict]:
    return {r["host"]: r for r in card["extended"] if r["check"].startswith(check)}


def test_before_the_load_balancer_answers_504(
    keybuzz_cluster: KeybuzzCluster, lab_hosts: Lab, load_balancer: LoadBalancer, servers: Path, lab_config: Path
) -> None:
    assert not any(lab_hosts.tcp_reachable(h.ip, INGRESS_PORT, 0.5) for h in lab_hosts.hosts)

    code, card = validate(keybuzz_cluster, lab_hosts, load_balancer, servers, lab_config, "--extended")

    assert code == 1
    assert card["score"] < 80 and card["ok"] is False
    status = {c["number"]: c["status"] for c in card["checks"]}
    assert status == {1: "fail", 2: "fail", 3: "fail", 4: "pass", 5: "fail", 6: "fail", 7: "fail"}
    urls = card["checks"][6]["detail"]
    lb = f"{load_balancer.ip}:443"
    assert f"https://platform.keybuzz.io: 504 Gateway Time-out via {lb} (2 attempts" in urls
    assert f"https://platform-api.keybuzz.io: 504 Gateway Time-out via {lb} (2 attempts" in urls
    assert "still a Deployment" in card["checks"][0]["detail"]
    assert "ClusterIP (expected NodePort 30080)" in card["checks"][4]["detail"]
    # The 504s are the load balancer's: it tried the workers' NodePort and none answered.
    answered = [line for line in load_balancer.requests() if " 504 " in line]
    assert len(answered) == 4 and all(
        f":{INGRESS_PORT}" in line and 'upstream_status="504, 504"' in line for line in answered
    )
    # --extended: per worker, not counted in the score.
    assert card["passed"] == 1 and card["total"] == 7
    nodeport = rows(card, f"NodePort {INGRESS_PORT}")
    assert set(nodeport) == {h.name for h in lab_hosts.hosts}
    assert all(r["status"] == "fail" and "no answer in 4 s" in r["detail"] for r in nodeport.values())
    ufw = rows(card, "UFW rules present")
    assert all(
        r["status"] == "fail" and f"missing: allow {INGRESS_PORT}/tcp from {SUBNET}" in r["detail"]
        for r in ufw.values()
    ), ufw


def run_all(
    cluster: KeybuzzCluster, lab: Lab, lb: LoadBalancer, servers: Path, config: Path, *args: str
) -> tuple[int, str]:
    result = invoke("all", cluster, lab, lb, servers, config, "--ready-timeout", "60", *args)
    return result.exit_code, result.output


def step_lines(output: str) -> dict[str, str]:
    """The line each step printed as it finished: ``ufw: changed — …``."""
    lines = {}
    for line in output.splitlines():
        for step in ("ufw", "convert", "ingress", "validate"):
            if line.startswith(f"{step}: "):
                lines[step] = line
    return lines


def rules_on(lab: Lab) -> dict[str, str]:
    return {h.name: h.run("ufw show added").stdout for h in lab.hosts}


def test_all_dry_run_changes_nothing(
    keybuzz_cluster: KeybuzzCluster, lab_hosts: Lab, load_balancer: LoadBalancer, servers: Path, lab_config: Path
) -> None:
    before = rules_on(lab_hosts)
    code, output = run_all(keybuzz_cluster, lab_hosts, load_balancer, servers, lab_config, "--dry-run")
    assert code == 0, output
    steps = step_lines(output)
    assert steps["ufw"].startswith("ufw: planned — 5 rule change(s) on 5 of 5 worker(s)")
    assert steps["convert"].startswith("convert: planned")
    assert steps["ingress"].startswith("ingress: planned — 2 route(s) to apply")
    assert "validate" not in steps
    assert rules_on(lab_hosts) == before
    code, card = validate(keybuzz_cluster, lab_hosts, load_balancer, servers, lab_config)
    assert (code, card["passed"]) == (1, 1)  # still the outage


def test_all_repairs_the_outage_and_a_rerun_changes_nothing(
    keybuzz_cluster: KeybuzzCluster,
    lab_hosts: Lab,
    load_balancer: LoadBalancer,
    servers: Path,
    lab_config: Path,
    state_dir: Path,
) -> None:
    code, output = run_all(keybuzz_cluster, lab_hosts, load_balancer, servers, lab_config, "--yes")
    assert code == 0, output
    steps = step_lines(output)
    assert steps["ufw"].startswith("ufw: changed — 5 worker(s) changed")
    assert steps["convert"].startswith("convert: changed")
    assert steps["ingress"].startswith("ingress: changed — 2 route(s) applied")
    assert steps["validate"].startswith("validate: pass — score 100 % (7/7)")
    assert all(lab_hosts.tcp_reachable(h.ip, INGRESS_PORT, 1.0) for h in lab_hosts.hosts)

    # After: the scorecard is perfect on its own, the URLs answer 200 through the load balancer.
    code, card = validate(keybuzz_cluster, lab_hosts, load_balancer, servers, lab_config, "--strict")
    assert (code, card["passed"], card["total"]) == (0, 7, 7), card
    urls = card["checks"][6]["detail"]
    assert f"https://platform.keybuzz.io: 200 OK via {load_balancer.ip}:443" in urls
    assert f"https://platform-api.keybuzz.io: 200 OK via {load_balancer.ip}:443" in urls
    audit = [json.loads(line) for line in (state_dir / "audit.jsonl").read_text().splitlines()]
    assert {a["command"] for a in audit} >= {"all", "convert"}

    # Again: every step is a no-op.
    rules, audited = rules_on(lab_hosts), len(audit)
    code, output = run_all(keybuzz_cluster, lab_hosts, load_balancer, servers, lab_config, "--yes")
    assert code == 0, output
    steps = step_lines(output)
    assert steps["ufw"].startswith("ufw: unchanged")
    assert steps["convert"].startswith("convert: unchanged — already converted")
    assert steps["ingress"].startswith("ingress: unchanged")
    assert steps["validate"].startswith("validate: pass — score 100 %")
    assert rules_on(lab_hosts) == rules
    assert len((state_dir / "audit.jsonl").read_text().splitlines()) == audited
