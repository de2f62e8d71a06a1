"""A host that presents only a CA-signed host key (sshd HostCertificate, HostKeyAlgorithms the certificate only).

known_hosts has no key for it, only ``@cert-authority`` lines; the ssh_config gives it a
HostKeyAlias, the name its certificate lists (as with signed host keys, which are issued for names,
not addresses). The certificate is checked against the CA as OpenSSH checks it: the CA's signature,
a host certificate, valid now, the name one of its principals, the CA not @revoked. Each refusal
is one line; none is a traceback (paramiko alone dies on the ``@cert-authority`` line).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from keybuzz_fix.cli import app
from tests.lab.hosts import HostSpec, Lab, LabHost

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("state_dir")]
NAME = "k8s-worker-01"
CORPUS = Path(__file__).resolve().parent.parent / "data" / "ssh" / "known_hosts"
ALIAS = "k8s-worker-01.lab.example"


@dataclass(frozen=True)
class Signed:
    lab: Lab
    host: LabHost
    ca: Path
    other_ca: Path
    servers: Path
    tmp: Path

    def sign(self, validity: str = "-5m:+1h", principals: str = ALIAS, ca: Path | None = None) -> None:
        """Give the host a new certificate and restart its sshd."""
        key = self.host.workdir / "ssh_host_ed25519_key.pub"
        cmd = ["ssh-keygen", "-q", "-s", str(ca or self.ca), "-I", NAME, "-h", "-n", principals, "-V", validity]
        subprocess.run([*cmd, str(key)], check=True, timeout=30, capture_output=True)
        self.lab.stop_host(NAME)
        self.lab.start_host(NAME)


def keygen(path: Path) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True, timeout=30)
    return path


@pytest.fixture(scope="module")
def signed(lab_factory: Callable[..., Lab], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Signed]:
    tmp = tmp_path_factory.mktemp("certs")
    with lab_factory([HostSpec(NAME, http_listener=False)]) as lab:
        host = lab.host(NAME)
        cert = host.workdir / "ssh_host_ed25519_key-cert.pub"
        with open(host.workdir / "sshd_config", "a") as f:
            f.write(f"HostCertificate {cert}\nHostKeyAlgorithms ssh-ed25519-cert-v01@openssh.com\n")
        site = Signed(
            lab, host, keygen(tmp / "ca"), keygen(tmp / "other_ca"), lab.servers_tsv(tmp / "servers.tsv"), tmp
        )
        site.sign()
        yield site


def known(site: Signed, *lines: str) -> Path:
    path = site.tmp / f"known_hosts_{abs(hash(lines))}"
    path.write_text("\n".join(["# signed host keys only", *lines]) + "\n")
    return path


def ca_line(ca: Path, pattern: str = "*.lab.example", marker: str = "@cert-authority") -> str:
    kind, data = ca.with_suffix(".pub").read_text().split()[:2]
    return f"{marker} {pattern} {kind} {data}"


def ufw(site: Signed, known_hosts: Path, alias: str = ALIAS, *args: str) -> tuple[int, dict[str, Any], str]:
    config = site.tmp / "ssh_config"
    config.write_text(
        f"Host {NAME}\n    HostKeyAlias {alias}\n"
        f"Host *\n    IdentityFile {site.lab.identity_file}\n    UserKnownHostsFile {known_hosts}\n"
    )
    result = CliRunner().invoke(
        app, ["ufw", str(site.servers), "--dry-run", "--ssh-config", str(config), "--timeout", "5", "-o", "json", *args]
    )
    assert "Traceback" not in result.output
    return result.exit_code, json.loads(result.stdout), result.stderr


def error(data: dict[str, Any]) -> str:
    (host,) = data["hosts"]
    assert host["error_type"] == "HostKeyError", host
    assert "\n" not in host["error"]
    return str(host["error"])


def test_a_certificate_signed_by_a_trusted_ca_is_accepted(signed: Signed) -> None:
    code, data, _ = ufw(signed, known(signed, ca_line(signed.other_ca, "*.example.org"), ca_line(signed.ca)))
    assert code == 0, data
    assert data["hosts"][0]["status"] == "planned" and data["accepted_host_keys"] == []
    corpus = CORPUS.read_text().splitlines()  # every odd line OpenSSH accepts, around the CA line
    code, data, _ = ufw(signed, known(signed, *corpus[:15], ca_line(signed.ca), *corpus[15:]))
    assert code == 0, data


def test_a_certificate_of_another_ca_is_one_line(signed: Signed) -> None:
    code, data, _ = ufw(signed, known(signed, ca_line(signed.other_ca)))
    assert code == 1
    message = error(data)
    assert f"host key for {ALIAS} is not in" in message
    assert "its certificate is signed by SHA256:" in message and f"the @cert-authority line(s) for {ALIAS}" in message


def test_a_certificate_and_no_ca_line_is_one_line(signed: Signed) -> None:
    other = known(signed, f"198.18.0.250 {signed.host.host_key_pub}")
    code, data, _ = ufw(signed, other)
    assert code == 1
    assert f"it presents a certificate, but no @cert-authority line of known_hosts is for {ALIAS}" in error(data)


def test_a_revoked_ca_is_refused(signed: Signed) -> None:
    code, data, _ = ufw(signed, known(signed, ca_line(signed.ca), ca_line(signed.ca, "*", "@revoked")))
    assert code == 1
    assert f"the certificate authority that signed {ALIAS}'s key is marked @revoked" in error(data)


def test_a_name_the_certificate_does_not_list_is_refused(signed: Signed) -> None:
    code, data, _ = ufw(signed, known(signed, ca_line(signed.ca)), "other.lab.example")
    assert code == 1
    assert f"other.lab.example is not one of its principals ({ALIAS})" in error(data)


def test_an_expired_certificate_is_refused_and_a_new_one_accepted(signed: Signed) -> None:
    signed.sign(validity="20200101:20200102")
    try:
        code, data, _ = ufw(signed, known(signed, ca_line(signed.ca)))
        assert code == 1
        assert "is not valid: it has expired" in error(data)
    finally:
        signed.sign()
    code, data, _ = ufw(signed, known(signed, ca_line(signed.ca)))
    assert code == 0, data
