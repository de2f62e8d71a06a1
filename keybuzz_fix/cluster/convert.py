"""Plan the conversion of Deployments into hostNetwork DaemonSets (pure code, no I/O).

For each configured app: a DaemonSet carrying the Deployment's pod template over unchanged except
for what hostNetwork needs (``hostNetwork``, ``dnsPolicy``, the app's port moved to the host port
everywhere the pod names it, scheduling fit for one pod per worker, a surge-free rolling update),
its Service switched to NodePort in place, every HPA aimed at the Deployment, then the Deployment,
deleted (the DaemonSet itself is :mod:`keybuzz_fix.cluster.daemonset`'s). A plan can also refuse
(port collision, a port that cannot move, a worker the DaemonSet would leave out, an object
another controller owns or reconciles, missing objects) or warn (env values that still go through
ClusterIP; with ``allow_managed``, what the other controller will undo). Planning against the
state after a run, or after a half-finished run, yields the rest of the work: nothing, once
converted.

This module assembles the plan; the state it reads is :mod:`keybuzz_fix.cluster.observed`'s, the
Service switch :mod:`keybuzz_fix.cluster.nodeport`'s, and what the host network runs into (host
port collisions, workers left out, ClusterIP env values) :mod:`keybuzz_fix.cluster.hostnetwork`'s.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from keybuzz_fix.cluster.changes import Change, Verb
from keybuzz_fix.cluster.daemonset import Unconvertible, convert_template, listening_port
from keybuzz_fix.cluster.hostnetwork import (
    collisions,
    env_warnings,
    left_out_workers,
    other_services,
    template_labels,
    unmapped_workers,
)
from keybuzz_fix.cluster.nodeport import service_change
from keybuzz_fix.cluster.objects import (
    MANAGED_BY,
    MANAGER,
    Obj,
    is_subset,
    managed_by_us,
    mask_values,
    meta_of,
    name_of,
    pod_spec,
    spec_of,
    strip_server_fields,
)
from keybuzz_fix.cluster.observed import Observed
from keybuzz_fix.cluster.owners import disruption_notes, managers_of
from keybuzz_fix.cluster.placement import Handover, handover
from keybuzz_fix.cluster.scheduling import HostPort, host_ports
from keybuzz_fix.config import AppConfig, Config
from keybuzz_fix.hints import hint

__all__ = ["ConvertPlan", "plan_convert"]


@dataclass(frozen=True)
class ConvertPlan:
    """Everything convert would do, in order, with what it refuses and warns about."""

    daemonsets: tuple[Change, ...]
    services: tuple[Change, ...]
    hpas: tuple[Change, ...]
    deployments: tuple[Change, ...]
    refusals: tuple[str, ...]
    warnings: tuple[str, ...]
    notes: tuple[str, ...]
    shown_env: frozenset[str]  # the port variables, shown even when values are masked
    handovers: tuple[Handover, ...] = ()  # DaemonSets the Deployment's own pods hold off until it is deleted

    @property
    def changes(self) -> tuple[Change, ...]:
        """Every change, in the order they are carried out."""
        return self.daemonsets + self.services + self.hpas + self.deployments

    @property
    def failed(self) -> bool:
        """Whether the plan refuses to convert an app."""
        return bool(self.refusals)

    @property
    def pending(self) -> list[Change]:
        """The changes that modify the cluster."""
        return [c for c in self.changes if c.changes]

    @property
    def changes_pending(self) -> bool:
        """Whether the plan changes the cluster (``convert --from-file --exit-code``)."""
        return bool(self.pending)

    @property
    def to_back_up(self) -> list[Obj]:
        """The objects as read that this plan changes or deletes."""
        return [c.before for c in self.pending if c.before is not None]

    def applied_objects(self, *, show_values: bool = False) -> list[Obj]:
        """The objects as they will be (DaemonSets, then Services), masked unless asked."""
        objs = [c.after for c in self.daemonsets + self.services if c.after is not None]
        return objs if show_values else [mask_values(o, self.shown_env) for o in objs]


def plan_convert(
    cfg: Config, observed: Observed, *, keep_port: bool = False, allow_managed: bool = False
) -> ConvertPlan:
    """Return the plan that brings ``observed`` to the converted state.

    Objects another controller owns or reconciles are refused, one line each, unless
    ``allow_managed``: then the plan goes on and warns what that controller will undo.
    """
    ns = cfg.namespace
    ds_changes: list[Change] = []
    svc_changes: list[Change] = []
    hpa_changes: list[Change] = []
    dep_changes: list[Change] = []
    refusals: list[str] = []
    warnings: list[str] = []
    notes: list[str] = []
    placed: dict[str, tuple[Obj, set[HostPort]]] = {}  # app -> (pod spec, host ports) for collision checks
    handovers: list[Handover] = []
    for app in cfg.apps:
        deployment = observed.one(observed.deployments, app.name)
        existing = observed.one(observed.daemonsets, app.name)
        service = observed.one(observed.services, app.name)
        mine: list[Change] = []
        try:
            if existing is not None and not managed_by_us(existing):
                raise Unconvertible(
                    f"DaemonSet {ns}/{app.name} exists and is not managed by keybuzz-fix "
                    f"(no label {MANAGED_BY}={MANAGER}); rename or remove it first"
                )
            if service is None:
                raise Unconvertible(f"Service {ns}/{app.name} not found")
            if deployment is None and existing is None:
                raise Unconvertible(f"neither Deployment nor DaemonSet {ns}/{app.name} found")
            if deployment is not None:
                converted = convert_template(deployment, app, service, keep_port=keep_port)
                desired, host_port = converted.daemonset, converted.host_port
                notes += converted.notes
                warnings += converted.warnings
                env_warned, env_noted = env_warnings(app.name, pod_spec(desired), observed)
                warnings += env_warned
                notes += env_noted
                app_port = _app_port(deployment, service, app)
                warnings += other_services(app.name, deployment, service, app_port, host_port, observed)
                mine.append(_daemonset_change(desired, existing, deployment, host_port))
                spec = pod_spec(desired)
                held = handover(deployment, template_labels(desired), ns)
                if held is not None:
                    handovers.append(held)
                    notes.append(
                        f"{app.name}: the Deployment's own pods keep a required anti-affinity against the app's pods "
                        f"(topologyKey {', '.join(held.topology_keys)}), so the DaemonSet's pods cannot start next to "
                        "them: convert switches over once the DaemonSet's other pods are ready, deletes the "
                        "Deployment, then waits for the rest"
                    )
            else:
                assert existing is not None
                host_port = app_port = _existing_host_port(existing, service, app, keep_port)
                mine.append(
                    Change(
                        Verb.NONE,
                        "DaemonSet",
                        ns,
                        app.name,
                        "already converted (the Deployment is gone)",
                        after=strip_server_fields(existing),
                    )
                )
                spec = pod_spec(existing)
            refusals += [f"{app.name}: {r}" for r in left_out_workers(spec, observed)]
            notes += disruption_notes(app.name, template_labels(deployment or existing or {}), ns, observed.pdbs)
            placed[app.name] = (spec, host_ports(spec))
            svc = service_change(service, app, host_port, observed, moved_from=app_port)
        except Unconvertible as e:
            refusals += [f"{app.name}: {p}" for p in e.problems]
            continue
        hpas = [
            Change(
                Verb.DELETE,
                "HorizontalPodAutoscaler",
                ns,
                name_of(hpa),
                f"scales Deployment {app.name}, which the DaemonSet replaces",
                before=hpa,
                uid=meta_of(hpa).get("uid"),
            )
            for hpa in observed.hpas
            if _scales(hpa, app.name, ns)
        ]
        deps = []
        if deployment is not None:
            deps.append(
                Change(
                    Verb.DELETE,
                    "Deployment",
                    ns,
                    app.name,
                    f"replaced by DaemonSet {ns}/{app.name}",
                    before=deployment,
                    uid=meta_of(deployment).get("uid"),
                )
            )
        managed = _managed(app.name, [svc, *hpas, *deps], allow_managed=allow_managed)
        (warnings if allow_managed else refusals).extend(managed)
        ds_changes += mine
        svc_changes.append(svc)
        hpa_changes += hpas
        dep_changes += deps
    refusals += collisions(cfg, placed, observed)
    warnings += unmapped_workers(observed)
    return ConvertPlan(
        tuple(ds_changes),
        tuple(svc_changes),
        tuple(hpa_changes),
        tuple(dep_changes),
        tuple(refusals),
        tuple(warnings),
        tuple(notes),
        frozenset(a.port_env for a in cfg.apps),
        tuple(h for h in handovers if h.daemonset in {c.name for c in ds_changes}),
    )


def _scales(hpa: Obj, app: str, namespace: str) -> bool:
    target = spec_of(hpa).get("scaleTargetRef") or {}
    return bool(
        target.get("kind") == "Deployment"
        and target.get("name") == app
        and meta_of(hpa).get("namespace", namespace) == namespace
    )


def _managed(app: str, changes: Sequence[Change], *, allow_managed: bool) -> list[str]:
    """One line per object to change that another controller owns or reconciles: who, and what to do."""
    lines = []
    for c in changes:
        if not c.changes or c.before is None:
            continue
        managers = managers_of(c.before)
        if not managers:
            continue
        who = " and ".join(m.who for m in managers)
        by = " or ".join(dict.fromkeys(m.by for m in managers))
        undo = "re-create" if c.verb is Verb.DELETE else "reset"
        fixes = "; and ".join(dict.fromkeys(m.fix for m in managers))
        if allow_managed:
            lines.append(
                f"{app}: {hint('--allow-managed', '--allow-managed: ')}{c.label} {c.target} though {who} manages it: "
                f"{by} will {undo} it; "
                f"to keep it converted, {fixes}"
            )
        else:
            lines.append(
                f"{app}: {c.target} is managed by {who}: {by} would {undo} it after convert; first {fixes}"
                + hint("--allow-managed", " (or pass --allow-managed)")
            )
    return lines


def _daemonset_change(desired: Obj, existing: Obj | None, deployment: Obj, host_port: int) -> Change:
    ns, name = meta_of(desired)["namespace"], meta_of(desired)["name"]
    what = f"run {name} on every worker with hostNetwork, host port {host_port}"
    if existing is None:
        return Change(
            Verb.APPLY,
            "DaemonSet",
            ns,
            name,
            what,
            body=desired,
            after=desired,
            compare_to=strip_server_fields(deployment),
        )
    if is_subset(desired, existing):
        return Change(Verb.NONE, "DaemonSet", ns, name, "already as planned", after=desired)
    return Change(Verb.APPLY, "DaemonSet", ns, name, what, body=desired, before=existing, after=desired)


def _app_port(deployment: Obj, service: Obj, app: AppConfig) -> int:
    """The port the app listens on in the Deployment (before any move)."""
    ns = meta_of(deployment).get("namespace")
    _container, port = listening_port(pod_spec(deployment), service, app, f"Deployment {ns}/{app.name}")
    return int(port["containerPort"])


def _existing_host_port(ds: Obj, service: Obj, app: AppConfig, keep_port: bool) -> int:
    """The host port of an already converted app (the Deployment is gone)."""
    if not keep_port:
        return app.host_port
    _container, port = listening_port(
        pod_spec(ds), service, app, f"DaemonSet {meta_of(ds).get('namespace')}/{app.name}"
    )
    return int(port["containerPort"])
