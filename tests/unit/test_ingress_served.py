"""The pure judgement of whether ingress-nginx would serve a route (cluster/ingress.py), member by member.

The control-plane tests (tests/integration/test_ingress_served.py) cover what the API server decides
(timestamps, the default class admission); these cover the controller-side members it cannot make
on demand: a tie of creation timestamps, the controller's flags, canaries, path types.
"""

from __future__ import annotations

from typing import Any

import pytest

from keybuzz_fix.cluster import ingress as ing
from keybuzz_fix.cluster.ingress import ControllerClass, ServingFacts

NGINX = {"metadata": {"name": "nginx"}, "spec": {"controller": "k8s.io/ingress-nginx"}}
SERVICE = {"metadata": {"name": "front", "namespace": "keybuzz"}, "spec": {"ports": [{"name": "http", "port": 80}]}}


def route(
    name: str = "front",
    namespace: str = "keybuzz",
    created: str | None = "2026-01-02T00:00:00Z",
    *,
    class_name: str | None = "nginx",
    annotations: dict[str, str] | None = None,
    path_type: str = "Prefix",
    path: str = "/",
    port: Any = 80,
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "annotations": annotations or {}}
    if created:
        meta["creationTimestamp"] = created
    backend = {"service": {"name": "front", "port": {"number": port} if isinstance(port, int) else {"name": port}}}
    spec: dict[str, Any] = {
        "rules": [{"host": "a.test", "http": {"paths": [{"path": path, "pathType": path_type, "backend": backend}]}}]
    }
    if class_name is not None:
        spec["ingressClassName"] = class_name
    return {"kind": "Ingress", "metadata": meta, "spec": spec}


DEFAULTS = ControllerClass()


def facts(*others: dict, ctl: ControllerClass = DEFAULTS, classes: tuple = (NGINX,)) -> ServingFacts:
    return ServingFacts(tuple(others), classes, {"keybuzz/front": SERVICE}, frozenset(), ctl)


def subjects(mine: dict, f: ServingFacts) -> list[str]:
    return [p.subject for p in ing.serving_problems(mine, f)]


def test_served_when_nothing_competes() -> None:
    assert ing.serving_problems(route(), facts()) == []


def test_a_tie_of_timestamps_goes_to_the_namespace_name_that_sorts_last() -> None:
    mine = route(namespace="keybuzz")
    same_time = "2026-01-02T00:00:00Z"
    assert subjects(mine, facts(route("x", "alpha", same_time))) == []  # keybuzz/front > alpha/x: ours first
    assert subjects(mine, facts(route("x", "zeta", same_time))) == ["Ingress zeta/x"]  # zeta/x sorts last: it wins


def test_a_route_not_created_yet_is_newer_than_everything() -> None:
    assert subjects(route(created=None), facts(route("x", "legacy", "2030-01-01T00:00:00Z"))) == ["Ingress legacy/x"]


def test_watch_ingress_without_class_makes_a_classless_ingress_compete() -> None:
    old = route("x", "legacy", "2020-01-01T00:00:00Z", class_name=None)
    assert subjects(route(), facts(old)) == []
    assert subjects(route(), facts(old, ctl=ControllerClass(without_class=True))) == ["Ingress legacy/x"]


def test_ingress_class_by_name_takes_a_class_of_another_controller_named_as_the_annotation_value() -> None:
    other = {"metadata": {"name": "nginx"}, "spec": {"controller": "example.com/other"}}
    assert subjects(route(), facts(classes=(other,))) == ["IngressClass nginx"]
    assert subjects(route(), facts(classes=(other,), ctl=ControllerClass(by_name=True))) == []


def test_a_custom_ingress_class_flag_changes_which_annotation_is_taken() -> None:
    old = route("x", "legacy", "2020-01-01T00:00:00Z", class_name=None, annotations={ing.CLASS_ANNOTATION: "public"})
    assert subjects(route(), facts(old)) == []
    assert subjects(route(), facts(old, ctl=ControllerClass(annotation="public"))) == ["Ingress legacy/x"]


def test_watch_namespace_leaves_other_namespaces_out() -> None:
    ctl = ControllerClass(namespace="legacy", source="the arguments of DaemonSet ingress-nginx/c")
    problems = ing.serving_problems(route(), facts(ctl=ctl))
    assert [p.describe() for p in problems] == [
        "Ingress keybuzz/front: the controller watches only namespace legacy "
        "(the arguments of DaemonSet ingress-nginx/c)"
    ]


def test_a_canary_holds_nothing() -> None:
    canary = route("x", "legacy", "2020-01-01T00:00:00Z", annotations={ing.CANARY_ANNOTATION: "true"})
    assert subjects(route(), facts(canary)) == []


@pytest.mark.parametrize(
    ("theirs", "competes"),
    [("Prefix", True), ("ImplementationSpecific", True), ("Exact", False)],  # ImplementationSpecific is Prefix
)
def test_path_types(theirs: str, competes: bool) -> None:
    old = route("x", "legacy", "2020-01-01T00:00:00Z", path_type=theirs)
    assert bool(subjects(route(), facts(old))) is competes


def test_a_named_service_port() -> None:
    assert subjects(route(port="http"), facts()) == []
    assert [p.detail for p in ing.serving_problems(route(port="https"), facts())] == [
        "has no port 'https' (ports: http:80): ingress-nginx answers 503 for this route"
    ]


def test_controller_class_is_read_from_the_controller_arguments() -> None:
    ds = {
        "kind": "DaemonSet",
        "metadata": {"name": "c", "namespace": "ingress-nginx"},
        "spec": {
            "template": {
                "spec": {
                    "containers": [
                        {"name": "sidecar", "args": ["--ingress-class=wrong"]},
                        {
                            "name": "controller",
                            "args": [
                                "/nginx-ingress-controller",
                                "--controller-class=example.com/mine",
                                "--ingress-class=public",
                                "--watch-ingress-without-class=true",
                                "--ingress-class-by-name",
                            ],
                        },
                    ]
                }
            }
        },
    }
    assert ing.controller_class(ds) == ControllerClass(
        "example.com/mine", "public", True, True, "", "the arguments of DaemonSet ingress-nginx/c"
    )
    assert ing.controller_class(None) == ControllerClass()
