"""known_hosts and ssh_config lines OpenSSH accepts, through the real CLI: never a traceback.

tests/data/ssh/known_hosts holds the lines OpenSSH reads or skips without a word (hashed names,
patterns and negations, ``[host]:port``, ``@cert-authority`` — which made paramiko alone die with
a 95-line traceback —, ``@revoked``, security-key and DSA keys, certificates, the old RSA1 form,
bad markers, bad base64, truncated lines); tests/data/ssh/ssh_config the options and blocks
OpenSSH accepts (``ssh -G`` reads it; the model agrees with it). Each line alone, and each file
whole through ``python -m keybuzz_fix``: the tool gets past them and says, in one line per host,
that nothing answers on 127.0.0.1:1.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from keybuzz_fix.hosts.knownhosts import judge, parse_known_hosts
from keybuzz_fix.hosts.sshconfig.config import SshConfig
from tests.property.test_ssh_config_model import local, model_g, ssh_g

ROOT = Path(__file__).resolve().parent.parent.parent
DATA = ROOT / "tests" / "data" / "ssh"
KNOWN_HOSTS = DATA / "known_hosts"
SSH_CONFIG = DATA / "ssh_config"
NAMES = ("k8s-worker-01", "10.0.0.11", "[10.0.0.13]:2201", "db-1", "web1", "a.internal", "corpus.example.com")
# Everything to 127.0.0.1:1, whatever the corpus says after it (the first value obtained wins).
GUARD = "Host *\n  HostName 127.0.0.1\n  Port 1\n  ProxyCommand none\n  StrictHostKeyChecking yes\n"
PRESENTED = base64.b64decode(  # an ed25519 key no line names
    "AAAAC3NzaC1lZDI1NTE5AAAAIEkUnsZkVWzPdB2nmRfNlqIbIEnt/10D2pp5DvlGqhJ+"
)


def option_lines() -> list[str]:
    return [line for line in SSH_CONFIG.read_text().splitlines() if line.strip() and not line.lstrip().startswith("#")]


@pytest.mark.skipif(shutil.which("ssh") is None, reason="needs the OpenSSH client")
def test_openssh_accepts_the_ssh_config_corpus_and_the_model_reads_it_alike() -> None:
    for name in NAMES[:2] + NAMES[3:]:
        expected = ssh_g(SSH_CONFIG, name)
        assert expected is not None, f"ssh -G refuses the corpus for {name}"
        assert model_g(SSH_CONFIG, name) == expected, name


@pytest.mark.parametrize("line", option_lines())
def test_each_ssh_config_line_alone_resolves(tmp_path: Path, line: str) -> None:
    config = tmp_path / "config"
    config.write_text(line + "\n")
    cfg = SshConfig([(config, True)], local=local(), required=config, run_exec=lambda _: 0)
    cfg.check()
    for name in NAMES:
        hop = cfg.hop(cfg.found(name))
        assert hop.port > 0 and hop.hostname


def test_each_known_hosts_line_alone_is_read_or_skipped() -> None:
    lines = KNOWN_HOSTS.read_text().splitlines()
    usable = 0
    for number, line in enumerate(lines, 1):
        entries = parse_known_hosts(line, f"corpus:{number}")
        usable += len(entries)
        for name in NAMES:
            verdict = judge(
                entries,
                name,
                principal=name,
                plain=PRESENTED,
                certificate=None,
                signed_by_ca=lambda _: False,
                trust_new=False,
                files=["corpus"],
                now=int(time.time()),
            )
            assert not verdict.trusted and "\n" not in verdict.problem
    assert usable >= 20


def test_the_cli_reads_both_corpora_without_a_traceback(tmp_path: Path) -> None:
    config = tmp_path / "ssh_config"
    config.write_text(GUARD + SSH_CONFIG.read_text())
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KUBECONFIG", "KEYBUZZ_FIX_", "XDG_", "SSH_"))}
    env.update(HOME=str(home), KEYBUZZ_FIX_STATE_DIR=str(tmp_path / "state"), COLUMNS="120")
    for known in (KNOWN_HOSTS, tmp_path / "missing_known_hosts"):
        args = ["ufw", str(ROOT / "servers.tsv.example"), "--dry-run", "--timeout", "3", "-o", "json"]
        args += ["--ssh-config", str(config), "--known-hosts", str(known)]
        result = subprocess.run(
            [sys.executable, "-m", "keybuzz_fix", *args],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            timeout=120,
            check=False,
        )
        assert "Traceback" not in result.stdout + result.stderr
        assert result.returncode == 1, result.stderr
        hosts = json.loads(result.stdout)["hosts"]
        assert hosts and all(h["status"] == "failed" for h in hosts)
        for h in hosts:
            assert "\n" not in h["error"]
            if known == KNOWN_HOSTS:
                assert h["error_type"] == "HostUnreachable" and "cannot connect to 127.0.0.1:1" in h["error"], h
            else:
                assert h["error_type"] == "HostKeyError" and "does not exist" in h["error"], h


@pytest.mark.skipif(shutil.which("ssh") is None, reason="needs the OpenSSH client")
def test_both_corpora_with_windows_line_endings_read_alike(tmp_path: Path) -> None:
    """Files saved with CRLF endings (edited on Windows): OpenSSH reads them as with LF, and so does the tool."""
    known = KNOWN_HOSTS.read_text()
    crlf_known = parse_known_hosts(known.replace("\n", "\r\n"), "corpus")
    plain_known = parse_known_hosts(known, "corpus")
    assert len(crlf_known) == len(plain_known) >= 20
    assert [(e.marker, e.names, e.key_type, e.blob) for e in crlf_known] == [
        (e.marker, e.names, e.key_type, e.blob) for e in plain_known
    ]
    config = tmp_path / "ssh_config"
    config.write_bytes(SSH_CONFIG.read_bytes().replace(b"\n", b"\r\n"))
    for name in NAMES[:2] + NAMES[3:]:
        expected = ssh_g(config, name)
        assert expected is not None, f"ssh -G refuses the CRLF corpus for {name}"
        assert model_g(config, name) == expected == ssh_g(SSH_CONFIG, name), name
