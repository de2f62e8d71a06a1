"""Secrets stay secret and every change is on record: env values, kubeconfig credentials, files, audit log.

On the real control plane (seeded like KeyBuzz, one Deployment given a literal secret in its env)
and lab hosts (sshd + ufw):

- no human output of convert, rollback and all --dry-run prints an env value (they are masked
  unless --show-values), nor does the -vv trace of the API requests, nor the audit log; the
  objects of -o yaml hold them (they are what would be applied, for ``kubectl apply -f -``), and
  so do the backups (a restore must be faithful), which are private;
- errors from a bad or hostile API server never echo the kubeconfig's token or client key;
- --kubeconfig-from-master reads k3s.yaml from a master over SSH and --save-kubeconfig writes it
  0600; a failure after that prints none of its credentials;
- the audit log (JSON lines next to the backups) holds one entry per change made by ufw, overlay,
  convert, rollback, ingress and all: when, who, where, what, outcome.

kwok plays the kubelets (pods are Running objects); the URL checks go to a closed loopback port.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import secrets
import stat
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from typer.testing import CliRunner, Result

from keybuzz_fix.cli import app
from tests.cluster import pki
from tests.cluster.fixtures import KeybuzzCluster
from tests.lab.hosts import SERVERS_TSV_COLUMNS, HostSpec, Lab, LabHost

pytestmark = pytest.mark.integration
NS = "keybuzz"
SECRET = f"kbf-literal-secret-{secrets.token_hex(6)}"
TOKEN = f"kbf-token-{secrets.token_hex(12)}"
runner = CliRunner()


@pytest.fixture(scope="module")
def lab(lab_factory: Callable[..., Lab]) -> Iterator[Lab]:
    with lab_factory([HostSpec("k8s-worker-01")]) as lab:
        yield lab


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("secrets") / "state"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KEYBUZZ_FIX_STATE_DIR", str(path))
        yield path


@pytest.fixture(scope="module")
def cluster(keybuzz_cluster: KeybuzzCluster) -> KeybuzzCluster:
    """The seeded cluster, keybuzz-api given a literal secret in its env (as real Deployments have)."""
    client.AppsV1Api(keybuzz_cluster.api_client).patch_namespaced_deployment(
        "keybuzz-api",
        NS,
        {
            "spec": {
                "template": {
                    "spec": {
                        "containers": [{"name": "keybuzz-api", "env": [{"name": "DATABASE_PASSWORD", "value": SECRET}]}]
                    }
                }
            }
        },
    )
    return keybuzz_cluster


def servers_tsv(lab: Lab, path: Path) -> Path:
    return lab.servers_tsv(path, masters=())


def cli(*args: str) -> Result:
    result = runner.invoke(app, list(args), env={"COLUMNS": "200"})
    assert "Traceback" not in result.output
    return result


def ssh(lab: Lab) -> list[str]:
    return ["--identity", str(lab.identity_file), "--known-hosts", str(lab.known_hosts_file), "--timeout", "5"]


def loopback_config(path: Path, **firewall: Any) -> Path:
    data: dict[str, Any] = {"validate": {"urls": ["http://127.0.0.1:1/"]}}
    if firewall:
        data["firewall"] = firewall
    path.write_text(yaml.safe_dump(data))
    return path


def audit(state: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (state / "audit.jsonl").read_text().splitlines()]


def test_no_output_mode_shows_env_values_and_files_are_private(
    cluster: KeybuzzCluster, lab: Lab, state: Path, tmp_path: Path
) -> None:
    kc = ["--kubeconfig", str(cluster.kubeconfig)]
    shown = cli("convert", "--dry-run", "-o", "yaml", "--show-values", *kc)
    assert shown.exit_code == 0 and SECRET in shown.stdout  # the value is there to hide: the checks below mean it
    outputs = {
        "convert --dry-run": cli("convert", "--dry-run", *kc),
        "convert --dry-run -o json": cli("convert", "--dry-run", "-o", "json", *kc),
        "-vv convert --dry-run": cli("-vv", "convert", "--dry-run", *kc),
        "all --dry-run": cli(
            "all",
            str(servers_tsv(lab, tmp_path / "servers.tsv")),
            "--dry-run",
            *kc,
            *ssh(lab),
            "--config",
            str(loopback_config(tmp_path / "c.yaml")),
        ),
        "convert --yes": cli("convert", "--yes", *kc),
    }
    outputs["rollback --dry-run"] = cli("rollback", "--latest", "--dry-run", *kc)
    outputs["rollback --dry-run -o json"] = cli("rollback", "--latest", "--dry-run", "-o", "json", *kc)
    outputs["rollback --yes"] = cli("rollback", "--latest", "--yes", *kc)
    for name, result in outputs.items():
        assert result.exit_code == 0, (name, result.output)
        assert SECRET not in result.output, name
    machine = cli("convert", "--dry-run", "-o", "yaml", *kc)
    assert machine.exit_code == 0 and SECRET in machine.stdout and "<masked>" not in machine.stdout
    trace = outputs["-vv convert --dry-run"].stderr
    assert "keybuzz-fix: trace: api GET https://" in trace  # each request on one line
    assert "keybuzz-fix: trace: api request body:" in trace and "DATABASE_PASSWORD" in trace  # -vv: the bodies

    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    backups = sorted((state / "backups").iterdir())
    assert [p.name.split("-")[0] for p in backups] == ["convert", "rollback"]
    for path in [*backups, state / "audit.jsonl"]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert SECRET in backups[0].read_text()  # the original, exactly: what a rollback restores
    assert SECRET not in (state / "audit.jsonl").read_text()
    assert not [p.name for p in state.rglob(".*")]  # no half-written temporary file


def test_every_change_is_in_the_audit_log(cluster: KeybuzzCluster, lab: Lab, state: Path, tmp_path: Path) -> None:
    kc = ["--kubeconfig", str(cluster.kubeconfig)]
    servers = str(servers_tsv(lab, tmp_path / "servers.tsv"))
    start = len(audit(state)) if (state / "audit.jsonl").exists() else 0
    host: LabHost = lab.hosts[0]
    rules_before = len(host.run("ufw show added").stdout.splitlines())

    ports = ("--ports", "31695/tcp,32720/tcp")  # all opens the rest: the ports it reads from the cluster
    assert cli("ufw", servers, *ssh(lab), "--source", "198.18.0.0/24", *ports, "--yes").exit_code == 0
    assert cli("overlay", servers, *ssh(lab), "--yes").exit_code == 0
    assert cli("convert", "--yes", *kc).exit_code == 0
    assert cli("rollback", "--latest", "--yes", *kc).exit_code == 0
    assert cli("ingress", servers, "--yes", *kc).exit_code == 0
    config = loopback_config(tmp_path / "all.yaml", source="198.18.0.0/24")
    result = cli("all", servers, "--yes", *kc, *ssh(lab), "--config", str(config))
    assert result.exit_code in (0, 1, 3), result.output  # the URL check fails on loopback: the score may be low

    entries = audit(state)[start:]
    for e in entries:  # when, who, where, what, outcome
        assert dt.datetime.fromisoformat(e["time"]).tzinfo is not None
        assert "@" in e["who"] and e["where"] and e["action"] and e["outcome"] == "ok", e
    by = {}
    for e in entries:
        by.setdefault(e["command"], []).append(e)
    rules_added = len(host.run("ufw show added").stdout.splitlines()) - rules_before
    ufw_like = [e for e in entries if e["where"] == host.name]
    assert len(ufw_like) == rules_added == 2 + 3 + 4  # ufw, overlay, and the ports all read from the cluster
    assert [e["action"] for e in by["ufw"]][-2:] == [
        "ufw allow from 198.18.0.0/24 to any port 31695 proto tcp comment 'keybuzz-fix: port 31695/tcp'",
        "ufw allow from 198.18.0.0/24 to any port 32720 proto tcp comment 'keybuzz-fix: port 32720/tcp'",
    ]
    assert [e["action"] for e in by["all"]] == [
        "ufw allow from 198.18.0.0/24 to any port 80 proto tcp comment 'keybuzz-fix: ingress-nginx HTTP host port'",
        "ufw allow from 198.18.0.0/24 to any port 443 proto tcp comment 'keybuzz-fix: ingress-nginx HTTPS host port'",
        "ufw allow from 198.18.0.0/24 to any port 8080 proto tcp comment 'keybuzz-fix: keybuzz-api host port'",
        "ufw allow from 198.18.0.0/24 to any port 3000 proto tcp comment 'keybuzz-fix: keybuzz-front host port'",
    ]
    assert [e["action"] for e in by["overlay"]] == [
        "ufw allow from 10.0.0.0/16 to any port 8472 proto udp comment 'keybuzz-fix: flannel VXLAN'",
        "ufw allow from 10.42.0.0/16 to any comment 'keybuzz-fix: pod network'",
        "ufw allow from 10.43.0.0/16 to any comment 'keybuzz-fix: service network'",
    ]  # as run
    converts = [(e["action"], e["where"]) for e in by["convert"]]
    assert converts.count(("create", "DaemonSet keybuzz/keybuzz-api")) == 2  # convert, then all's convert step
    assert ("delete", "Deployment keybuzz/keybuzz-front") in converts
    assert sum(a == "backup" for a, _ in converts) == 2
    assert [(e["action"], e["where"]) for e in by["rollback"] if e["action"] != "backup"] == [
        ("create", "Deployment keybuzz/keybuzz-api"),
        ("create", "Deployment keybuzz/keybuzz-front"),
        ("create", "HorizontalPodAutoscaler keybuzz/keybuzz-api"),
        ("create", "HorizontalPodAutoscaler keybuzz/keybuzz-front"),
        ("patch", "Service keybuzz/keybuzz-api"),
        ("patch", "Service keybuzz/keybuzz-front"),
        ("delete", "DaemonSet keybuzz/keybuzz-api"),
        ("delete", "DaemonSet keybuzz/keybuzz-front"),
    ]
    ingress = by["ingress"]
    assert {e["where"] for e in ingress} == {
        "Ingress keybuzz/keybuzz-front-ingress",
        "Ingress keybuzz/keybuzz-api-ingress",
    }
    assert all("after" in e for e in ingress)  # the before/after summary


# -- kubeconfig credentials ---------------------------------------------------------------------------


class EchoServer:
    """A broken API server on 127.0.0.1 that answers every request with an error echoing the credentials."""

    def __init__(self, status: int) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                self._answer()

            def do_POST(self) -> None:  # noqa: N802
                self._answer()

            def do_PATCH(self) -> None:  # noqa: N802
                self._answer()

            def _answer(self) -> None:
                body = json.dumps(
                    {"kind": "Status", "message": f"cannot list resource: you sent {self.headers.get('Authorization')}"}
                ).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def token_kubeconfig(path: Path, server: str, ca_pem: bytes | None = None) -> Path:
    cluster: dict[str, Any] = {"server": server}
    if ca_pem:
        cluster["certificate-authority-data"] = base64.b64encode(ca_pem).decode()
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "x",
                "clusters": [{"name": "c", "cluster": cluster}],
                "users": [{"name": "u", "user": {"token": TOKEN}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
            }
        )
    )
    return path


def test_errors_never_echo_kubeconfig_credentials(cluster: KeybuzzCluster, tmp_path: Path) -> None:
    cp = cluster.control_plane
    admin = yaml.safe_load(cp.kubeconfig.read_text())
    ca_pem = base64.b64decode(admin["clusters"][0]["cluster"]["certificate-authority-data"])
    servers = tmp_path / "servers.tsv"
    servers.write_text(
        "\t".join(SERVERS_TSV_COLUMNS)
        + "\n"
        + "\t".join(["prod", "-", "k8s-worker-01", "198.18.0.11", "-", "root", "-", "k3s", "worker", "-", "-", "-"])
        + "\n"
    )
    config = str(loopback_config(tmp_path / "c.yaml"))
    commands = [
        ["convert", "--dry-run"],
        ["ingress", "--dry-run"],
        ["validate", str(servers), "--config", config],
        ["diagnose", str(servers), "--known-hosts", str(tmp_path / "none"), "-o", "json"],
    ]

    wrong = token_kubeconfig(tmp_path / "wrong-token", cp.server, ca_pem)  # the real API server: 401
    for args in commands:
        result = cli(*args, "--kubeconfig", str(wrong))
        assert TOKEN not in result.output, args
        traced = cli("-vv", *args, "--kubeconfig", str(wrong))
        assert "keybuzz-fix: trace: api " in traced.stderr and TOKEN not in traced.output, args
        assert "rejected the credentials" in result.output, (args, result.output)

    key_data = admin["users"][0]["user"]["client-key-data"]
    key_pem = base64.b64decode(key_data).decode()
    admin["clusters"][0]["cluster"]["server"] = "https://127.0.0.1:1"  # nothing there
    admin["users"][0]["user"]["token"] = TOKEN
    unreachable = tmp_path / "unreachable"
    unreachable.write_text(yaml.safe_dump(admin))
    for args in commands:
        result = cli(*args, "--kubeconfig", str(unreachable))
        for secret in (TOKEN, key_data, key_pem.splitlines()[1]):
            assert secret not in result.output, args

    for status in (500, 403, 401):
        server = EchoServer(status)
        try:
            echo = token_kubeconfig(tmp_path / f"echo-{status}", server.url)
            for args in commands[:3]:
                result = cli(*args, "--kubeconfig", str(echo))
                assert result.exit_code == 1, result.output
                assert TOKEN not in result.output, (status, args, result.output)
            result = cli("convert", "--dry-run", "--kubeconfig", str(echo))
            assert "you sent Bearer <redacted>" in result.stderr, result.stderr  # the server's words, token hidden
            traced = cli("-vv", "convert", "--dry-run", "--kubeconfig", str(echo))
            assert "api response body" in traced.stderr and TOKEN not in traced.output, traced.stderr
        finally:
            server.close()


@pytest.mark.usefixtures("state_dir")
def test_kubeconfig_from_master_is_saved_private_and_never_printed(
    lab_factory: Callable[..., Lab], tmp_path: Path
) -> None:
    """A master whose /etc/rancher/k3s/k3s.yaml (in its own mount namespace only) holds a client key and a token.

    The master's API port 6443 is closed (nothing listens; UFW is inactive, so it refuses at once):
    the command reads and saves the kubeconfig, then fails to reach the API, naming no credential.
    """
    with lab_factory([HostSpec("k8s-master-01", ufw_active=False, http_listener=False)]) as lab:
        master = lab.hosts[0]
        ca = pki.CertificateAuthority()
        pair = ca.issue("system:admin", ["system:masters"])
        k3s = yaml.safe_load(pki.kubeconfig("https://127.0.0.1:6443", ca.cert_pem, "default", pair, "default"))
        k3s["users"][0]["user"]["token"] = TOKEN
        text = yaml.safe_dump(k3s)
        up, work = master.workdir / "etc-upper", master.workdir / "etc-work"
        (up / "rancher" / "k3s").mkdir(parents=True)
        work.mkdir()
        (up / "rancher" / "k3s" / "k3s.yaml").write_text(text)
        binds = " && ".join(
            f"mount --bind {master.workdir / src} {dst}"
            for src, dst in (("etc-ufw", "/etc/ufw"), ("default-ufw", "/etc/default/ufw"), ("hosts", "/etc/hosts"))
        )
        master.run(f"mount -t overlay kbl-etc -o lowerdir=/etc,upperdir={up},workdir={work} /etc && {binds}")
        assert master.run("cat /etc/rancher/k3s/k3s.yaml").stdout == text  # inside the master only
        assert (
            not Path("/etc/rancher/k3s/k3s.yaml").exists()
            or "kbf-token" not in Path("/etc/rancher/k3s/k3s.yaml").read_text()
        )
        servers = lab.servers_tsv(tmp_path / "servers.tsv", masters=[master.name])
        saved = tmp_path / "kube" / "k3s.yaml"
        for args in (["convert", "--dry-run"], ["ingress", "--dry-run"]):
            result = cli(
                *args,
                "--kubeconfig-from-master",
                str(servers),
                "--save-kubeconfig",
                str(saved),
                "--identity",
                str(lab.identity_file),
                "--known-hosts",
                str(lab.known_hosts_file),
            )
            assert result.exit_code == 1, result.output
            (line,) = result.stderr.splitlines()
            assert line.startswith(
                f"keybuzz-fix: error: cannot reach the Kubernetes API at https://{master.ip}:6443 "
                f"(k8s-master-01:/etc/rancher/k3s/k3s.yaml): "
            ), line
            for secret in (TOKEN, k3s["users"][0]["user"]["client-key-data"], pair.key_pem.decode().splitlines()[1]):
                assert secret not in result.output
        # -vv shows the remote command and its output, with the kubeconfig's credentials redacted
        traced = cli(
            "convert",
            "--dry-run",
            "-vv",
            "--kubeconfig-from-master",
            str(servers),
            "--identity",
            str(lab.identity_file),
            "--known-hosts",
            str(lab.known_hosts_file),
        )
        assert f"keybuzz-fix: trace: ssh root@k8s-master-01 ({master.ip}): " in traced.stderr, traced.stderr
        assert "client-key-data: <redacted>" in traced.stderr and "token: <redacted>" in traced.stderr
        for secret in (TOKEN, k3s["users"][0]["user"]["client-key-data"], pair.key_pem.decode().splitlines()[1]):
            assert secret not in traced.output
        # the flag alone reads the command's own servers.tsv (named once)
        flag = cli(
            "diagnose",
            str(servers),
            "--kubeconfig-from-master",
            "--identity",
            str(lab.identity_file),
            "--known-hosts",
            str(lab.known_hosts_file),
            "-o",
            "json",
        )
        cluster_read = json.loads(flag.stdout)["cluster"]
        assert cluster_read["read"] is False, flag.output
        assert f"https://{master.ip}:6443 (k8s-master-01:/etc/rancher/k3s/k3s.yaml)" in cluster_read["error"]
        for secret in (TOKEN, k3s["users"][0]["user"]["client-key-data"]):
            assert secret not in flag.output
        assert stat.S_IMODE(saved.stat().st_mode) == 0o600
        again = yaml.safe_load(saved.read_text())
        assert again["clusters"][0]["cluster"]["server"] == f"https://{master.ip}:6443"
        assert again["users"][0]["user"]["token"] == TOKEN
