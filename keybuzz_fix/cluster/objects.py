"""Pure helpers over Kubernetes objects held as plain dicts: read, compare, mask, diff, print.

Shared by ``convert``, ``rollback`` and the backups, so that "the same object", "server-owned
field" and "masked value" mean one thing everywhere.
"""

from __future__ import annotations

import copy
import difflib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from keybuzz_fix.errors import InputError

Obj = dict[str, Any]
MASK = "<masked>"
MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGER = "keybuzz-fix"
LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"
# Metadata the API server writes; an object restored or re-applied must not carry it.
SERVER_METADATA = (
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "managedFields",
    "selfLink",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
)
SERVER_ANNOTATIONS = ("deployment.kubernetes.io/revision", "deprecated.daemonset.template.generation")
_POD_CONTAINER_LISTS = ("initContainers", "containers", "ephemeralContainers")


def meta_of(obj: Obj) -> Obj:
    """Return an object's metadata (empty when absent)."""
    return part_of(obj, "metadata")


def spec_of(obj: Obj) -> Obj:
    """Return an object's spec (empty when absent)."""
    return part_of(obj, "spec")


def status_of(obj: Obj) -> Obj:
    """Return an object's status (empty when absent)."""
    return part_of(obj, "status")


def part_of(obj: Mapping[str, Any], key: str) -> Obj:
    """Return the mapping at ``key`` (empty when absent, or not a mapping: a hand-edited file's)."""
    value = obj.get(key)
    return value if isinstance(value, dict) else {}


def name_of(obj: Obj) -> str:
    """Return an object's name."""
    return str(meta_of(obj).get("name", "?"))


def describe_object(obj: Obj) -> str:
    """Return ``Kind namespace/name``, the way plans and errors name an object."""
    ns = meta_of(obj).get("namespace")
    return f"{obj.get('kind', '?')} {f'{ns}/' if ns else ''}{name_of(obj)}"


def labels_of(obj: Obj) -> dict[str, str]:
    """Return an object's labels."""
    return dict(meta_of(obj).get("labels") or {})


def managed_by_us(obj: Obj) -> bool:
    """Whether the object carries ``app.kubernetes.io/managed-by: keybuzz-fix``."""
    return labels_of(obj).get(MANAGED_BY) == MANAGER


def pod_spec(workload: Obj) -> Obj:
    """Return the pod spec of a workload's template (or of a Pod)."""
    if workload.get("kind") == "Pod":
        return dict(spec_of(workload))
    return dict((spec_of(workload).get("template") or {}).get("spec") or {})


def containers(spec: Obj) -> list[Obj]:
    """Return every container of a pod spec (init, app and ephemeral)."""
    return [c for key in _POD_CONTAINER_LISTS for c in spec.get(key) or []]


def by_name(objs: Iterable[Obj]) -> dict[str, Obj]:
    """Index objects by name."""
    return {name_of(o): o for o in objs}


def selector_string(match_labels: dict[str, str]) -> str:
    """Return a label selector string for ``matchLabels``."""
    return ",".join(f"{k}={v}" for k, v in sorted(match_labels.items()))


def strip_server_fields(obj: Obj) -> Obj:
    """Return a copy without status and server-owned metadata (what a create or apply may send)."""
    out = copy.deepcopy(obj)
    out.pop("status", None)
    m = out.get("metadata") or {}
    for key in SERVER_METADATA:
        m.pop(key, None)
    annotations = m.get("annotations") or {}
    for key in SERVER_ANNOTATIONS:
        annotations.pop(key, None)
    if "annotations" in m and not annotations:
        del m["annotations"]
    template_meta = (spec_of(out).get("template") or {}).get("metadata")
    if isinstance(template_meta, dict) and template_meta.get("creationTimestamp") is None:
        template_meta.pop("creationTimestamp", None)
    return out


def mask_values(obj: Obj, keep: Iterable[str] = ()) -> Obj:
    """Return a copy with every literal env value (and last-applied annotation) replaced by a mask.

    Env values may hold literal secrets; plans, diffs and logs show them only with ``--show-values``.
    Variables named in ``keep`` (the port variable the tool rewrites) stay readable.
    """
    kept = set(keep)
    out = copy.deepcopy(obj)
    for spec in _pod_specs(out):
        for c in containers(spec):
            for var in c.get("env") or []:
                if "value" in var and var.get("name") not in kept:
                    var["value"] = MASK
    for m in (meta_of(out), meta_of(spec_of(out).get("template") or {})):
        annotations = m.get("annotations") or {}
        if LAST_APPLIED in annotations:
            annotations[LAST_APPLIED] = MASK
    return out


def _pod_specs(obj: Obj) -> list[Obj]:
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return []
    template = spec.get("template")
    if isinstance(template, dict) and isinstance(template.get("spec"), dict):
        return [template["spec"]]
    return [spec] if obj.get("kind") == "Pod" else []


def is_subset(want: Any, have: Any) -> bool:
    """Whether every field of ``want`` is in ``have`` with the same value (server defaults ignored)."""
    if isinstance(want, dict):
        return isinstance(have, dict) and all(k in have and is_subset(v, have[k]) for k, v in want.items())
    if isinstance(want, list):
        return isinstance(have, list) and len(want) == len(have) and all(map(is_subset, want, have))
    return bool(want == have)


def project(have: Any, like: Any) -> Any:
    """Return ``have`` cut down to the fields ``like`` has (to diff an object against a desired one)."""
    if isinstance(like, dict) and isinstance(have, dict):
        return {k: project(have[k], v) for k, v in like.items() if k in have}
    if isinstance(like, list) and isinstance(have, list):
        return [project(h, w) for h, w in zip(have, like, strict=False)] + have[len(like) :]
    return have


def dump_yaml(obj: Any, *, sort_keys: bool = False) -> str:
    """Return block-style YAML (keys in the object's own order unless sorted), never with aliases."""
    import yaml

    dumper = type("NoAliasDumper", (yaml.SafeDumper,), {"ignore_aliases": lambda _self, _data: True})
    return str(
        yaml.dump(obj, Dumper=dumper, sort_keys=sort_keys, default_flow_style=False, allow_unicode=True, width=1000)
    )


def yaml_stream(objs: Sequence[Obj]) -> str:
    """Return objects as a multi-document YAML stream."""
    return "".join(f"---\n{dump_yaml(o)}" for o in objs)


def yaml_diff(before: Any, after: Any, *, old: str, new: str, context: int) -> list[str]:
    """Return a unified diff of two objects as sorted YAML, its sides named ``old`` and ``new`` (empty when equal)."""

    def lines(obj: Any) -> list[str]:
        return [] if obj is None else dump_yaml(obj, sort_keys=True).splitlines()

    return list(difflib.unified_diff(lines(before), lines(after), old, new, n=context, lineterm=""))


def parse_objects(text: str, source: str) -> list[Obj]:
    """Read Kubernetes objects from YAML or JSON: a ``kind: List`` or a multi-document stream."""
    import yaml

    try:
        docs = list(yaml.safe_load_all(text))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        raise InputError(source, f"not valid YAML: {getattr(e, 'problem', None) or 'parse error'}", line) from None
    out: list[Obj] = []
    for index, doc in enumerate(docs, 1):
        if doc is None:
            continue
        if not isinstance(doc, dict):
            raise InputError(
                source, f"document {index}: expected a Kubernetes object or a List, found {type(doc).__name__}"
            )
        items = doc.get("items") if str(doc.get("kind", "")).endswith("List") else [doc]
        if not isinstance(items, list):
            raise InputError(source, f"document {index}: a {doc.get('kind')} without a list of items")
        for item in items:
            if (
                not isinstance(item, dict)
                or not item.get("kind")
                or not isinstance(item.get("metadata"), dict)
                or not item["metadata"].get("name")
            ):
                raise InputError(source, f"document {index}: an item without kind or metadata.name")
            problem = shape_problem(item)
            if problem:
                raise InputError(source, f"document {index}: {describe_object(item)}: {problem}")
            out.append(item)
    return out


# -- the shape of what the tool reads ---------------------------------------------------------------
# A file (a --from-file state, a backup) may hold anything; the API server never serves these shapes
# wrong. Each schema names the type of every field the tool reads: a type (or tuple of types), a
# mapping {key: schema} for an object, a one-item list [schema] for a list of them, or _STRINGS for
# a string-to-string map. Absent fields are fine, a null one is not; other fields are not looked at.

_STRINGS = "string map"
_PORT = (int, str)  # a number, or the name of a container port
_META: Obj = {
    "name": str,
    "namespace": str,
    "uid": str,
    "resourceVersion": str,
    "labels": _STRINGS,
    "annotations": _STRINGS,
    "ownerReferences": [{"kind": str, "name": str, "controller": bool}],
    "managedFields": [{"manager": str, "subresource": str}],
}
_TEXT = [(str, int, float)]  # args, command: the API wants strings; a YAML file may hold bare numbers
_HANDLER: Obj = {
    "httpGet": {"port": _PORT, "httpHeaders": [{"name": str, "value": str}]},
    "tcpSocket": {"port": _PORT},
    "grpc": {"port": int},
    "exec": {"command": _TEXT},
}
_CONTAINER: Obj = {
    "name": str,
    "restartPolicy": str,
    "command": _TEXT,
    "args": _TEXT,
    "env": [{"name": str, "value": (str, int, float, bool), "valueFrom": dict}],
    "envFrom": [dict],
    "ports": [{"containerPort": int, "hostPort": int, "name": str, "protocol": str}],
    "livenessProbe": _HANDLER,
    "readinessProbe": _HANDLER,
    "startupProbe": _HANDLER,
    "lifecycle": {"postStart": _HANDLER, "preStop": _HANDLER},
}
_TERM: Obj = {"matchExpressions": [{"key": str, "operator": str, "values": list}], "matchFields": [dict]}
_SELECTOR: Obj = {"matchLabels": _STRINGS, "matchExpressions": [{"key": str, "operator": str, "values": list}]}
_POD_TERM: Obj = {"labelSelector": _SELECTOR, "namespaceSelector": _SELECTOR, "namespaces": [str], "topologyKey": str}
_POD_AFFINITY: Obj = {
    "requiredDuringSchedulingIgnoredDuringExecution": [_POD_TERM],
    "preferredDuringSchedulingIgnoredDuringExecution": [{"podAffinityTerm": _POD_TERM}],
}
_POD: Obj = {
    "containers": [_CONTAINER],
    "initContainers": [_CONTAINER],
    "ephemeralContainers": [_CONTAINER],
    "hostNetwork": bool,
    "nodeSelector": _STRINGS,
    "nodeName": str,
    "tolerations": [{"key": str, "operator": str, "value": str, "effect": str}],
    "affinity": {
        "nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [_TERM]}},
        "podAffinity": _POD_AFFINITY,
        "podAntiAffinity": _POD_AFFINITY,
    },
    "topologySpreadConstraints": [{"labelSelector": _SELECTOR, "topologyKey": str, "whenUnsatisfiable": str}],
}
_WORKLOAD: Obj = {
    "metadata": _META,
    "spec": {"selector": {"matchLabels": _STRINGS}, "replicas": int, "template": {"metadata": _META, "spec": _POD}},
}
_SHAPES: dict[str, Obj] = {
    "Deployment": _WORKLOAD,
    "DaemonSet": _WORKLOAD,
    "StatefulSet": _WORKLOAD,
    "ReplicaSet": _WORKLOAD,
    "Pod": {"metadata": _META, "spec": _POD},
    "Service": {
        "metadata": _META,
        "spec": {
            "type": str,
            "clusterIP": str,
            "selector": _STRINGS,
            "ports": [{"port": int, "targetPort": _PORT, "nodePort": int, "name": str, "protocol": str}],
        },
    },
    "HorizontalPodAutoscaler": {"metadata": _META, "spec": {"scaleTargetRef": {"kind": str, "name": str}}},
    "PodDisruptionBudget": {
        "metadata": _META,
        "spec": {"selector": _SELECTOR, "minAvailable": (int, str), "maxUnavailable": (int, str)},
    },
    "Node": {
        "metadata": _META,
        "spec": {"podCIDR": str, "taints": [{"key": str, "value": str, "effect": str}]},
        "status": {"addresses": [{"type": str, "address": str}]},
    },
}


def shape_problem(obj: Obj) -> str | None:
    """Return where ``obj`` departs from the shape the tool reads (``spec.template.spec: a list, ...``), if it does."""
    return _shape(obj, _SHAPES.get(str(obj.get("kind")), {"metadata": _META}), "")


def _shape(value: Any, schema: Any, where: str) -> str | None:
    if value is None:
        return None
    found = {dict: "a mapping", list: "a list", str: "a string", bool: "true/false"}.get(type(value), "a number")
    if schema == _STRINGS:
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            return f"{where}: expected a map of strings, found {found}"
        return None
    if isinstance(schema, dict):
        if not isinstance(value, dict):
            return f"{where}: expected a mapping, found {found}"
        for key, sub in schema.items():
            at = f"{where}.{key}" if where else key
            if key in value and value[key] is None:
                return f"{at}: empty (null)"
            problem = _shape(value.get(key), sub, at)
            if problem:
                return problem
        return None
    if isinstance(schema, list):
        if not isinstance(value, list):
            return f"{where}: expected a list, found {found}"
        for i, item in enumerate(value):
            if item is None:
                return f"{where}[{i}]: an empty item"
            problem = _shape(item, schema[0], f"{where}[{i}]")
            if problem:
                return problem
        return None
    types = schema if isinstance(schema, tuple) else (schema,)
    if isinstance(value, bool) and bool not in types or not isinstance(value, types):
        return f"{where}: unexpected {found}"
    return None
