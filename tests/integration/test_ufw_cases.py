"""The rule sets of issue 15 on real ufw: what `keybuzz-fix ufw` says, and what real packets do.

Four lab hosts, one per case, each set up with the ufw commands an operator would have run:

1. `ufw limit 31695/tcp`, `ufw limit 32720/tcp` (a hardening guide's habit);
2. `ufw allow from <private network>`, then `ufw deny 31695/tcp`, `ufw deny 32720/tcp`;
3. `ufw allow 31695/tcp` and `32720/tcp`, then their IPv4 halves deleted by number: a v6 leftover;
4. `ufw default allow incoming` and no rule for the ports.

The tool must say blocked (1, exit 1), unchanged (2, 4) and changed (3), and the packets must
agree: the load balancer's address (this machine, 198.18.0.1) is throttled after 5 connections by
the limit rules, and reaches the port on the other hosts after the run. `--insert-first` then
puts the allow rules above the limit ones (`ufw prepend`), and 10 quick connections all pass.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from keybuzz_fix.cli import app
from tests.lab.hosts import INGRESS_PORT, Lab, LabHost, servers_tsv

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("state_dir")]
HTTPS_PORT = 32720
SOURCE = "198.18.0.0/24"  # the lab's private network: the load balancer (198.18.0.1) is in it
PORTS = f"{INGRESS_PORT}/tcp,{HTTPS_PORT}/tcp"


def run_ufw(lab: Lab, servers: Path, *args: str) -> tuple[int, dict]:
    result = CliRunner().invoke(
        app,
        [
            "ufw",
            str(servers),
            "--identity",
            str(lab.identity_file),
            "--known-hosts",
            str(lab.known_hosts_file),
            "--timeout",
            "10",
            "--ports",
            PORTS,
            "--source",
            SOURCE,
            "-o",
            "json",
            *args,
        ],
    )
    assert "Traceback" not in result.output
    try:
        return result.exit_code, json.loads(result.stdout)
    except ValueError:
        pytest.fail(f"no JSON (exit {result.exit_code}): {result.output}")


def connects(ip: str, port: int, times: int = 10, timeout: float = 3.0) -> int:
    """Open ``times`` new TCP connections in a row, as a load balancer does; count those accepted.

    A limit rule's refusal is a REJECT, answered at once; the timeout covers a SYN the lab's small
    listener backlog dropped on a busy machine (the client sends it again after 1 s).
    """
    ok = 0
    for _ in range(times):
        try:
            with socket.create_connection((ip, port), timeout=timeout):
                ok += 1
        except OSError:
            pass
    return ok


def tuples(host: LabHost, name: str) -> list[str]:
    return [
        line.removeprefix("### tuple ### ")
        for line in host.run(f"cat /etc/ufw/{name}").stdout.splitlines()
        if line.startswith("### tuple ###")
    ]


def setup(host: LabHost, case: int) -> None:
    if case == 1:
        host.run(f"ufw limit {INGRESS_PORT}/tcp && ufw limit {HTTPS_PORT}/tcp")
    elif case == 2:
        host.run(f"ufw allow from {SOURCE} && ufw deny {INGRESS_PORT}/tcp && ufw deny {HTTPS_PORT}/tcp")
    elif case == 3:
        host.run(f"ufw allow {INGRESS_PORT}/tcp && ufw allow {HTTPS_PORT}/tcp")
        # `ufw status numbered`: [1] 22/tcp [2] 31695/tcp [3] 32720/tcp [4..6] their v6 twins.
        host.run("ufw --force delete 3 && ufw --force delete 2")
    else:
        host.run("ufw default allow incoming")


def test_the_four_cases_on_real_ufw(lab_factory: Callable[..., Lab], tmp_path: Path) -> None:
    names = [f"k8s-worker-0{i}" for i in range(1, 5)]
    with lab_factory(names) as lab:
        limit, ordered, leftover, accept = lab.hosts
        for i, host in enumerate(lab.hosts, 1):
            setup(host, i)
            host.listen(HTTPS_PORT)
        assert [t for t in tuples(leftover, "user.rules") if "31695" in t or "32720" in t] == []
        assert len([t for t in tuples(leftover, "user6.rules") if "31695" in t or "32720" in t]) == 2
        before = {h.name: (tuples(h, "user.rules"), tuples(h, "user6.rules")) for h in lab.hosts}
        # Before the run, as the packets see it: throttled, open, closed (IPv4), open.
        assert connects(limit.ip, INGRESS_PORT) == 5
        assert connects(ordered.ip, INGRESS_PORT) == 10
        assert connects(leftover.ip, INGRESS_PORT, 1, 1.0) == 0
        assert connects(accept.ip, INGRESS_PORT) == 10

        servers = lab.servers_tsv(tmp_path / "servers.tsv", masters=())
        code, result = run_ufw(lab, servers, "--yes")
        assert code == 1, result  # case 1 is blocked
        hosts = {h["hostname"]: h for h in result["hosts"]}
        assert {n: hosts[n]["status"] for n in names} == {
            limit.name: "blocked",
            ordered.name: "unchanged",
            leftover.name: "changed",
            accept.name: "unchanged",
        }
        assert f"throttled by rule 2 of user.rules: ufw limit {INGRESS_PORT}/tcp" in hosts[limit.name]["message"]
        assert f"ufw limit {HTTPS_PORT}/tcp" in hosts[limit.name]["message"]
        assert all("ufw allow from 198.18.0.0/24 to any" in a["reason"] for a in hosts[ordered.name]["actions"])
        assert all('DEFAULT_INPUT_POLICY="ACCEPT"' in a["reason"] for a in hosts[accept.name]["actions"])
        assert len(hosts[leftover.name]["applied"]) == 2

        # Only the leftover host changed, and only by its two IPv4 rules at the end.
        for h in (limit, ordered, accept):
            assert (tuples(h, "user.rules"), tuples(h, "user6.rules")) == before[h.name]
        v4 = tuples(leftover, "user.rules")
        assert v4[: len(before[leftover.name][0])] == before[leftover.name][0]
        assert v4[-2:] == [
            f"allow tcp {p} 0.0.0.0/0 any {SOURCE} in comment={f'keybuzz-fix: port {p}/tcp'.encode().hex()}"
            for p in (INGRESS_PORT, HTTPS_PORT)
        ]
        # After the run, the packets agree with what it said.
        assert connects(leftover.ip, INGRESS_PORT) == 10
        assert connects(leftover.ip, HTTPS_PORT) == 10
        assert connects(ordered.ip, HTTPS_PORT) == 10
        assert connects(accept.ip, HTTPS_PORT) == 10
        assert connects(limit.ip, HTTPS_PORT) < 10  # one count per source for every limit rule: still throttled

        # --insert-first on the limit host: the allow rules go above the limit ones.
        only_limit = servers_tsv(tmp_path / "limit.tsv", [limit], masters=())
        code, plan = run_ufw(lab, only_limit, "--insert-first", "--dry-run")
        assert code == 0 and [a["command"].split(" from ")[0] for a in plan["hosts"][0]["actions"]] == [
            "ufw prepend allow",
            "ufw prepend allow",
        ]
        code, result = run_ufw(lab, only_limit, "--insert-first", "--yes")
        assert code == 0 and result["hosts"][0]["status"] == "changed", result
        rules = tuples(limit, "user.rules")
        assert rules[0].startswith(f"allow tcp {HTTPS_PORT} 0.0.0.0/0 any {SOURCE} in")
        assert rules[1].startswith(f"allow tcp {INGRESS_PORT} 0.0.0.0/0 any {SOURCE} in")
        assert rules[2:] == before[limit.name][0]  # the operator's rules, all there, in their order
        assert tuples(limit, "user6.rules") == before[limit.name][1]
        assert connects(limit.ip, INGRESS_PORT) == 10
        assert connects(limit.ip, HTTPS_PORT) == 10

        code, again = run_ufw(lab, servers, "--yes", "--insert-first")
        assert code == 0 and {h["status"] for h in again["hosts"]} == {"unchanged"}, again


UDP_SINK = (
    "import socket, sys\n"
    "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
    "s.bind(('0.0.0.0', 8472))\n"
    "print('ready', flush=True)\n"
    "while True:\n"
    "    data, peer = s.recvfrom(2048)\n"
    "    print('got', data.decode(), flush=True)\n"
)


def vxlan_arrives(host: LabHost, log: Path, token: str) -> bool:
    """Send UDP datagrams to the host's 8472 from this machine; whether the sink inside saw them."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _ in range(3):
            s.sendto(token.encode(), (host.ip, 8472))
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline:
        if f"got {token}" in log.read_text():
            return True
        time.sleep(0.1)
    return False


def test_case5_an_interface_rule_lets_vxlan_in_where_ip_privee_is(
    lab_factory: Callable[..., Lab], tmp_path: Path
) -> None:
    """`allow in on eth0 from <private network>` on a node whose IP_PRIVEE is on eth0 (the lab's interface).

    A second node has the same rule for eth1, an interface its traffic does not arrive on. The
    tool must call the first open (by that rule) and plan the rule on the second; UDP datagrams to
    8472 must arrive on the first only.
    """
    config = tmp_path / "lab.yaml"
    config.write_text(f"overlay:\n  source: {SOURCE}\n  pod_cidr: 198.19.0.0/17\n  service_cidr: 198.19.128.0/20\n")
    with lab_factory(["k8s-worker-01", "k8s-worker-02"]) as lab:
        right, wrong = lab.hosts
        right.run(f"ufw allow in on eth0 from {SOURCE}")
        wrong.run(f"ufw allow in on eth1 from {SOURCE}")
        logs = {}
        for h in lab.hosts:
            logs[h.name] = tmp_path / f"{h.name}-udp.log"
            h.spawn("udp-sink", ["python3", "-c", UDP_SINK], logs[h.name])
            deadline = time.monotonic() + 10
            while "ready" not in logs[h.name].read_text():
                assert time.monotonic() < deadline, logs[h.name].read_text()
                time.sleep(0.05)
        assert vxlan_arrives(right, logs[right.name], "before-right")
        assert not vxlan_arrives(wrong, logs[wrong.name], "before-wrong")

        servers = lab.servers_tsv(tmp_path / "servers.tsv", masters=())
        result = CliRunner().invoke(
            app,
            [
                "overlay",
                str(servers),
                "--identity",
                str(lab.identity_file),
                "--known-hosts",
                str(lab.known_hosts_file),
                "--timeout",
                "10",
                "--config",
                str(config),
                "--dry-run",
                "-o",
                "json",
            ],
        )
        assert "Traceback" not in result.output
        hosts = {h["hostname"]: h for h in json.loads(result.stdout)["hosts"]}
        vxlan_right = hosts[right.name]["actions"][0]
        assert vxlan_right["kind"] == "noop"
        assert vxlan_right["reason"] == (
            f"already open: IPv4 by rule 2 of user.rules: ufw allow in on eth0 from {SOURCE} to any"
        )
        vxlan_wrong = hosts[wrong.name]["actions"][0]
        assert vxlan_wrong["kind"] == "add"
        assert vxlan_wrong["command"].startswith(f"ufw allow from {SOURCE} to any port 8472 proto udp")
