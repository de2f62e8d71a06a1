"""`keybuzz-fix validate` against the real test control plane seeded like the KeyBuzz cluster.

kwok plays the kubelets (pods are Running and Ready objects, not processes). The URL checks go
to a small HTTP server on 127.0.0.1 named through ``--resolve`` (or to a closed loopback port),
never to the real sites. The converted state is built here by hand (DaemonSets from the
Deployments' templates, NodePort Services) to score the passing side of checks 1–7. There are no
worker hosts here: check 8 (the paths between workers, over SSH) fails with the reason, as it must;
tests/integration/test_end_to_end.py scores all eight on real workers.
"""

from __future__ import annotations

import copy
import json
import socket
import threading
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from kubernetes import client
from typer.testing import CliRunner

from keybuzz_fix.cli import app
from tests.cluster.fixtures import KeybuzzCluster
from tests.cluster.seed import wait_pods_running
from tests.lab.hosts import SERVERS_TSV_COLUMNS

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("state_dir")]
NS = "keybuzz"
HOSTS = ("platform.keybuzz.io", "platform-api.keybuzz.io")
SERVERS_HEADER = "\t".join(SERVERS_TSV_COLUMNS) + "\n"


class Sites:
    """An HTTP server on 127.0.0.1 answering the two sites: 200, or the status set for a host."""

    def __init__(self) -> None:
        self.status = dict.fromkeys(HOSTS, 200)
        sites = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                host = (self.headers.get("Host") or "").rsplit(":", 1)[0]
                self.send_response(sites.status.get(host, 404))
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture()
def sites() -> Iterator[Sites]:
    s = Sites()
    yield s
    s.close()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def url_args(tmp_path: Path, port: int) -> list[str]:
    """--config with the two sites on 127.0.0.1:port over HTTP, and the --resolve that aims them there."""
    config = tmp_path / "urls.yaml"
    config.write_text("validate:\n  urls:\n" + "".join(f"    - http://{h}:{port}/\n" for h in HOSTS))
    return ["--config", str(config), *[a for h in HOSTS for a in ("--resolve", f"{h}:{port}:127.0.0.1")]]


def servers_tsv(path: Path) -> Path:
    rows = [f"prod\t-\tk8s-master-0{i}\t198.18.0.2{i}\t-\troot\t-\tk3s\tmaster\t-\t-\t-\n" for i in (1, 2, 3)]
    rows += [f"prod\t-\tk8s-worker-0{i}\t198.18.0.1{i}\t-\troot\t-\tk3s\tworker\t-\t-\t-\n" for i in range(1, 6)]
    path.write_text(SERVERS_HEADER + "".join(rows))
    return path


def validate(cluster: KeybuzzCluster, tmp_path: Path, *args: str, output: str = "json") -> tuple[int, str]:
    result = CliRunner().invoke(
        app,
        [
            "validate",
            str(servers_tsv(tmp_path / "servers.tsv")),
            "--kubeconfig",
            str(cluster.kubeconfig),
            "--retries",
            "0",
            "--url-timeout",
            "3",
            "--known-hosts",
            str(tmp_path / "no-known-hosts"),
            "-o",
            output,
            *args,
        ],
    )
    assert "Traceback" not in result.output
    return result.exit_code, result.stdout


NO_WORKERS = "known_hosts file"  # check 8's evidence: no worker could be asked (no host keys known here)


def test_pre_conversion_state_scores_low_with_evidence(keybuzz_cluster: KeybuzzCluster, tmp_path: Path) -> None:
    port = closed_port()
    code, out = validate(keybuzz_cluster, tmp_path, *url_args(tmp_path, port))
    assert code == 1, out
    card = json.loads(out)
    assert (card["passed"], card["total"], card["score"], card["threshold"], card["ok"]) == (1, 8, 12.5, 80, False)
    status = {c["number"]: c["status"] for c in card["checks"]}
    assert status == {1: "fail", 2: "fail", 3: "fail", 4: "pass", 5: "fail", 6: "fail", 7: "fail", 8: "fail"}
    detail = {c["number"]: c["detail"] for c in card["checks"]}
    assert detail[1] == (
        "keybuzz-api: no DaemonSet (still a Deployment); keybuzz-front: no DaemonSet (still a Deployment)"
    )
    assert detail[2] == "keybuzz-api: 0/5 (no DaemonSet); keybuzz-front: 0/5 (no DaemonSet)"
    assert detail[3] == (
        "keybuzz-api: no DaemonSet; the Deployment has hostNetwork off; "
        "keybuzz-front: no DaemonSet; the Deployment has hostNetwork off"
    )
    assert detail[4] == "DaemonSet found; hostNetwork on; 5/5 pods Running"
    assert detail[5] == (
        "keybuzz-api: ClusterIP (expected NodePort 30080); keybuzz-front: ClusterIP (expected NodePort 30000)"
    )
    assert detail[6] == "keybuzz-front-ingress: not found; keybuzz-api-ingress: not found"
    assert f"http://platform.keybuzz.io:{port}/: 0/10 answered 200 via 127.0.0.1:{port}" in detail[7]
    assert "10 × error: connection refused" in detail[7]
    assert "cannot check from k8s-worker-01" in detail[8] and NO_WORKERS in detail[8]
    assert card["workers"] == 5

    code, text = validate(keybuzz_cluster, tmp_path, *url_args(tmp_path, port), output="text")
    assert code == 1
    flat = " ".join(text.split())
    assert "Score: 1/8 = 12.5 % (pass at ≥ 80 %) FAIL" in flat
    assert flat.count("FAIL") >= 8

    code, xml = validate(keybuzz_cluster, tmp_path, *url_args(tmp_path, port), output="junit")
    assert code == 1
    suite = ET.fromstring(xml.split("\n", 1)[1]).find("testsuite")
    assert suite is not None and suite.get("tests") == "8" and suite.get("failures") == "7"


def test_an_unreachable_api_fails_the_cluster_checks_not_the_run(
    keybuzz_cluster: KeybuzzCluster, tmp_path: Path, sites: Sites
) -> None:
    dead = tmp_path / "dead.kubeconfig"
    text = keybuzz_cluster.kubeconfig.read_text()
    server = next(line.split("server:", 1)[1].strip() for line in text.splitlines() if "server:" in line)
    dead.write_text(text.replace(server, f"https://127.0.0.1:{closed_port()}"))
    result = CliRunner().invoke(
        app,
        [
            "validate",
            str(servers_tsv(tmp_path / "servers.tsv")),
            "--kubeconfig",
            str(dead),
            "-o",
            "json",
            "--retries",
            "0",
            "--known-hosts",
            str(tmp_path / "no-known-hosts"),
            *url_args(tmp_path, sites.port),
        ],
    )
    assert result.exit_code == 1
    card = json.loads(result.stdout)
    assert [c["status"] for c in card["checks"]] == ["fail"] * 6 + ["pass", "fail"]
    assert all("cannot reach the Kubernetes API at https://127.0.0.1:" in c["detail"] for c in card["checks"][:6])
    assert "BEGIN" not in result.output and "client-key" not in result.output  # no credentials in the evidence


def convert_by_hand(cluster: KeybuzzCluster) -> None:
    """What `convert` does, done here with the kubernetes client: DaemonSets, NodePort Services."""
    apps = client.AppsV1Api(cluster.api_client)
    core = client.CoreV1Api(cluster.api_client)
    autoscaling = client.AutoscalingV2Api(cluster.api_client)
    for name, node_port in (("keybuzz-api", 30080), ("keybuzz-front", 30000)):
        deployment = cluster.api_client.sanitize_for_serialization(apps.read_namespaced_deployment(name, NS))
        template = copy.deepcopy(deployment["spec"]["template"])
        template["spec"]["hostNetwork"] = True
        template["spec"]["dnsPolicy"] = "ClusterFirstWithHostNet"
        autoscaling.delete_namespaced_horizontal_pod_autoscaler(name, NS)
        apps.delete_namespaced_deployment(name, NS, propagation_policy="Foreground")
        apps.create_namespaced_daemon_set(
            NS,
            {
                "apiVersion": "apps/v1",
                "kind": "DaemonSet",
                "metadata": {"name": name, "namespace": NS},
                "spec": {"selector": deployment["spec"]["selector"], "template": template},
            },
        )
        core.patch_namespaced_service(
            name, NS, {"spec": {"type": "NodePort", "ports": [{"port": 80, "nodePort": node_port}]}}
        )
    for name in ("keybuzz-api", "keybuzz-front"):
        wait_pods_running(core, NS, f"app={name}", 5, timeout=60)


def test_converted_state_scores_and_thresholds(keybuzz_cluster: KeybuzzCluster, tmp_path: Path, sites: Sites) -> None:
    convert_by_hand(keybuzz_cluster)
    result = CliRunner().invoke(app, ["ingress", "--kubeconfig", str(keybuzz_cluster.kubeconfig), "--yes"])
    assert result.exit_code == 0, result.output
    urls = url_args(tmp_path, sites.port)

    code, out = validate(keybuzz_cluster, tmp_path, *urls)
    card = json.loads(out)
    assert code == 0, [c for c in card["checks"] if c["status"] == "fail"]
    assert [c["number"] for c in card["checks"] if c["status"] == "fail"] == [8]  # no worker hosts here
    assert (card["passed"], card["score"], card["required"]) == (7, 87.5, 80)
    assert validate(keybuzz_cluster, tmp_path, *urls, "--strict")[0] == 1
    detail = {c["number"]: c["detail"] for c in card["checks"]}
    assert detail[2] == "keybuzz-api: 5/5 Running and Ready; keybuzz-front: 5/5 Running and Ready"
    assert detail[3] == "keybuzz-api: hostNetwork on; keybuzz-front: hostNetwork on"
    assert detail[5] == "keybuzz-api: NodePort 80→30080; keybuzz-front: NodePort 80→30000"
    assert detail[6] == (
        "keybuzz-front-ingress: platform.keybuzz.io → keybuzz-front:80, served; "
        "keybuzz-api-ingress: platform-api.keybuzz.io → keybuzz-api:80, served"
    )
    assert f"http://platform-api.keybuzz.io:{sites.port}/: 10/10 answered 200 via 127.0.0.1:{sites.port}" in detail[7]

    sites.status["platform-api.keybuzz.io"] = 503
    code, out = validate(keybuzz_cluster, tmp_path, *urls)
    card = json.loads(out)
    assert (code, card["passed"], card["score"]) == (1, 6, 75.0)  # < 80 %: fails
    assert "10 × 503 Service Unavailable" in card["checks"][6]["detail"]
    assert validate(keybuzz_cluster, tmp_path, *urls, "--threshold", "80")[0] == 1
    assert validate(keybuzz_cluster, tmp_path, *urls, "--threshold", "75")[0] == 0
