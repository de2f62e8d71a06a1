"""What ``rollback`` would do: put back what a convert backup holds, keeping the apps served (pure code).

Recreate the Deployments and HPAs that are gone, restore each Service's type and ports, and
delete the DaemonSets convert made (only those labelled managed-by keybuzz-fix, with a uid
precondition). Objects already as in the backup are left alone, so a second rollback is a no-op.
The run (:mod:`keybuzz_fix.flows.rollback`) backs up what will change, creates, waits until the
Deployments are ready, restores the Services, then deletes the DaemonSets.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from keybuzz_fix.cluster.changes import Change, Verb
from keybuzz_fix.cluster.objects import Obj, managed_by_us, meta_of, name_of, spec_of, strip_server_fields

RESTORED = ("Deployment", "HorizontalPodAutoscaler")
LIVE_KINDS = (*RESTORED, "Service", "DaemonSet")  # what the plan compares a backup with


@dataclass(frozen=True)
class RollbackPlan:
    """What rollback would do, in order."""

    creates: tuple[Change, ...]  # Deployments, then HPAs
    services: tuple[Change, ...]
    daemonsets: tuple[Change, ...]
    warnings: tuple[str, ...]

    @property
    def changes(self) -> tuple[Change, ...]:
        """Every change, in the order they are carried out."""
        return self.creates + self.services + self.daemonsets

    @property
    def pending(self) -> list[Change]:
        """The changes that modify the cluster."""
        return [c for c in self.changes if c.changes]

    @property
    def deployments(self) -> list[str]:
        """The Deployments to wait for."""
        return [c.name for c in self.creates if c.kind == "Deployment"]


def plan_rollback(saved: Sequence[Obj], live: Sequence[Obj]) -> RollbackPlan:
    """Plan the restore of ``saved`` (a backup's objects) over ``live`` (the same kinds, as read now)."""
    now = {(o.get("kind"), meta_of(o).get("namespace"), name_of(o)): o for o in live}
    creates: list[Change] = []
    services: list[Change] = []
    daemonsets: list[Change] = []
    warnings: list[str] = []
    order = {kind: i for i, kind in enumerate(RESTORED)}
    for obj in sorted(saved, key=lambda o: order.get(str(o.get("kind")), len(order))):
        kind, ns, name = str(obj.get("kind")), str(meta_of(obj).get("namespace")), name_of(obj)
        current = now.get((kind, ns, name))
        if kind in RESTORED:
            if current is not None:
                creates.append(Change(Verb.NONE, kind, ns, name, "exists"))
            else:
                body = strip_server_fields(obj)
                creates.append(Change(Verb.CREATE, kind, ns, name, "restore from the backup", body=body, after=body))
        elif kind == "Service":
            services.append(_service_restore(obj, current))
        elif kind != "DaemonSet":  # a DaemonSet in a backup is convert's own earlier output
            warnings.append(f"{kind} {ns}/{name} in the backup is not restored by rollback")
    for obj in saved:
        if obj.get("kind") != "Deployment":
            continue
        ns, name = str(meta_of(obj).get("namespace")), name_of(obj)
        ds = now.get(("DaemonSet", ns, name))
        if ds is None:
            continue
        if not managed_by_us(ds):
            warnings.append(f"DaemonSet {ns}/{name} is not managed by keybuzz-fix: left alone")
            continue
        daemonsets.append(
            Change(
                Verb.DELETE,
                "DaemonSet",
                ns,
                name,
                f"Deployment {name} runs the app again",
                before=ds,
                uid=meta_of(ds).get("uid"),
            )
        )
    return RollbackPlan(tuple(creates), tuple(services), tuple(daemonsets), tuple(warnings))


def _service_restore(saved: Obj, current: Obj | None) -> Change:
    ns, name = str(meta_of(saved).get("namespace")), name_of(saved)
    want = spec_of(saved)
    if current is None:
        body = strip_server_fields(saved)
        return Change(Verb.CREATE, "Service", ns, name, "restore from the backup", body=body, after=body)
    have = spec_of(current)
    restored = {
        "type": want.get("type", "ClusterIP"),
        "ports": want.get("ports") or [],
        "externalTrafficPolicy": want.get("externalTrafficPolicy"),
    }
    if all(have.get(k) == v for k, v in restored.items()):
        return Change(Verb.NONE, "Service", ns, name, "already as in the backup")
    after = strip_server_fields(current)
    after["spec"] = {k: v for k, v in {**have, **restored}.items() if v is not None}
    reason = (
        f"type {have.get('type')} → {restored['type']}, ports as in the backup; clusterIP {have.get('clusterIP')} kept"
    )
    return Change(
        Verb.PATCH,
        "Service",
        ns,
        name,
        reason,
        before=current,
        after=after,
        body={"metadata": {"resourceVersion": meta_of(current).get("resourceVersion")}, "spec": restored},
    )
