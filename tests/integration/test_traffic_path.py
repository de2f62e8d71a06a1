"""The lab's data path is the cluster's: kube-proxy translates a NodePort before UFW sees it.

These tests check the harness (tests/lab/datapath.py) against what the real parts do, so the
end-to-end test of the remediation stands on facts: with UFW default deny and the real
kube-proxy, opening the NodePort changes nothing and opening the port it is translated to does;
a request handled on one worker is proxied to app pods on the others, arriving from that worker's
address; the apps' processes follow the pods the API shows.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client

from tests.cluster.fixtures import KeybuzzCluster
from tests.lab.hosts import INGRESS_HOSTS, SUBNET
from tests.lab.outage import OutageLab

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def world(keybuzz_cluster: KeybuzzCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OutageLab]:
    with OutageLab(keybuzz_cluster.control_plane, tmp_path_factory.mktemp("outage")).start() as w:
        yield w


def allow(world: OutageLab, port: int) -> None:
    assert world.lab is not None
    for h in world.lab.hosts:
        h.run(f"ufw allow from {SUBNET} to any port {port} proto tcp")


def test_the_nodeport_rule_alone_does_not_open_the_nodeport(world: OutageLab) -> None:
    assert world.lab is not None
    worker = world.lab.hosts[0]
    assert "--dport 31695" in worker.run("iptables-save -t nat").stdout  # kube-proxy's NodePort rule
    allow(world, 31695)
    assert not world.lab.tcp_reachable(worker.ip, 31695, 1.0)
    assert {a.status for a in world.requests(count=4, scheme="http")} == {504}
    allow(world, 80)  # the port kube-proxy translates 31695 to (the ingress controller's host port)
    assert world.lab.tcp_reachable(worker.ip, 31695, 1.0)
    assert {a.status for a in world.requests(count=4, scheme="http")} == {404}  # ingress-nginx, no route yet


def test_ingress_proxies_to_app_pods_on_every_worker(world: OutageLab, keybuzz_cluster: KeybuzzCluster) -> None:
    assert world.lab is not None and world.data_path is not None
    allow(world, 443)
    apps = client.AppsV1Api(keybuzz_cluster.api_client)
    net = client.NetworkingV1Api(keybuzz_cluster.api_client)
    core = client.CoreV1Api(keybuzz_cluster.api_client)
    ds = {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": "probe-app", "namespace": "keybuzz"},
        "spec": {
            "selector": {"matchLabels": {"app": "probe-app"}},
            "template": {
                "metadata": {"labels": {"app": "probe-app"}},
                "spec": {
                    "hostNetwork": True,
                    "containers": [
                        {
                            "name": "app",
                            "image": "x",
                            "ports": [{"name": "http", "containerPort": 3999, "hostPort": 3999}],
                        }
                    ],
                },
            },
        },
    }
    svc = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "probe-app", "namespace": "keybuzz"},
        "spec": {"selector": {"app": "probe-app"}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]},
    }
    route = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {"name": "probe-app", "namespace": "keybuzz"},
        "spec": {
            "ingressClassName": "nginx",
            "rules": [
                {
                    "host": INGRESS_HOSTS[0],
                    "http": {
                        "paths": [
                            {
                                "path": "/",
                                "pathType": "Prefix",
                                "backend": {"service": {"name": "probe-app", "port": {"number": 80}}},
                            }
                        ]
                    },
                }
            ],
        },
    }
    apps.create_namespaced_daemon_set("keybuzz", ds)
    core.create_namespaced_service("keybuzz", svc)
    net.create_namespaced_ingress("keybuzz", route)
    try:
        _wait_for_listeners(world, 3999, len(world.lab.hosts))
        world.data_path.settle()
        # App port closed: only requests proxied to the ingress's own worker answer.
        closed = world.requests(count=10, timeout=3)
        assert any(a.status is None for a in closed), closed
        allow(world, 3999)
        answers = world.requests(count=10, timeout=3)
        assert {a.status for a in answers} == {200}, answers
        # Requests arrive at the ingress of one worker and are proxied to the app on others.
        lines = [
            line
            for h in world.lab.hosts
            for line in (h.workdir / "ingress" / "access.log").read_text().splitlines()
            if ":3999" in line and " 200 " in line
        ]
        crossed = [line for line in lines if line.split()[0] != line.split('upstream="')[1].split(":")[0]]
        assert crossed, lines
        # The masqueraded NodePort traffic reaches another worker's ingress from a worker's address.
        sources = {line.split()[0] for line in lines}
        assert sources & {h.ip for h in world.lab.hosts}, sources
    finally:
        net.delete_namespaced_ingress("probe-app", "keybuzz")
        core.delete_namespaced_service("probe-app", "keybuzz")
        apps.delete_namespaced_daemon_set("probe-app", "keybuzz")
    _wait_for_listeners(world, 3999, 0)


def _wait_for_listeners(world: OutageLab, port: int, count: int, timeout: float = 30) -> None:
    assert world.lab is not None
    deadline = time.monotonic() + timeout
    while sum(port in h.listeners() for h in world.lab.hosts) != count:
        assert time.monotonic() < deadline, f"the app's process on port {port} did not follow its pods"
        time.sleep(0.1)


def test_the_data_path_follows_the_api(world: OutageLab, tmp_path: Path) -> None:
    assert world.data_path is not None
    world.data_path.settle()  # what runs matches a fresh read, kube-proxy's rules included
