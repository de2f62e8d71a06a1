"""--kubeconfig-from-master tries each master of servers.tsv in turn, and says which answered.

Two lab masters; the first one's sshd is stopped (the outage of issue 20, row 15). The second
holds a k3s.yaml in its own mount namespace. Its API port is closed, so the command reads the
kubeconfig from the second master and then fails to reach the API: the one error line names
the master that answered and why the first did not.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from keybuzz_fix.cli import app
from tests.cluster import pki
from tests.lab.hosts import HostSpec, Lab

pytestmark = pytest.mark.integration


@pytest.mark.usefixtures("state_dir")
def test_kubeconfig_from_master_goes_on_to_the_next_master(lab_factory: Callable[..., Lab], tmp_path: Path) -> None:
    specs = [HostSpec(n, ufw_active=False, http_listener=False) for n in ("k8s-master-01", "k8s-master-02")]
    with lab_factory(specs) as lab:
        first, second = lab.hosts
        ca = pki.CertificateAuthority()
        pair = ca.issue("system:admin", ["system:masters"])
        text = pki.kubeconfig("https://127.0.0.1:6443", ca.cert_pem, "default", pair, "default")
        up, work = second.workdir / "etc-upper", second.workdir / "etc-work"
        (up / "rancher" / "k3s").mkdir(parents=True)
        work.mkdir()
        (up / "rancher" / "k3s" / "k3s.yaml").write_text(text)
        binds = " && ".join(
            f"mount --bind {second.workdir / src} {dst}"
            for src, dst in (("etc-ufw", "/etc/ufw"), ("default-ufw", "/etc/default/ufw"), ("hosts", "/etc/hosts"))
        )
        second.run(f"mount -t overlay kbl-etc -o lowerdir=/etc,upperdir={up},workdir={work} /etc && {binds}")
        servers = lab.servers_tsv(tmp_path / "servers.tsv", masters=[first.name, second.name])
        lab.stop_host(first.name)

        result = CliRunner().invoke(
            app,
            [
                "convert",
                "--dry-run",
                "--kubeconfig-from-master",
                str(servers),
                "--identity",
                str(lab.identity_file),
                "--known-hosts",
                str(lab.known_hosts_file),
            ],
        )
        assert result.exit_code == 1, result.output
        (line,) = result.stderr.splitlines()
        assert line.startswith(
            f"keybuzz-fix: error: cannot reach the Kubernetes API at https://{second.ip}:6443 "
            f"(k8s-master-02:/etc/rancher/k3s/k3s.yaml, after k8s-master-01: cannot connect to {first.ip}:22: "
            "connection refused: nothing listens on the SSH port (sshd down?)): "
        ), line

        lab.stop_host(second.name)  # no master answers: each one named, with its cause
        result = CliRunner().invoke(
            app,
            [
                "convert",
                "--dry-run",
                "--kubeconfig-from-master",
                str(servers),
                "--known-hosts",
                str(lab.known_hosts_file),
            ],
        )
        assert result.exit_code == 1, result.output
        assert result.stderr == (
            "keybuzz-fix: error: --kubeconfig-from-master: no master gave /etc/rancher/k3s/k3s.yaml: "
            f"k8s-master-01: cannot connect to {first.ip}:22: connection refused: nothing listens on the SSH port "
            f"(sshd down?); k8s-master-02: cannot connect to {second.ip}:22: connection refused: nothing listens on "
            "the SSH port (sshd down?)\n"
        )
