"""Which ports the ingress traffic arrives on, read from the cluster's objects (keybuzz_fix.traffic)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from keybuzz_fix import config
from keybuzz_fix.cluster import traffic
from keybuzz_fix.cluster.objects import Obj

SEED = Path(__file__).resolve().parents[1] / "data" / "cluster"


def seed(kind: str, name: str) -> Obj:
    for f in ("ingress-nginx.yaml", "keybuzz.yaml"):
        for doc in yaml.safe_load_all((SEED / f).read_text()):
            if doc and doc["kind"] == kind and doc["metadata"]["name"] == name:
                return copy.deepcopy(doc)
    raise KeyError((kind, name))


def converted(name: str, port: int) -> Obj:
    """A DaemonSet as convert makes it: hostNetwork, the app's container port moved to its host port."""
    deployment = seed("Deployment", name)
    spec = deployment["spec"]["template"]["spec"]
    spec["hostNetwork"] = True
    spec["containers"][0]["ports"] = [{"name": "http", "containerPort": port, "hostPort": port, "protocol": "TCP"}]
    return {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": name, "namespace": "keybuzz"},
        "spec": {"template": deployment["spec"]["template"]},
    }


def facts(**over: Any) -> traffic.ClusterFacts:
    base: dict[str, Any] = dict(
        ingress_service=seed("Service", "ingress-nginx-controller"),
        ingress_daemonset=seed("DaemonSet", "ingress-nginx-controller"),
        ingress_deployment=None,
        app_daemonsets={},
        app_services={},
    )
    base.update(over)
    return traffic.ClusterFacts(**base)


def ports(found: traffic.TrafficPorts) -> list[tuple[int, str]]:
    return [(p.port, p.proto) for p in found.ports]


CFG = config.load_config()


def test_the_seeded_cluster_needs_six_ports_from_the_private_network() -> None:
    found = traffic.from_cluster(CFG, facts())
    assert ports(found) == [(31695, "tcp"), (32720, "tcp"), (80, "tcp"), (443, "tcp"), (8080, "tcp"), (3000, "tcp")]
    assert found.from_cluster and found.notes == ()
    by_port = {p.port: p for p in found.ports}
    assert "before UFW sees the packet" in by_port[80].purpose and "NodePort 31695" in by_port[80].purpose
    assert "NodePort 32720" in by_port[443].purpose
    assert "proxies to the app on every worker" in by_port[8080].purpose
    assert by_port[80].source == "DaemonSet ingress-nginx/ingress-nginx-controller"
    assert by_port[8080].source == "config apps[].host_port of keybuzz-api"
    assert all(len(p.comment) < 60 and p.comment.startswith("keybuzz-fix: ") for p in found.ports)


def test_converted_apps_give_their_daemonsets_host_ports() -> None:
    names = ("keybuzz-api", "keybuzz-front")
    found = traffic.from_cluster(
        CFG,
        facts(
            app_daemonsets={n: converted(n, port) for n, port in zip(names, (8181, 3000), strict=True)},
            app_services={n: seed("Service", n) for n in names},
        ),
    )
    by_port = {p.port: p for p in found.ports}
    assert 8181 in by_port and 8080 not in by_port
    assert by_port[8181].source == "DaemonSet keybuzz/keybuzz-api"


def test_the_host_ports_convert_will_give_come_from_its_plan() -> None:
    """`all` plans the firewall before convert runs: the DaemonSets as convert will make them count."""
    planned = [converted("keybuzz-api", 3001), seed("Service", "keybuzz-api")]
    found = traffic.from_cluster(
        CFG,
        traffic.facts_from_objects(
            CFG,
            ingress_service=seed("Service", "ingress-nginx-controller"),
            ingress_daemonset=seed("DaemonSet", "ingress-nginx-controller"),
            ingress_deployment=None,
            daemonsets=[],
            services=[seed("Service", "keybuzz-api")],
            planned=planned,
        ),
    )
    by_port = {p.port: p for p in found.ports}
    assert by_port[3001].source == "DaemonSet keybuzz/keybuzz-api as convert will make it"
    assert by_port[3000].source == "config apps[].host_port of keybuzz-front"


def test_the_nodeports_lead_to_the_ports_their_target_names() -> None:
    ds = seed("DaemonSet", "ingress-nginx-controller")
    ds["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = 8000  # http → 8000
    ds["spec"]["template"]["spec"]["containers"][0]["ports"][0]["hostPort"] = 8000
    found = traffic.from_cluster(CFG, facts(ingress_daemonset=ds))
    assert (8000, "tcp") in ports(found) and (80, "tcp") not in ports(found)


def test_an_ingress_controller_without_host_network_needs_no_host_port() -> None:
    ds = seed("DaemonSet", "ingress-nginx-controller")
    del ds["spec"]["template"]["spec"]["hostNetwork"]
    found = traffic.from_cluster(CFG, facts(ingress_daemonset=ds))
    assert ports(found) == [(31695, "tcp"), (32720, "tcp"), (8080, "tcp"), (3000, "tcp")]
    assert any("does not use hostNetwork" in n for n in found.notes)


def test_the_nodeports_are_read_from_the_service() -> None:
    svc = seed("Service", "ingress-nginx-controller")
    svc["spec"]["ports"][0]["nodePort"] = 30080 + 1
    found = traffic.from_cluster(CFG, facts(ingress_service=svc))
    assert ports(found)[0] == (30081, "tcp")


@pytest.mark.parametrize("service", [None, {"spec": {"type": "ClusterIP", "ports": [{"port": 80}]}}])
def test_without_the_service_the_configured_nodeports_are_used_and_said(service: Obj | None) -> None:
    found = traffic.from_cluster(CFG, facts(ingress_service=service))
    assert ports(found)[:4] == [(31695, "tcp"), (32720, "tcp"), (80, "tcp"), (443, "tcp")]
    assert any("from the configuration" in n for n in found.notes)


def test_without_cluster_access_the_configured_ports_are_used_and_the_plan_says_why() -> None:
    found = traffic.from_config(CFG, "no kubeconfig found")
    assert not found.from_cluster
    assert found.notes == ("no kubeconfig found: the ports come from the configuration (firewall.ports)",)
    assert [(p.port, p.source) for p in found.ports] == [
        (31695, "config firewall.ports[0]"),
        (32720, "config firewall.ports[1]"),
        (80, "config firewall.ports[2]"),
        (443, "config firewall.ports[3]"),
        (8080, "config firewall.ports[4]"),
        (3000, "config firewall.ports[5]"),
    ]
    assert "before UFW sees the packet" in found.ports[2].purpose
