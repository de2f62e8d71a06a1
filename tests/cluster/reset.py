"""Bring a test control plane back to an empty cluster between test modules, in about a second.

Deleting a namespace takes at least 5 s: kube-controller-manager waits that long before it starts
(``namespaceDeletionGracePeriod``, for HA apiservers). Here, with a single apiserver, we do its
work ourselves: mark each namespace Terminating (admission then refuses new objects in it),
delete every namespaced collection that discovery lists, check nothing is left, and finalize.
Namespaces the seed recreates are emptied but kept. The nodes named in keep_nodes stay too:
seed_keybuzz resets their labels and taints, which is faster than new nodes becoming Ready.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.cluster.seed import wait_for

SYSTEM_NAMESPACES = frozenset({"default", "kube-system", "kube-public", "kube-node-lease"})
# Objects controllers recreate at once (deleting them only slows the next pods down), by resource.
_KEEP = {
    "serviceaccounts": "default",
    "configmaps": "kube-root-ca.crt",
}
_KEEP_IN_DEFAULT = {"services": "kubernetes", "endpoints": "kubernetes", "endpointslices": "kubernetes"}
# Controllers first, so nothing recreates the pods deleted after them.
_FIRST = (
    "deployments",
    "daemonsets",
    "statefulsets",
    "cronjobs",
    "jobs",
    "replicasets",
    "replicationcontrollers",
    "horizontalpodautoscalers",
)
EMPTY_TIMEOUT = 20.0


def _request(api_client: client.ApiClient, method: str, path: str, query: Iterable[tuple[str, str]] = ()) -> Any:
    params = api_client.param_serialize(
        method=method,
        resource_path=path,
        query_params=list(query),
        header_params={"Accept": "application/json"},
        auth_settings=["BearerToken"],
    )
    response = api_client.call_api(*params)
    body = response.read()
    if not 200 <= response.status <= 299:
        raise ApiException.from_response(http_resp=response, body=None, data=None)
    return json.loads(body) if body else None


def namespaced_collections(api_client: client.ApiClient) -> list[tuple[str, str]]:
    """Return (resource, path prefix) for every namespaced resource that supports deletecollection."""
    versions = [f"/api/{v}" for v in _request(api_client, "GET", "/api")["versions"]]
    for group in _request(api_client, "GET", "/apis")["groups"]:
        versions.append(f"/apis/{group['preferredVersion']['groupVersion']}")
    found = []
    for prefix in versions:
        for res in _request(api_client, "GET", prefix)["resources"]:
            if res["namespaced"] and "/" not in res["name"] and "deletecollection" in res["verbs"]:
                found.append((res["name"], prefix))
    order = {name: i for i, name in enumerate(_FIRST)}
    found.sort(key=lambda r: (order.get(r[0], len(_FIRST)), r[0] == "pods"))
    return found


def _selector(resource: str, namespace: str) -> str:
    keep = _KEEP.get(resource) or (_KEEP_IN_DEFAULT.get(resource) if namespace == "default" else None)
    return f"metadata.name!={keep}" if keep else ""


def empty_namespace(api_client: client.ApiClient, namespace: str, collections: list[tuple[str, str]]) -> None:
    """Delete every object in a namespace (but the ones controllers recreate) until it stays empty.

    A controller acting on a stale cache (after an apiserver restart, say) may recreate what was
    just deleted, so this deletes again, with a growing pause, for at most EMPTY_TIMEOUT seconds.
    """
    deadline = time.monotonic() + EMPTY_TIMEOUT
    pause = 0.05
    while True:
        for resource, prefix in collections:
            query = [("gracePeriodSeconds", "0"), ("propagationPolicy", "Background")]
            if selector := _selector(resource, namespace):
                query.append(("fieldSelector", selector))
            _request(api_client, "DELETE", f"{prefix}/namespaces/{namespace}/{resource}", query)
        left = []
        for resource, prefix in collections:
            if resource == "events":
                continue  # events about the deleted objects may trail in; they own nothing
            query = [("fieldSelector", s)] if (s := _selector(resource, namespace)) else []
            items = _request(api_client, "GET", f"{prefix}/namespaces/{namespace}/{resource}", query)["items"]
            left += [f"{resource}/{i['metadata']['name']}" for i in items]
        if not left:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"namespace {namespace} still holds {', '.join(left)} after {EMPTY_TIMEOUT:.0f}s")
        time.sleep(pause)
        pause = min(2 * pause, 1.0)


def reset_cluster(
    api_client: client.ApiClient,
    keep_namespaces: Iterable[str] = (),
    keep_nodes: Iterable[str] = (),
    timeout: float = 30.0,
) -> None:
    """Remove every object tests or seeds made; keep_namespaces are emptied instead of deleted."""
    core = client.CoreV1Api(api_client)
    rbac = client.RbacAuthorizationV1Api(api_client)
    net = client.NetworkingV1Api(api_client)
    keep = set(keep_namespaces)
    namespaces = [ns.metadata.name for ns in core.list_namespace().items]
    doomed = [n for n in namespaces if n not in SYSTEM_NAMESPACES and n not in keep]
    for name in doomed:
        try:
            core.delete_namespace(name)
        except ApiException as e:
            if e.status not in (404, 409):  # 409: already terminating
                raise
    collections = namespaced_collections(api_client)
    for name in [*doomed, *(n for n in namespaces if n in keep), "default"]:
        empty_namespace(api_client, name, collections)
    for name in doomed:
        _finalize(core, name)
    for ic in net.list_ingress_class().items:
        _ignore_404(net.delete_ingress_class, ic.metadata.name)
    for role in rbac.list_cluster_role().items:
        if _user_made(role.metadata):
            _ignore_404(rbac.delete_cluster_role, role.metadata.name)
    for binding in rbac.list_cluster_role_binding().items:
        if _user_made(binding.metadata):
            _ignore_404(rbac.delete_cluster_role_binding, binding.metadata.name)
    kept_nodes = set(keep_nodes)
    for node in core.list_node().items:
        if node.metadata.name not in kept_nodes:
            _ignore_404(core.delete_node, node.metadata.name)
    wait_for(core.list_namespace, lambda seen: not set(doomed) & set(seen), timeout, f"{doomed} deleted")


def _finalize(core: client.CoreV1Api, name: str) -> None:
    """Drop the kubernetes finalizer of an emptied, terminating namespace: it goes away at once."""
    try:
        ns = core.read_namespace(name)
    except ApiException as e:
        if e.status == 404:
            return
        raise
    ns.spec.finalizers = []
    _ignore_404(core.replace_namespace_finalize, name, ns)


def _user_made(meta: client.V1ObjectMeta) -> bool:
    bootstrap = (meta.labels or {}).get("kubernetes.io/bootstrapping") == "rbac-defaults"
    return not bootstrap and not meta.name.startswith("system:")


def _ignore_404(fn: Any, *args: Any, **kwargs: Any) -> None:
    try:
        fn(*args, **kwargs)
    except ApiException as e:
        if e.status != 404:
            raise
