"""The lab hosts are real: sshd with verified host keys, one ufw per host, clean teardown."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import paramiko
import pytest

from keybuzz_fix import inventory
from tests.lab.hosts import (
    INGRESS_HOSTS,
    INGRESS_PORT,
    NON_K3S_ROWS,
    PREFIX,
    RECORD_DIR,
    SUDO_NOPASSWD_USER,
    SUDO_PASSWORD,
    SUDO_PASSWORD_USER,
    HostSpec,
    Lab,
    LabHost,
    remove_leftovers,
)

pytestmark = pytest.mark.integration


def connect(lab: Lab, host: LabHost, user: str | None = None, known_hosts: Path | None = None) -> paramiko.SSHClient:
    client = paramiko.SSHClient()
    client.load_host_keys(str(known_hosts or lab.known_hosts_file))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.connect(
        host.ip,
        port=host.ssh_port,
        username=user or lab.user,
        key_filename=str(lab.identity_file),
        look_for_keys=False,
        allow_agent=False,
        timeout=5,
        banner_timeout=5,
        auth_timeout=5,
    )
    return client


def ssh_run(lab: Lab, host: LabHost, cmd: str, user: str | None = None, stdin: str = "") -> tuple[int, str, str]:
    with connect(lab, host, user) as client:
        chan_in, out, err = client.exec_command(cmd, timeout=20)
        if stdin:
            chan_in.write(stdin)
        chan_in.channel.shutdown_write()
        status = out.channel.recv_exit_status()
        return status, out.read().decode(), err.read().decode()


def http_get(ip: str, port: int, vhost: str) -> tuple[int, str]:
    conn = http.client.HTTPConnection(ip, port, timeout=3)
    try:
        conn.request("GET", "/", headers={"Host": vhost})
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        conn.close()


def root_iptables() -> str:
    """The root namespace's rules, read-only (counters dropped)."""
    out = subprocess.run(["iptables-save"], capture_output=True, text=True, check=True, timeout=30).stdout
    return "\n".join(line for line in out.splitlines() if not line.startswith("#"))


ROOT_SYSCTLS = (
    "net/ipv4/conf/all/accept_redirects",
    "net/ipv4/conf/all/log_martians",
    "net/ipv4/icmp_echo_ignore_broadcasts",
    "net/ipv6/conf/all/accept_redirects",
)


def root_sysctls() -> dict[str, str]:
    return {k: Path("/proc/sys", k).read_text().strip() for k in ROOT_SYSCTLS}


@pytest.fixture(scope="module")
def special_lab(lab_factory: Callable[..., Lab]) -> Iterator[Lab]:
    specs = [
        HostSpec("no-ufw", ufw_installed=False),
        HostSpec("ufw-off", ufw_active=False),
        HostSpec("sudo-host", sudo_users=True),
        HostSpec("quiet", http_listener=False),
    ]
    with lab_factory(specs) as lab:
        yield lab


def test_ssh_to_every_host_with_verified_host_key(lab_hosts: Lab) -> None:
    assert [h.name for h in lab_hosts.hosts] == [f"k8s-worker-{i:02d}" for i in range(1, 6)]
    assert [h.ip for h in lab_hosts.hosts] == [f"198.18.0.{i}" for i in range(11, 16)]
    for host in lab_hosts.hosts:
        with connect(lab_hosts, host) as client:
            key = client.get_transport().get_remote_server_key()
            assert f"{key.get_name()} {key.get_base64()}" == host.host_key_pub
        status, out, _ = ssh_run(lab_hosts, host, "hostname; id -u; ufw status")
        assert status == 0
        name, uid, *ufw = out.splitlines()
        assert (name, uid) == (host.name, "0")
        assert ufw[0] == "Status: active"
        assert any(line.split()[:2] == ["22/tcp", "ALLOW"] for line in ufw)


def test_ufw_rule_opens_the_port_on_that_host_only(lab_hosts: Lab) -> None:
    one, two = lab_hosts.hosts[0], lab_hosts.hosts[1]
    iptables_before, sysctls_before = root_iptables(), root_sysctls()
    assert not lab_hosts.tcp_reachable(one.ip, INGRESS_PORT, timeout=0.5)
    status, out, err = ssh_run(lab_hosts, one, f"ufw allow {INGRESS_PORT}/tcp")
    assert status == 0, err
    try:
        assert lab_hosts.tcp_reachable(one.ip, INGRESS_PORT, timeout=0.5)
        for vhost in INGRESS_HOSTS:
            assert http_get(one.ip, INGRESS_PORT, vhost) == (200, f"{one.name}\n")
        assert http_get(one.ip, INGRESS_PORT, "other.example")[0] == 404
        assert f"{INGRESS_PORT}/tcp" in one.run("ufw status").stdout
        assert f"{INGRESS_PORT}/tcp" not in two.run("ufw status").stdout
        assert not lab_hosts.tcp_reachable(two.ip, INGRESS_PORT, timeout=0.5)
        assert str(INGRESS_PORT) not in two.run("iptables-save").stdout
    finally:
        one.run(f"ufw delete allow {INGRESS_PORT}/tcp")
    assert not lab_hosts.tcp_reachable(one.ip, INGRESS_PORT, timeout=0.5)
    assert root_iptables() == iptables_before
    assert root_sysctls() == sysctls_before


def test_host_without_ufw(special_lab: Lab) -> None:
    host = special_lab.host("no-ufw")
    status, out, _ = ssh_run(special_lab, host, "command -v ufw; echo rc=$?; ls /usr/sbin/sshd")
    assert status == 0
    assert out.split() == ["rc=1", "/usr/sbin/sshd"]
    assert special_lab.tcp_reachable(host.ip, INGRESS_PORT)  # nothing filters


def test_inactive_ufw_host(special_lab: Lab) -> None:
    host = special_lab.host("ufw-off")
    status, out, _ = ssh_run(special_lab, host, "ufw status verbose")
    assert (status, out.strip()) == (0, "Status: inactive")
    assert http_get(host.ip, INGRESS_PORT, INGRESS_HOSTS[0]) == (200, "ufw-off\n")


def test_extra_listener_and_no_default_listener(special_lab: Lab) -> None:
    host = special_lab.host("ufw-off")
    quiet = special_lab.host("quiet")
    assert not special_lab.tcp_reachable(quiet.ip, INGRESS_PORT)
    assert not special_lab.tcp_reachable(host.ip, 8080)
    host.listen(8080)
    try:
        assert http_get(host.ip, 8080, "anything") == (200, "ufw-off\n")
    finally:
        host.stop_listener(8080)
    assert not special_lab.tcp_reachable(host.ip, 8080)


def test_sudo_users(special_lab: Lab) -> None:
    host = special_lab.host("sudo-host")
    assert ssh_run(special_lab, host, "id -un; sudo -n id -u", user=SUDO_NOPASSWD_USER)[:2] == (
        0,
        f"{SUDO_NOPASSWD_USER}\n0\n",
    )
    status, _, err = ssh_run(special_lab, host, "sudo -n true", user=SUDO_PASSWORD_USER)
    assert status == 1
    assert "password is required" in err
    status, out, _ = ssh_run(
        special_lab, host, "sudo -S -p '' id -u", user=SUDO_PASSWORD_USER, stdin=SUDO_PASSWORD + "\n"
    )
    assert (status, out) == (0, "0\n")
    assert ssh_run(special_lab, host, "id -u")[:2] == (0, "0\n")
    # The users exist only inside that host.
    assert SUDO_NOPASSWD_USER not in Path("/etc/passwd").read_text()
    assert host.run(f"getent passwd {SUDO_NOPASSWD_USER}").returncode == 0
    assert special_lab.host("no-ufw").run(f"getent passwd {SUDO_NOPASSWD_USER}", check=False).returncode == 2


def test_stop_and_start_host(special_lab: Lab) -> None:
    host = special_lab.host("quiet")
    host.run("ufw allow 3000/tcp")
    special_lab.stop_host(host.name)
    started = time.monotonic()
    with pytest.raises(paramiko.ssh_exception.NoValidConnectionsError):
        connect(special_lab, host)
    assert time.monotonic() - started < 2
    special_lab.start_host(host.name)
    status, out, _ = ssh_run(special_lab, host, "ufw status")
    assert status == 0
    assert "3000/tcp" in out  # the host's state survived


def test_regenerated_host_key_is_rejected(special_lab: Lab, tmp_path: Path) -> None:
    old = special_lab.host("ufw-off")
    new = special_lab.regenerate_host_key(old.name)
    assert new.host_key_pub != old.host_key_pub
    assert special_lab.host(old.name) == new
    with pytest.raises(paramiko.BadHostKeyException):
        connect(special_lab, new)
    fresh = tmp_path / "known_hosts"
    fresh.write_text(f"{new.ip} {new.host_key_pub}\n")
    with connect(special_lab, new, known_hosts=fresh):
        pass


def test_servers_tsv_lists_lab_hosts_as_workers(lab_hosts: Lab, tmp_path: Path) -> None:
    path = lab_hosts.servers_tsv(tmp_path / "servers.tsv", extra_rows=NON_K3S_ROWS)
    inv = inventory.read_inventory(path)
    workers = inventory.select(inv, inventory.Role.WORKER)
    assert [(h.hostname, h.private_ip, h.user) for h in workers] == [(h.name, h.ip, "root") for h in lab_hosts.hosts]
    masters = inventory.select(inv, inventory.Role.MASTER)
    assert [h.hostname for h in masters] == ["k8s-master-01", "k8s-master-02", "k8s-master-03"]
    assert not {h.private_ip for h in masters} & {h.ip for h in lab_hosts.hosts}
    assert len(inv.hosts) == 8 + len(NON_K3S_ROWS)


def test_teardown_leaves_nothing(lab_factory: Callable[..., Lab]) -> None:
    lab = lab_factory(["gone-01", "gone-02"])
    netns = {h.netns for h in lab.hosts}
    pids = [
        int(p)
        for h in lab.hosts
        for p in subprocess.run(
            ["ip", "netns", "pids", h.netns], capture_output=True, text=True, check=True
        ).stdout.split()
    ]
    assert pids
    workdir = lab.workdir
    lab.close()
    lab.close()  # idempotent
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert not [line for line in listed.splitlines() if line.split()[0] in netns]
    assert not [p for p in pids if Path(f"/proc/{p}").exists()]
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    assert f"{PREFIX}{lab.token}h" not in links
    assert not workdir.exists()
    assert not (RECORD_DIR / f"{lab.token}.json").exists()


def test_leftovers_of_a_dead_run_are_removed(lab_hosts: Lab) -> None:
    token = "0dead0"
    netns = f"{PREFIX}-{token}-leftover"
    RECORD_DIR.mkdir(parents=True, exist_ok=True)
    (RECORD_DIR / f"{token}.json").write_text(json.dumps({"pid": 2**22 + 1, "start": "0", "workdir": None}))
    subprocess.run(["ip", "netns", "add", netns], check=True)
    sleeper = subprocess.Popen(["ip", "netns", "exec", netns, "sleep", "300"], start_new_session=True)
    try:
        removed = remove_leftovers()
        assert f"netns {netns}" in removed
        assert sleeper.wait(timeout=10) != 0
        listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
        assert netns not in listed
        assert not (RECORD_DIR / f"{token}.json").exists()
        # The live lab of this process is left alone.
        assert all(h.run("true").returncode == 0 for h in lab_hosts.hosts)
        assert os.path.exists(f"/run/netns/{lab_hosts.hosts[0].netns}")
    finally:
        if sleeper.poll() is None:
            sleeper.kill()
            sleeper.wait(timeout=10)
        subprocess.run(["ip", "netns", "del", netns], capture_output=True, check=False)
        (RECORD_DIR / f"{token}.json").unlink(missing_ok=True)
