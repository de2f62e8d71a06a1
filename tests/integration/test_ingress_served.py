"""Would ingress-nginx serve the routes? `ingress` (plan) and `validate` check 6 on the real control plane.

Each member of the kind is made with the real API server (its DefaultIngressClass admission, its
creation timestamps, server-side apply by another manager) and judged the way ingress-nginx decides
(internal/ingress/controller/store/store.go: GetIngressClass, sortIngressSlice): an older Ingress of
the controller's class holding the same host and path in another namespace, class mismatches of
every form, a missing Service or port, a missing TLS Secret. The plan names each problem and the
object behind it and exits non-zero; check 6 fails with the same evidence, and passes once the
route would be served.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from typer.testing import CliRunner

from keybuzz_fix.cli import app
from tests.cluster.fixtures import KeybuzzCluster
from tests.integration.test_ingress_command import servers_tsv

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("state_dir")]
NS = "keybuzz"
OTHERS = ("legacy", "team-b")
FRONT, API = "keybuzz/keybuzz-front-ingress", "keybuzz/keybuzz-api-ingress"


@pytest.fixture
def net(keybuzz_cluster: KeybuzzCluster, no_routes: client.NetworkingV1Api) -> Iterator[client.NetworkingV1Api]:
    """The networking API; the other namespaces exist; every Ingress and IngressClass made here is removed after."""
    core = client.CoreV1Api(keybuzz_cluster.api_client)
    for ns in OTHERS:
        try:
            core.create_namespace({"metadata": {"name": ns}})
        except ApiException as e:
            if e.status != 409:
                raise
    yield no_routes
    for ns in OTHERS:
        for ing in no_routes.list_namespaced_ingress(ns).items:
            no_routes.delete_namespaced_ingress(ing.metadata.name, ns)
    for ic in no_routes.list_ingress_class().items:
        if ic.metadata.name != "nginx":
            no_routes.delete_ingress_class(ic.metadata.name)
    no_routes.patch_ingress_class(
        "nginx", {"metadata": {"annotations": {"ingressclass.kubernetes.io/is-default-class": None}}}
    )
    for secret in core.list_namespaced_secret(NS).items:
        if secret.metadata.name.startswith("test-tls"):
            core.delete_namespaced_secret(secret.metadata.name, NS)


@pytest.fixture
def strict_controller(keybuzz_cluster: KeybuzzCluster) -> Iterator[None]:
    """The seeded controller without --watch-ingress-without-class (ingress-nginx's default); put back after."""
    apps = client.AppsV1Api(keybuzz_cluster.api_client)
    ds = apps.read_namespaced_daemon_set("ingress-nginx-controller", "ingress-nginx")
    args = list(ds.spec.template.spec.containers[0].args)
    assert "--watch-ingress-without-class=true" in args  # as seeded, like the KeyBuzz cluster

    def set_args(new: list[str]) -> None:
        """Change the controller's args and wait for the rollout: a worker between two pods has no controller."""
        patch = [{"op": "replace", "path": "/spec/template/spec/containers/0/args", "value": new}]
        changed = apps.patch_namespaced_daemon_set("ingress-nginx-controller", "ingress-nginx", patch)
        end = time.monotonic() + 60
        while time.monotonic() < end:
            ds = apps.read_namespaced_daemon_set("ingress-nginx-controller", "ingress-nginx")
            st = ds.status
            if (
                (st.observed_generation or 0) >= changed.metadata.generation
                and st.updated_number_scheduled == st.desired_number_scheduled
                and st.number_available == st.desired_number_scheduled
            ):
                return
            time.sleep(0.2)
        raise AssertionError(f"the ingress-nginx DaemonSet did not roll out within 60 s: {ds.status}")

    set_args([a for a in args if not a.startswith("--watch-ingress-without-class")])
    try:
        yield
    finally:
        set_args(args)


def ingress(
    name: str,
    namespace: str,
    host: str = "platform.keybuzz.io",
    *,
    class_name: str | None = "nginx",
    annotation: str | None = None,
    path: str = "/",
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": namespace}
    if annotation is not None:
        meta["annotations"] = {"kubernetes.io/ingress.class": annotation}
    spec: dict[str, Any] = {
        "rules": [
            {
                "host": host,
                "http": {
                    "paths": [
                        {
                            "path": path,
                            "pathType": "Prefix",
                            "backend": {"service": {"name": "old-front", "port": {"number": 80}}},
                        }
                    ]
                },
            }
        ]
    }
    if class_name is not None:
        spec["ingressClassName"] = class_name
    return {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": meta, "spec": spec}


def default_class_seen(net: client.NetworkingV1Api, within: float = 15.0) -> None:
    """Wait until the DefaultIngressClass admission sees a just-marked default (it reads IngressClasses from a cache).

    Asked with server-side dry runs, so nothing is created; bounded by ``within`` seconds.
    """
    probe = ingress("default-class-probe", "legacy", class_name=None)
    end = time.monotonic() + within
    while time.monotonic() < end:
        answer = net.create_namespaced_ingress("legacy", probe, dry_run="All")
        if answer.spec.ingress_class_name is not None:
            return
        time.sleep(0.2)
    raise AssertionError(f"the API server's admission did not give the default IngressClass within {within:g}s")


def older(net: client.NetworkingV1Api, obj: dict[str, Any]) -> client.V1Ingress:
    """Create ``obj`` and wait a second, so that whatever is created next is strictly newer (timestamps are in s).

    The API server refuses to create an Ingress whose class annotation differs from its
    ingressClassName; an update may add one (older objects, hand edits): such an annotation is added
    after the create, as it happens on real clusters.
    """
    ns, name = obj["metadata"]["namespace"], obj["metadata"]["name"]
    annotations = obj["metadata"].get("annotations") or {}
    field_name = obj["spec"].get("ingressClassName")
    later = field_name is not None and annotations.get("kubernetes.io/ingress.class", field_name) != field_name
    if later:
        obj = {**obj, "metadata": {"name": name, "namespace": ns}}
    made = net.create_namespaced_ingress(ns, obj)
    if later:
        made = net.patch_namespaced_ingress(name, ns, {"metadata": {"annotations": annotations}})
    time.sleep(1.1)
    return made


def plan(cluster: KeybuzzCluster, *args: str) -> tuple[int, dict[str, dict]]:
    result = CliRunner().invoke(app, ["ingress", "--kubeconfig", str(cluster.kubeconfig), "-o", "json", *args])
    try:
        out = json.loads(result.stdout)
    except ValueError:
        pytest.fail(f"no JSON (exit {result.exit_code}): {result.output}")
    return result.exit_code, {r["name"]: r for r in out["routes"]}


def problems(route: dict) -> list[str]:
    return [f"{p['subject']}: {p['detail']}" for p in route["serving_problems"]]


def check6(cluster: KeybuzzCluster, tmp_path: Path, *config: str) -> dict:
    cfg = tmp_path / "validate.yaml"
    cfg.write_text("validate:\n  urls: [http://127.0.0.1:1/]\n" + "".join(config))  # the URL check is not under test
    result = CliRunner().invoke(
        app,
        [
            "validate",
            str(servers_tsv(tmp_path / "servers.tsv")),
            "--kubeconfig",
            str(cluster.kubeconfig),
            "--config",
            str(cfg),
            "-o",
            "json",
            "--retries",
            "0",
            "--known-hosts",
            str(tmp_path / "no-known-hosts"),
        ],
    )
    try:
        card = json.loads(result.stdout)
    except ValueError:
        pytest.fail(f"no JSON (exit {result.exit_code}): {result.output}")
    c6 = card["checks"][5]
    assert c6["name"].startswith("Ingresses keybuzz-front-ingress and keybuzz-api-ingress")
    return c6


def apply_routes(cluster: KeybuzzCluster, *args: str) -> int:
    result = CliRunner().invoke(app, ["ingress", "--kubeconfig", str(cluster.kubeconfig), "--yes", "-o", "json", *args])
    print(f"ingress --yes: exit {result.exit_code}\n{result.output}")  # shown with a failing assertion
    return result.exit_code


# -- row 1: an older Ingress in another namespace holds the host and path --------------------------


def test_an_older_ingress_elsewhere_is_named_and_the_route_is_not_served(
    keybuzz_cluster: KeybuzzCluster, net: client.NetworkingV1Api, tmp_path: Path
) -> None:
    old = older(net, ingress("old-front", "legacy"))
    stamp = old.metadata.creation_timestamp.strftime("%Y-%m-%dT%H:%M:%SZ")

    code, routes = plan(keybuzz_cluster, "--dry-run")
    assert code == 1
    assert routes[FRONT]["status"] == "create" and routes[FRONT]["served"] is False
    assert problems(routes[FRONT]) == [
        f"Ingress legacy/old-front: already serves platform.keybuzz.io / (Prefix), created {stamp}, before "
        f"{FRONT}: ingress-nginx keeps the oldest, so {FRONT}'s route for platform.keybuzz.io / will not be used"
    ]
    assert routes[API]["served"] is True and routes[API]["serving_problems"] == []
    assert net.list_namespaced_ingress(NS).items == []  # a dry run

    assert apply_routes(keybuzz_cluster) == 1  # applied, and still not served: not a success
    assert {i.metadata.name for i in net.list_namespaced_ingress(NS).items} == {
        "keybuzz-front-ingress",
        "keybuzz-api-ingress",
    }
    c6 = check6(keybuzz_cluster, tmp_path)
    assert c6["status"] == "fail"
    assert c6["detail"].startswith(
        "keybuzz-front-ingress: platform.keybuzz.io → keybuzz-front:80 not served: Ingress legacy/old-front: "
        f"already serves platform.keybuzz.io / (Prefix), created {stamp}, before {FRONT}"
    )
    assert c6["detail"].endswith("keybuzz-api-ingress: platform-api.keybuzz.io → keybuzz-api:80, served")

    net.delete_namespaced_ingress("old-front", "legacy")
    assert check6(keybuzz_cluster, tmp_path)["status"] == "pass"
    code, routes = plan(keybuzz_cluster, "--dry-run")
    assert code == 0 and all(r["served"] for r in routes.values())


def test_a_newer_ingress_elsewhere_loses_to_the_route(
    keybuzz_cluster: KeybuzzCluster, net: client.NetworkingV1Api, tmp_path: Path
) -> None:
    assert apply_routes(keybuzz_cluster) == 0
    time.sleep(1.1)
    net.create_namespaced_ingress("team-b", ingress("new-front", "team-b"))
    c6 = check6(keybuzz_cluster, tmp_path)
    assert c6["status"] == "pass", c6["detail"]
    code, routes = plan(keybuzz_cluster, "--dry-run")
    assert code == 0 and routes[FRONT]["status"] == "unchanged" and routes[FRONT]["served"] is True


def test_another_path_or_host_is_no_conflict(keybuzz_cluster: KeybuzzCluster, net: client.NetworkingV1Api) -> None:
    older(net, ingress("old-docs", "legacy", path="/docs"))
    older(net, ingress("old-www", "legacy", host="www.keybuzz.io"))
    code, routes = plan(keybuzz_cluster, "--dry-run")
    assert code == 0 and routes[FRONT]["served"] is True


# -- the class of the older Ingress, in every form ---------------------------------------------------


@pytest.mark.parametrize(
    ("class_name", "annotation", "competes"),
    [
        ("nginx", None, True),  # the field
        (None, "nginx", True),  # the legacy annotation alone
        (None, "traefik", False),  # the annotation of another controller
        ("nginx", "traefik", True),  # both: the field comes first, the annotation is ignored
        ("other", "nginx", False),  # both: a class of another controller; the annotation does not rescue it
        ("missing", None, False),  # a class with no IngressClass
        (None, None, True),  # no class: the seeded controller runs with --watch-ingress-without-class=true
    ],
)
def test_an_older_ingress_competes_only_when_ingress_nginx_takes_its_class(
    keybuzz_cluster: KeybuzzCluster,
    net: client.NetworkingV1Api,
    tmp_path: Path,
    class_name: str | None,
    annotation: str | None,
    competes: bool,
) -> None:
    net.create_ingress_class({"metadata": {"name": "other"}, "spec": {"controller": "example.com/other"}})
    old = older(net, ingress("old-front", "legacy", class_name=class_name, annotation=annotation))
    assert old.spec.ingress_class_name == class_name  # no default class: the API server left it as written
    code, routes = plan(keybuzz_cluster, "--dry-run")
    assert (code, routes[FRONT]["served"]) == ((1, False) if competes else (0, True)), routes[FRONT]
    if competes:
        assert problems(routes[FRONT])[0].startswith("Ingress legacy/old-front: already serves platform.keybuzz.io /")
    assert apply_routes(keybuzz_cluster) == (1 if competes else 0)
    c6 = check6(keybuzz_cluster, tmp_path)
    assert c6["status"] == ("fail" if competes else "pass"), c6["detail"]
    assert ("Ingress legacy/old-front" in c6["detail"]) is competes


def test_without_watch_ingress_without_class_a_classless_ingress_holds_nothing(
    keybuzz_cluster: KeybuzzCluster, net: client.NetworkingV1Api, strict_controller: None, tmp_path: Path
) -> None:
    older(net, ingress("old-front", "legacy", class_name=None))
    code, routes = plan(keybuzz_cluster, "--dry-run")
    assert code == 0 and routes[FRONT]["served"] is True
    assert apply_routes(keybuzz_cluster) == 0
    assert check6(keybuzz_cluster, tmp_path)["status"] == "pass"


def test_with_a_default_class_an_ingress_without_class_gets_it_and_competes(
    keybuzz_cluster: KeybuzzCluster, net: client.NetworkingV1Api, strict_controller: None, tmp_path: Path
) -> None:
    net.patch_ingress_class(
        "nginx", {"metadata": {"annotations": {"ingressclass.kubernetes.io/is-default-class": "true"}}}
    )
    default_class_seen(net)
    old = older(net, ingress("old-front", "legacy", class_name=None))
    assert old.spec.ingress_class_name == "nginx"  # the API server's DefaultIngressClass admission
    code, routes = plan(keybuzz_cluster, "--dry-run")
    assert code == 1 and problems(routes[FRONT])[0].startswith("Ingress legacy/old-front: already serves")
    assert apply_routes(keybuzz_cluster) == 1
    assert check6(keybuzz_cluster, tmp_path)["status"] == "fail"


def test_the_default_class_is_not_given_to_an_ingress_made_before_it(
    keybuzz_cluster: KeybuzzCluster, net: client.NetworkingV1Api, strict_controller: None
) -> None:
    old = older(net, ingress("old-front", "legacy", class_name=None))
    net.patch_ingress_class(
        "nginx", {"metadata": {"annotations": {"ingressclass.kubernetes.io/is-default-class": "true"}}}
    )
    assert net.read_namespaced_ingress("old-front", "legacy").spec.ingress_class_name is None
    assert old.spec.ingress_class_name is None
    code, routes = plan(keybuzz_cluster, "--dry-run")
    assert code == 0 and routes[FRONT]["served"] is True


# -- the route's own class ---------------------------------------------------------------------------


def test_the_routes_class_unknown_or_of_another_controller(
    keybuzz_cluster: KeybuzzCluster, net: client.NetworkingV1Api, tmp_path: Path
) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("ingress:\n  class_name: nginx-internal\n")
    code, routes = plan(keybuzz_cluster, "--dry-run", "--config", str(cfg))
    assert code == 1
    assert problems(routes[FRONT]) == [
        f"IngressClass nginx-internal: ingress-nginx (k8s.io/ingress-nginx) ignores {FRONT}: spec.ingressClassName "
        "'nginx-internal': no IngressClass of that name"
    ]
    net.create_ingress_class({"metadata": {"name": "nginx-internal"}, "spec": {"controller": "example.com/other"}})
    code, routes = plan(keybuzz_cluster, "--dry-run", "--config", str(cfg))
    assert code == 1
    assert problems(routes[API]) == [
        f"IngressClass nginx-internal: ingress-nginx (k8s.io/ingress-nginx) ignores {API}: spec.ingressClassName "
        "'nginx-internal': IngressClass nginx-internal belongs to controller example.com/other, "
        "not k8s.io/ingress-nginx"
    ]
    assert apply_routes(keybuzz_cluster, "--config", str(cfg)) == 1
    c6 = check6(keybuzz_cluster, tmp_path, "ingress:\n  class_name: nginx-internal\n")
    assert (
        c6["status"] == "fail"
        and "IngressClass nginx-internal: ingress-nginx (k8s.io/ingress-nginx) ignores" in c6["detail"]
    )


def test_a_route_annotated_for_another_controller_keeps_its_field(
    keybuzz_cluster: KeybuzzCluster, net: client.NetworkingV1Api, tmp_path: Path
) -> None:
    assert apply_routes(keybuzz_cluster) == 0
    net.patch_namespaced_ingress(
        "keybuzz-front-ingress",
        NS,
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "Ingress",
            "metadata": {
                "name": "keybuzz-front-ingress",
                "namespace": NS,
                "annotations": {"kubernetes.io/ingress.class": "traefik"},
            },
        },
        field_manager="someone",
        _content_type="application/apply-patch+yaml",
    )
    assert check6(keybuzz_cluster, tmp_path)["status"] == "pass"  # the field comes first


# -- the backend and TLS -------------------------------------------------------------------------------


ROUTES_WITH = (
    "ingress:\n  routes:\n"
    "    - {{name: keybuzz-front-ingress, host: platform.keybuzz.io, service: {front}, port: {port}}}\n"
    "    - {{name: keybuzz-api-ingress, host: platform-api.keybuzz.io, service: keybuzz-api, port: 80}}\n"
)


def test_a_missing_service_or_port(
    keybuzz_cluster: KeybuzzCluster, net: client.NetworkingV1Api, tmp_path: Path
) -> None:
    missing = tmp_path / "missing.yaml"
    missing.write_text(ROUTES_WITH.format(front="keybuzz-frontend", port=80))
    code, routes = plan(keybuzz_cluster, "--dry-run", "--config", str(missing))
    assert code == 1
    assert problems(routes[FRONT]) == [
        "Service keybuzz/keybuzz-frontend: not found: ingress-nginx answers 503 for this route"
    ]
    assert routes[API]["served"] is True

    port = tmp_path / "port.yaml"
    port.write_text(ROUTES_WITH.format(front="keybuzz-front", port=8080))
    code, routes = plan(keybuzz_cluster, "--dry-run", "--config", str(port))
    assert code == 1
    assert problems(routes[FRONT]) == [
        "Service keybuzz/keybuzz-front: has no port 8080 (ports: http:80): ingress-nginx answers 503 for this route"
    ]
    assert apply_routes(keybuzz_cluster, "--config", str(port)) == 1
    c6 = check6(keybuzz_cluster, tmp_path, ROUTES_WITH.format(front="keybuzz-front", port=8080))
    assert c6["status"] == "fail" and "Service keybuzz/keybuzz-front: has no port 8080" in c6["detail"]


def test_a_missing_tls_secret(keybuzz_cluster: KeybuzzCluster, net: client.NetworkingV1Api, tmp_path: Path) -> None:
    assert apply_routes(keybuzz_cluster) == 0
    net.patch_namespaced_ingress(
        "keybuzz-front-ingress",
        NS,
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "Ingress",
            "metadata": {"name": "keybuzz-front-ingress", "namespace": NS},
            "spec": {"tls": [{"hosts": ["platform.keybuzz.io"], "secretName": "test-tls-front"}]},
        },
        field_manager="cert-manager",
        _content_type="application/apply-patch+yaml",
    )
    code, routes = plan(keybuzz_cluster, "--dry-run")
    assert code == 1 and routes[FRONT]["status"] == "unchanged"
    assert problems(routes[FRONT]) == [
        "Secret keybuzz/test-tls-front: not found: ingress-nginx serves its default (self-signed) certificate "
        "for platform.keybuzz.io"
    ]
    c6 = check6(keybuzz_cluster, tmp_path)
    assert c6["status"] == "fail" and "Secret keybuzz/test-tls-front: not found" in c6["detail"]

    client.CoreV1Api(keybuzz_cluster.api_client).create_namespaced_secret(
        NS,
        {"metadata": {"name": "test-tls-front"}, "type": "Opaque", "data": {"tls.crt": "", "tls.key": ""}},
    )
    assert check6(keybuzz_cluster, tmp_path)["status"] == "pass"
    code, routes = plan(keybuzz_cluster, "--dry-run")
    assert code == 0 and routes[FRONT]["served"] is True
