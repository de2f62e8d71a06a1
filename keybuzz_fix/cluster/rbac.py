"""The RBAC preflight of ``convert`` and ``rollback``: which permissions a plan needs, and whether they are granted.

A missing permission is named before anything changes: every one at once, as RBAC names it
(``patch daemonsets.apps``), with where to grant it (``manifests/rbac.yaml``).
"""

from __future__ import annotations

from collections.abc import Sequence

from keybuzz_fix.cluster.changes import Change, Verb
from keybuzz_fix.cluster.client import Kube
from keybuzz_fix.cluster.objects import Obj, status_of
from keybuzz_fix.cluster.resources import RESOURCES
from keybuzz_fix.errors import Forbidden

_VERBS = {Verb.CREATE: ["create"], Verb.PATCH: ["patch"], Verb.DELETE: ["delete"]}


def permissions(changes: Sequence[Change], *, wait_kind: str | None) -> list[tuple[str, str]]:
    """Return the (verb, kind) pairs the changes need, in a stable order (waiting on ``wait_kind`` lists, watches)."""
    needed: list[tuple[str, str]] = []
    for c in changes:
        verbs = ["patch"] + (["create"] if c.before is None else []) if c.verb is Verb.APPLY else _VERBS.get(c.verb, [])
        needed += [(v, c.kind) for v in verbs]
    if wait_kind:
        needed += [("list", wait_kind), ("watch", wait_kind)]
    return list(dict.fromkeys(needed))


def preflight(kube: Kube, namespace: str, needed: Sequence[tuple[str, str]]) -> None:
    """Ask the API whether every needed permission is granted; name all those missing at once."""
    missing = [f"{verb} {RESOURCES[kind].qualified}" for verb, kind in needed if not can_i(kube, verb, kind, namespace)]
    if missing:
        raise Forbidden(
            f"forbidden: missing permission(s) in namespace {namespace}: {', '.join(missing)}; "
            "nothing changed; grant them (see manifests/rbac.yaml)"
        )


def can_i(kube: Kube, verb: str, kind: str, namespace: str | None) -> bool:
    """Ask the API whether the current identity may do ``verb`` on ``kind`` (a SelfSubjectAccessReview)."""
    res = RESOURCES[kind]
    attrs: Obj = {"verb": verb, "group": res.group, "resource": res.plural}
    if namespace:
        attrs["namespace"] = namespace
    review = {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SelfSubjectAccessReview",
        "spec": {"resourceAttributes": attrs},
    }
    return bool(status_of(kube.review(review)).get("allowed"))
