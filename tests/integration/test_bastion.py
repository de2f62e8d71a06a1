"""Workers and a master reachable only through a bastion, driven by the operator's own ~/.ssh/config.

The lab: a bastion on the lab bridge; two workers (with the sudo user ``ops``) and a master behind
it, on 198.18.1.0/24, which this machine routes to the bastion, which does not forward: there is
no direct path. Their sshd listens on 2201. The operator's ``~/.ssh/config`` says, as in issue 18:

    Host k8s-worker-*   User ops          (servers.tsv says root)
    Host k8s-*          Port 2201, ProxyJump bastion
    Host *              IdentityFile, IdentitiesOnly yes, UserKnownHostsFile

and the known_hosts it names holds hashed entries, a ``@cert-authority`` line and a ``@revoked``
line. ``ufw``, ``overlay``, ``diagnose`` and ``--kubeconfig-from-master`` run with no SSH option on
the command line; the API of the master (the test control plane behind the master's own
127.0.0.1:6443) is reached through the same SSH connection.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml
from typer.testing import CliRunner

from keybuzz_fix.cli import app
from keybuzz_fix.hosts.knownhosts import hash_name
from tests.lab.bastion import Bastion, UnixBridge, write_into
from tests.lab.flannel import private_etc
from tests.lab.hosts import SERVERS_TSV_COLUMNS, HostSpec, Lab

if TYPE_CHECKING:
    from tests.cluster.fixtures import KeybuzzCluster

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("state_dir")]
PORT = 2201
WORKERS = ("k8s-worker-01", "k8s-worker-02")
MASTER = "k8s-master-01"
OVERLAY = "overlay:\n  source: 198.18.1.0/24\n  pod_cidr: 198.19.0.0/17\n  service_cidr: 198.19.128.0/20\n"


@dataclass(frozen=True)
class Site:
    lab: Lab
    far: Bastion
    home: Path
    servers: Path
    known_hosts: Path

    def host(self, name: str) -> Any:
        return self.lab.host(name)


def _pub(path: Path) -> tuple[str, str]:
    kind, data = path.read_text().split()[:2]
    return kind, data


@pytest.fixture(scope="module")
def site(lab_factory: Callable[..., Lab], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    specs = [HostSpec("bastion", http_listener=False), *(HostSpec(w, sudo_users=True) for w in WORKERS)]
    specs.append(HostSpec(MASTER, http_listener=False))
    with lab_factory(specs) as lab, Bastion(lab, "bastion", [*WORKERS, MASTER], port=PORT) as far:
        home = tmp_path_factory.mktemp("operator")
        ssh = home / ".ssh"
        ssh.mkdir(mode=0o700)
        shutil.copy(lab.identity_file, ssh / "id_lab")
        (ssh / "id_lab").chmod(0o600)
        other_ca = tmp_path_factory.mktemp("ca") / "ca"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other_ca)], check=True, timeout=30)
        revoked = tmp_path_factory.mktemp("revoked") / "old"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(revoked)], check=True, timeout=30)
        bastion = lab.host("bastion")
        lines = [
            "# the operator's known_hosts: hashed names, a CA for the signed hosts, a revoked old key",
            "@cert-authority *.example.com {} {}".format(*_pub(other_ca.with_suffix(".pub"))),
            "@revoked * {} {}".format(*_pub(revoked.with_suffix(".pub"))),
            f"{hash_name(bastion.ip)} {bastion.host_key_pub}",
        ]
        lines += [f"{hash_name(f'[{far.address(n)}]:{PORT}')} {lab.host(n).host_key_pub}" for n in [*WORKERS, MASTER]]
        known = ssh / "known_hosts_lab"
        known.write_text("\n".join(lines) + "\n")
        (ssh / "config").write_text(
            f"Host bastion\n    HostName {bastion.ip}\n    User root\n\n"
            f"Host k8s-worker-*\n    User ops\n\n"
            f"Host k8s-*\n    Port {PORT}\n    ProxyJump bastion\n\n"
            "Host *\n    IdentityFile ~/.ssh/id_lab\n    IdentitiesOnly yes\n"
            "    UserKnownHostsFile ~/.ssh/known_hosts_lab\n"
        )
        rows = [{"HOSTNAME": MASTER, "IP_PRIVEE": far.address(MASTER), "ROLE": "k3s", "SUBROLE": "master"}]
        rows += [{"HOSTNAME": w, "IP_PRIVEE": far.address(w), "ROLE": "k3s", "SUBROLE": "worker"} for w in WORKERS]
        servers = home / "servers.tsv"
        defaults = {"ENV": "prod", "USER_SSH": "root", "NOTES": "behind the bastion"}
        text = ["\t".join(SERVERS_TSV_COLUMNS)]
        text += ["\t".join(row.get(c) or defaults.get(c, "-") for c in SERVERS_TSV_COLUMNS) for row in rows]
        servers.write_text("\n".join(text) + "\n")
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("HOME", str(home))
            mp.delenv("SSH_AUTH_SOCK", raising=False)
            yield Site(lab, far, home, servers, known)


def cli(*args: str) -> tuple[int, dict[str, Any], str]:
    result = CliRunner().invoke(app, [*args, "-o", "json"])
    try:
        return result.exit_code, json.loads(result.stdout), result.stderr
    except ValueError:
        pytest.fail(f"no JSON from {args[0]} (exit {result.exit_code}): {result.output}")


def sshd_peers(site: Site, name: str) -> set[str]:
    """The addresses the host's sshd behind the bastion saw connections from (its log)."""
    log = (site.host(name).workdir / "sshd.log").read_text()
    here = f" on {site.far.address(name)} port {PORT} "
    return {
        line.split(" from ")[1].split()[0] for line in log.splitlines() if "Connection from " in line and here in line
    }


def test_the_workers_are_reachable_only_through_the_bastion(site: Site) -> None:
    for name in [*WORKERS, MASTER]:
        far = site.far.address(name)
        assert not site.lab.tcp_reachable(far, PORT, timeout=1.0), f"{name}: a direct path exists"
        check = f"bash -c '(exec 3<>/dev/tcp/{far}/{PORT})'"
        assert site.host("bastion").run(check, check=False).returncode == 0


def test_ufw_goes_through_the_bastion_as_the_config_says(site: Site) -> None:
    code, plan, _ = cli("ufw", str(site.servers), "--source", "198.18.1.0/24", "--dry-run")
    assert code == 0, plan
    assert [h["status"] for h in plan["hosts"]] == ["planned", "planned"]
    code, done, _ = cli("ufw", str(site.servers), "--source", "198.18.1.0/24", "--yes")
    assert code == 0, done
    assert {h["hostname"]: h["status"] for h in done["hosts"]} == dict.fromkeys(WORKERS, "changed")
    for name in WORKERS:
        rules = site.host(name).run("ufw show added").stdout
        assert "31695 proto tcp" in rules and "from 198.18.1.0/24" in rules
        assert sshd_peers(site, name) == {"198.18.1.1"}  # the bastion, never this machine
        auth = (site.host(name).workdir / "sshd.log").read_text()
        assert "Accepted publickey for ops" in auth and "publickey for root" not in auth  # User ops, from ~/.ssh/config
    assert done["accepted_host_keys"] == []


def test_overlay_goes_through_the_bastion(site: Site, tmp_path: Path) -> None:
    config = tmp_path / "overlay.yaml"
    config.write_text(OVERLAY)
    code, done, _ = cli("overlay", str(site.servers), "--config", str(config), "--yes")
    assert code == 0, done
    assert {h["hostname"] for h in done["hosts"]} == {*WORKERS, MASTER}
    assert all(h["status"] == "changed" for h in done["hosts"]), done
    for name in [*WORKERS, MASTER]:
        assert "8472 proto udp" in site.host(name).run("ufw show added").stdout


def test_diagnose_and_kubeconfig_from_master_through_the_bastion(
    site: Site, keybuzz_cluster: KeybuzzCluster, tmp_path: Path
) -> None:
    cp = keybuzz_cluster.control_plane
    master = site.host(MASTER)
    k3s = yaml.safe_load(cp.user_kubeconfig("k3s-admin", ["system:masters"]).read_text())
    k3s["clusters"][0]["cluster"]["server"] = "https://127.0.0.1:6443"  # as k3s writes it
    private_etc(master)
    write_into(master, "/etc/rancher/k3s/k3s.yaml", yaml.safe_dump(k3s))
    bridge = UnixBridge(master, "127.0.0.1:6443", f"127.0.0.1:{cp.apiserver_port}", "k3s-api")
    try:
        code, found, _ = cli("diagnose", str(site.servers), "--kubeconfig-from-master", str(site.servers))
        assert found["cluster"]["read"] is True, found["cluster"]
        assert found["cluster"]["nodes"] == len(keybuzz_cluster.worker_names + keybuzz_cluster.master_names)
        assert {h["hostname"]: h["status"] for h in found["hosts"]} == dict.fromkeys([MASTER, *WORKERS], "probed")
        assert not any(h.get("error") for h in found["hosts"]), found["hosts"]

        code, plan, err = cli("convert", "--dry-run", "--kubeconfig-from-master", str(site.servers))
        assert code == 0, (plan, err)
        assert {c["kind"] for c in plan["changes"]} >= {"DaemonSet", "Service", "Deployment"}
        assert sshd_peers(site, MASTER) == {"198.18.1.1"}
    finally:
        bridge.close()


def test_every_hop_s_host_key_is_checked(site: Site, tmp_path: Path) -> None:
    """The bastion's key, changed in known_hosts: every host behind it is refused, the jump host named."""
    bad = tmp_path / "known_hosts"
    other = tmp_path / "other"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True, timeout=30)
    text = site.known_hosts.read_text().splitlines()
    bastion_ip = site.host("bastion").ip
    text[3] = "{} {} {}".format(bastion_ip, *_pub(other.with_suffix(".pub")))  # the bastion's line
    bad.write_text("\n".join(text) + "\n")
    code, plan, _ = cli("ufw", str(site.servers), "--dry-run", "--known-hosts", str(bad))
    assert code == 1
    for host in plan["hosts"]:
        assert host["error_type"] == "HostKeyError"
        assert f"jump host bastion ({bastion_ip}:22): host key CHANGED for {bastion_ip}" in host["error"]


def test_strict_host_key_checking_no_is_refused(site: Site, tmp_path: Path) -> None:
    config = tmp_path / "config"
    config.write_text((site.home / ".ssh" / "config").read_text() + "    StrictHostKeyChecking no\n")
    code, plan, _ = cli("ufw", str(site.servers), "--dry-run", "--ssh-config", str(config))
    assert code == 1
    for host in plan["hosts"]:
        assert "StrictHostKeyChecking no" in host["error"] and f"{config}:" in host["error"]
    code, plan, _ = cli("ufw", str(site.servers), "--dry-run", "--ssh-config", str(config), "--accept-new-host-keys")
    assert code == 0, plan  # then trust on first use: the keys are known here, nothing is recorded
    assert plan["accepted_host_keys"] == []


def test_a_key_revoked_in_known_hosts_is_refused(site: Site, tmp_path: Path) -> None:
    worker = site.host(WORKERS[0])
    kind, data = worker.host_key_pub.split()
    revoked = tmp_path / "known_hosts"
    revoked.write_text(site.known_hosts.read_text() + f"@revoked * {kind} {data}\n")
    code, plan, _ = cli("ufw", str(site.servers), "--dry-run", "--known-hosts", str(revoked))
    assert code == 1
    hosts = {h["hostname"]: h for h in plan["hosts"]}
    assert "is marked @revoked" in hosts[WORKERS[0]]["error"]
    assert hosts[WORKERS[1]]["status"] == "planned"


def test_the_key_of_a_recorded_host_is_hashed_as_hash_known_hosts_says(site: Site, tmp_path: Path) -> None:
    known = tmp_path / "fresh_known_hosts"
    config = tmp_path / "config"
    config.write_text(
        (site.home / ".ssh" / "config").read_text().replace("~/.ssh/known_hosts_lab", str(known))
        + "    HashKnownHosts yes\n"
    )
    bastion = site.host("bastion")
    known.write_text(f"{bastion.ip} {bastion.host_key_pub}\n")
    code, plan, _ = cli("ufw", str(site.servers), "--dry-run", "--ssh-config", str(config), "--accept-new-host-keys")
    assert code == 0, plan
    assert sorted(a["host"] for a in plan["accepted_host_keys"]) == sorted(WORKERS)
    recorded = known.read_text().splitlines()[1:]
    assert len(recorded) == 2 and all(line.startswith("|1|") for line in recorded)
    assert {base64.b64decode(line.split()[2])[:4] for line in recorded} == {b"\x00\x00\x00\x0b"}
    code, again, _ = cli("ufw", str(site.servers), "--dry-run", "--ssh-config", str(config))
    assert code == 0 and again["accepted_host_keys"] == []
