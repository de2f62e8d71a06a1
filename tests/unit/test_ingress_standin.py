"""The lab's ingress stand-in serves what ingress-nginx would (tests/lab/ingress_standin.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.lab import ingress_standin as ing

Obj = dict[str, Any]


def ingress(
    name: str,
    host: str,
    service: str,
    *,
    ns: str = "keybuzz",
    created: str = "2026-01-01T00:00:00Z",
    cls: str | None = "nginx",
    annotations: dict[str, str] | None = None,
    path: str = "/",
) -> Obj:
    spec: Obj = {
        "rules": [
            {
                "host": host,
                "http": {
                    "paths": [
                        {
                            "path": path,
                            "pathType": "Prefix",
                            "backend": {"service": {"name": service, "port": {"number": 80}}},
                        }
                    ]
                },
            }
        ]
    }
    if cls is not None:
        spec["ingressClassName"] = cls
    return {
        "metadata": {"name": name, "namespace": ns, "creationTimestamp": created, "annotations": annotations or {}},
        "spec": spec,
    }


def service(name: str, ns: str = "keybuzz") -> Obj:
    return {
        "metadata": {"name": name, "namespace": ns},
        "spec": {"selector": {"app": name}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]},
    }


def endpoints(name: str, addresses: list[tuple[str, bool]], port: int, ns: str = "keybuzz") -> Obj:
    return {
        "metadata": {"name": f"{name}-abcde", "namespace": ns, "labels": {"kubernetes.io/service-name": name}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
        "endpoints": [{"addresses": [a], "conditions": {"ready": r}} for a, r in addresses],
    }


CLASSES = [
    {"metadata": {"name": "nginx"}, "spec": {"controller": "k8s.io/ingress-nginx"}},
    {"metadata": {"name": "traefik"}, "spec": {"controller": "traefik.io/ingress-controller"}},
]


def test_a_route_goes_to_the_ready_endpoints_with_the_annotations_timeouts() -> None:
    routes = ing.routes(
        [
            ingress(
                "front",
                "platform.keybuzz.io",
                "keybuzz-front",
                annotations={"nginx.ingress.kubernetes.io/proxy-connect-timeout": "180"},
            )
        ],
        [service("keybuzz-front")],
        [endpoints("keybuzz-front", [("198.18.0.12", True), ("198.18.0.11", True), ("198.18.0.13", False)], 3000)],
        CLASSES,
    )
    assert [(r.host, r.path, r.endpoints) for r in routes] == [
        ("platform.keybuzz.io", "/", ("198.18.0.11:3000", "198.18.0.12:3000"))
    ]
    assert routes[0].settings["proxy-connect-timeout"] == "180"
    assert routes[0].settings["proxy-read-timeout"] == "60"  # ingress-nginx's default
    conf = ing.render(routes, main="http {\n", workdir=Path("/w"), cert=Path("/c"), key=Path("/k"))
    assert "server 198.18.0.11:3000 max_fails=0;" in conf and "proxy_connect_timeout 180s;" in conf
    assert "server_name platform.keybuzz.io;" in conf


def test_the_oldest_ingress_wins_a_host_and_path() -> None:
    routes = ing.routes(
        [
            ingress("new", "platform.keybuzz.io", "keybuzz-front", created="2026-02-01T00:00:00Z"),
            ingress("old-front", "platform.keybuzz.io", "legacy", ns="legacy", created="2025-01-01T00:00:00Z"),
        ],
        [service("keybuzz-front"), service("legacy", "legacy")],
        [],
        CLASSES,
    )
    assert [r.ingress for r in routes] == ["legacy/old-front"]


def test_only_the_controllers_class_and_classless_ingresses_are_served() -> None:
    routes = ing.routes(
        [
            ingress("a", "a.example", "s", cls="traefik"),
            ingress("b", "b.example", "s", cls=None),
            ingress("c", "c.example", "s", cls="missing"),
            ingress("d", "d.example", "s", cls="traefik", annotations={"kubernetes.io/ingress.class": "nginx"}),
        ],
        [service("s")],
        [],
        CLASSES,
    )
    assert sorted(r.host for r in routes) == ["b.example", "d.example"]


def test_no_ready_endpoint_answers_503_and_unknown_hosts_404() -> None:
    routes = ing.routes(
        [ingress("front", "platform.keybuzz.io", "keybuzz-front")],
        [service("keybuzz-front")],
        [endpoints("keybuzz-front", [("198.18.0.11", False)], 3000)],
        CLASSES,
    )
    conf = ing.render(routes, main="http {\n", workdir=Path("/w"), cert=Path("/c"), key=Path("/k"))
    assert "location / { return 503; }" in conf
    default = conf.split("default_server;\n", 2)[2]
    assert default.lstrip().startswith("return 404;")
