"""The outage and its repair, end to end, on a lab whose data path is the cluster's.

What is real: five worker hosts with their own sshd and UFW (default deny incoming, as in
production); on each of them the real kube-proxy, programming the ingress NodePorts from the
control plane's EndpointSlices; an ingress stand-in (Debian's nginx) where the ingress-nginx pods
run, proxying by Host header to the app endpoints on every worker; the apps' processes where the
API shows their hostNetwork pods; Debian's nginx as the load balancer in front of the workers'
NodePorts 31695 (HTTP) and 32720 (HTTPS), answering 504 when no worker answers, as the Hetzner
load balancers do (tests/lab/outage.py). The URL checks reach the load balancer through --resolve,
as an operator aims them at one Hetzner load balancer.

The order matters and the tests run in it: the outage (504); what `ufw` plans; the NodePort rules
alone (the old remediation) leave every request failing; the ingress ports without the app ports
leave most of them failing; `all` repairs it and a second `all` changes nothing. Before that,
what `all` shows before its prompt, answered no, while the whole outage is still there.
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pexpect
import pyte
import pytest
from typer.testing import CliRunner, Result

from keybuzz_fix.cli import app
from tests.cluster.fixtures import KeybuzzCluster
from tests.lab.hosts import INGRESS_HOSTS, SUBNET
from tests.lab.outage import OutageLab

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("state_dir")]

WORKERS = 5
ROOT = Path(__file__).resolve().parent.parent.parent
PORTS = ["31695/tcp", "32720/tcp", "80/tcp", "443/tcp", "8080/tcp", "3000/tcp"]


@pytest.fixture(scope="module")
def world(keybuzz_cluster: KeybuzzCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OutageLab]:
    with OutageLab(keybuzz_cluster.control_plane, tmp_path_factory.mktemp("outage")).start() as w:
        yield w


def invoke(world: OutageLab, command: str, *args: str) -> Result:
    """Run ``command`` against the lab as an operator would: its cluster, hosts and load balancer."""
    lab = world.lab
    assert lab is not None and world.lb is not None
    cluster = ["--kubeconfig", str(world.cp.kubeconfig), "--config", str(world.config)]
    ssh = ["--identity", str(lab.identity_file), "--known-hosts", str(world.known_hosts)]
    urls = [*world.lb.resolve_args(), "--ca-file", str(world.lb.ca_file)]
    argv = {
        "ufw": [str(world.servers), *cluster, *ssh, "--timeout", "5"],
        "convert": [*cluster, *ssh, "--timeout", "60"],
        "ingress": [str(world.servers), *cluster, *ssh],
        "validate": [str(world.servers), *cluster, *ssh, *urls, "--timeout", "5"],
        "all": [str(world.servers), *cluster, *ssh, *urls, "--timeout", "5"],
    }[command]
    result = CliRunner().invoke(app, [command, *argv, *args])
    assert "Traceback" not in result.output
    return result


def validate(world: OutageLab, *args: str) -> tuple[int, dict]:
    result = invoke(world, "validate", "-o", "json", "--retries", "0", "--url-timeout", "4", *args)
    try:
        return result.exit_code, json.loads(result.stdout)
    except ValueError:
        pytest.fail(f"no JSON (exit {result.exit_code}): {result.output}")


def statuses(card: dict) -> dict[int, str]:
    return {c["number"]: c["status"] for c in card["checks"]}


def answered(world: OutageLab, count: int = 4 * WORKERS) -> Counter[int | None]:
    """What ``count`` requests through the load balancer got, for each site: status -> how many."""
    return Counter(a.status for host in INGRESS_HOSTS for a in world.requests(host, count=count // 2, timeout=3))


def test_before_the_load_balancer_answers_504(world: OutageLab) -> None:
    assert answered(world) == Counter({504: 4 * WORKERS})
    code, card = validate(world, "--extended")
    assert code == 1 and card["ok"] is False and card["total"] == 8
    assert statuses(card) == {1: "fail", 2: "fail", 3: "fail", 4: "pass", 5: "fail", 6: "fail", 7: "fail", 8: "fail"}
    urls = card["checks"][6]["detail"]
    assert f"https://platform.keybuzz.io: 0/{2 * WORKERS} answered 200" in urls
    assert "504 Gateway Time-out" in urls
    paths = card["checks"][7]["detail"]
    assert "80 (ingress-nginx HTTP host port) timed out on 20 of 20 paths: between every pair of workers" in paths
    assert "8080 (keybuzz-api host port) timed out on 20 of 20 paths" in paths  # UFW drops it: no app, no rule


def test_before_its_prompt_all_reads_as_one_page(world: OutageLab) -> None:
    """At a real terminal (a pty drawn by a terminal emulator) all's plan fits a page; answering no changes nothing."""
    lab = world.lab
    assert lab is not None and world.lb is not None
    argv = [
        "-m", "keybuzz_fix", "all", str(world.servers), "--kubeconfig", str(world.cp.kubeconfig),
        "--config", str(world.config), "--identity", str(lab.identity_file), "--known-hosts", str(world.known_hosts),
        *world.lb.resolve_args(), "--ca-file", str(world.lb.ca_file), "--timeout", "5",
    ]  # fmt: skip
    rules = {h.name: h.run("ufw show added").stdout for h in lab.hosts}
    columns = 100
    screen = pyte.Screen(columns, 400)  # tall: nothing scrolls away, every line printed stays countable
    stream = pyte.ByteStream(screen)
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    child = pexpect.spawn(sys.executable, argv, env=env, cwd=str(ROOT), dimensions=(400, columns), timeout=120)
    try:
        child.expect(rb"\[y/N\]")
        stream.feed(child.before + child.after)
        child.sendline(b"n")
        child.expect(pexpect.EOF)
        child.close()
    finally:
        child.terminate(force=True)
    lines = [row.rstrip() for row in screen.display]
    while lines and not lines[-1]:
        lines.pop()
    page = "\n".join(lines)
    print(page)
    assert child.exitstatus == 4  # answered no
    assert len(lines) <= 50, f"{len(lines)} lines before the prompt"
    first = lambda text: next(i for i, line in enumerate(lines) if text in line)  # noqa: E731
    assert first("target: cluster") < first("summary") < first("1/4 ufw") < first("2/4 convert") < first("3/4 ingress")
    assert first("3/4 ingress") < first("[y/N]")
    assert sum("API_INTERNAL_URL" in line for line in lines) == 1  # the warning, once, in the summary
    assert "+++" not in page and "ufw allow" not in page  # diffs and commands: -v
    assert "-v shows every command each worker will run and every object's and route's diff" in page
    assert "  all 5 workers (ufw active): 6 to add\n" in page
    assert {h.name: h.run("ufw show added").stdout for h in lab.hosts} == rules  # nothing changed

    # With -o json the plan and the question go to stderr; stdout holds the one document, which says
    # the answer was no and the changes are still pending.
    out = subprocess_pty_json(argv + ["-o", "json"], env)
    assert (out["exit_code"], out["error"], out["changes_pending"]) == (4, "nothing changed (answered no)", True)


def subprocess_pty_json(argv: list[str], env: dict[str, str]) -> dict:
    """Run at a terminal (stdin a pty: the question is asked), answer no; return the JSON on stdout alone."""
    import pty
    import select
    import subprocess
    import time

    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, *argv], stdin=follower, stdout=subprocess.PIPE, stderr=follower, env=env, cwd=str(ROOT)
    )
    os.close(follower)
    seen = b""
    try:
        end = time.monotonic() + 120  # bounded: a run that never asks fails the test
        while b"[y/N]" not in seen:
            ready, _w, _x = select.select([leader], [], [], max(0.0, end - time.monotonic()))
            assert ready, f"no question within 120 s: {seen.decode(errors='replace')}"
            chunk = os.read(leader, 4096)
            assert chunk, seen.decode(errors="replace")
            seen += chunk
        os.write(leader, b"n\n")
        stdout, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
        os.close(leader)
    assert proc.returncode == 4, seen.decode(errors="replace")
    return json.loads(stdout)


def test_ufw_plans_the_six_ports_the_traffic_uses_with_their_purpose(world: OutageLab) -> None:
    result = invoke(world, "ufw", "--dry-run", "-o", "json")
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    rules = plan["rules"]
    assert [f"{r['port']}/{r['proto']}" for r in rules] == PORTS
    assert all(r["from"] == str(SUBNET) for r in rules)
    purpose = {r["port"]: r["purpose"] for r in rules}
    assert "load balancers" in purpose[31695]
    assert "before UFW sees the packet" in purpose[80] and "NodePort 31695" in purpose[80]
    assert "every worker" in purpose[8080]
    assert plan["read_from"] == "cluster"
    assert all(len(h["actions"]) == len(PORTS) for h in plan["hosts"])
    text = invoke(world, "ufw", "--dry-run").output
    for port in PORTS:
        assert port in text


def test_the_nodeport_rules_alone_leave_requests_failing(world: OutageLab) -> None:
    """The remediation as it was: 31695/32720 opened, the apps converted, the routes applied."""
    assert invoke(world, "ufw", "--ports", "31695/tcp,32720/tcp", "--yes").exit_code == 0
    assert invoke(world, "convert", "--yes").exit_code == 0
    assert invoke(world, "ingress", "--yes").exit_code == 0
    assert world.data_path is not None
    world.data_path.settle()
    assert answered(world) == Counter({504: 4 * WORKERS})  # the NodePort leads to port 80, still dropped
    code, card = validate(world)
    assert code == 1 and card["score"] < 80
    assert statuses(card)[7] == "fail" and statuses(card)[8] == "fail"

    # The ingress ports open, the apps' closed: only requests proxied to the ingress's own worker answer.
    assert invoke(world, "ufw", "--ports", "80/tcp,443/tcp", "--yes").exit_code == 0
    got = answered(world)
    print(f"ingress ports open, app ports closed: {got}")
    assert got[200] < 4 * WORKERS and got[200] + got[None] + got[504] == 4 * WORKERS, got
    code, card = validate(world)
    assert code == 1 and statuses(card)[7] == "fail" and statuses(card)[8] == "fail"
    paths = card["checks"][7]["detail"]
    assert "8080 (keybuzz-api host port) timed out on 20 of 20 paths: between every pair of workers" in paths
    assert "3000 (keybuzz-front host port) timed out on 20 of 20 paths" in paths
    assert "80 (ingress-nginx" not in paths and "443 (ingress-nginx" not in paths  # those are open now


def test_all_repairs_the_outage_and_a_rerun_changes_nothing(world: OutageLab, state_dir: Path) -> None:
    drift = invoke(world, "all", "--dry-run", "--exit-code", "-o", "json")  # the CI drift check: changes pending
    assert drift.exit_code == 2, drift.output
    planned = json.loads(drift.stdout)
    assert planned["command"] == "all" and planned["changes_pending"] is True and planned["error"] is None
    steps = {s["step"]: s["status"] for s in planned["steps"]}
    assert steps["ufw"] == "planned" and steps["validate"] == "not run", steps  # the outage: UFW drops the ports
    result = invoke(world, "all", "--yes", "--ready-timeout", "60", "--retries", "1", "--url-timeout", "4")
    print(f"after all --yes: {answered(world)}")
    assert result.exit_code == 0, result.output
    assert answered(world) == Counter({200: 4 * WORKERS})
    code, card = validate(world, "--strict")
    assert (code, card["passed"], card["total"]) == (0, 8, 8), card
    assert f"{2 * WORKERS}/{2 * WORKERS} answered 200" in card["checks"][6]["detail"]
    # Requests crossed workers: an ingress on one worker answered with an app on another.
    assert world.lab is not None
    crossed = 0
    for h in world.lab.hosts:
        for line in (h.workdir / "ingress" / "access.log").read_text().splitlines():
            upstream = line.split('upstream="', 1)[-1].split(":", 1)[0]
            crossed += " 200 " in line and upstream not in ("", h.ip)
    assert crossed > 0

    rules = {h.name: h.run("ufw show added").stdout for h in world.lab.hosts}
    audited = len((state_dir / "audit.jsonl").read_text().splitlines())
    again = invoke(world, "all", "--yes", "--ready-timeout", "60", "--retries", "1", "--url-timeout", "4")
    assert again.exit_code == 0, again.output
    assert "ufw: unchanged" in again.output and "convert: unchanged" in again.output
    assert {h.name: h.run("ufw show added").stdout for h in world.lab.hosts} == rules
    assert len((state_dir / "audit.jsonl").read_text().splitlines()) == audited
    settled = invoke(world, "all", "--dry-run", "--exit-code", "-o", "json")  # nothing left to do
    assert settled.exit_code == 0, settled.output
    assert json.loads(settled.stdout)["changes_pending"] is False
