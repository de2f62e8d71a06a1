"""The app's Service switched to NodePort in place, its port aimed at the host port (pure code, no I/O).

Its clusterIP is kept; its other ports that target the app's old port by number follow the app; a
nodePort another Service already uses refuses the app. The reason says only what differs.
"""

from __future__ import annotations

from keybuzz_fix.cluster.changes import Change, Verb
from keybuzz_fix.cluster.daemonset import Unconvertible, service_entry
from keybuzz_fix.cluster.objects import Obj, meta_of, name_of, spec_of, strip_server_fields
from keybuzz_fix.cluster.observed import Observed
from keybuzz_fix.config import AppConfig


def service_change(
    service: Obj, app: AppConfig, host_port: int, observed: Observed, *, moved_from: int | None = None
) -> Change:
    """Switch the Service to NodePort in place (its clusterIP is kept), port → host port.

    Its other ports that target the app's old port by number (``moved_from``) follow it too.
    """
    ns, name = meta_of(service).get("namespace") or observed.namespace, name_of(service)
    spec = spec_of(service)
    entry = service_entry(service, app)
    for other in observed.services:
        if other is service or (name_of(other) == name and meta_of(other).get("namespace") == ns):
            continue
        for p in spec_of(other).get("ports") or []:
            if p.get("nodePort") == app.node_port:
                raise Unconvertible(
                    f"nodePort {app.node_port} is already used by Service "
                    f"{meta_of(other).get('namespace')}/{name_of(other)}"
                )
    ports = []
    followed: list[str] = []
    for p in spec.get("ports") or []:
        p = dict(p)
        if p.get("port") == app.service_port:
            p["targetPort"] = host_port
            p["nodePort"] = app.node_port
        elif moved_from is not None and moved_from != host_port and p.get("targetPort") == moved_from:
            p["targetPort"] = host_port
            followed.append(f"; port {p.get('port')}: targetPort {moved_from} → {host_port} (the app's port)")
        ports.append(p)
    done = (
        spec.get("type") == "NodePort"
        and entry.get("targetPort") == host_port
        and entry.get("nodePort") == app.node_port
        and ports == (spec.get("ports") or [])
    )
    after = strip_server_fields(service)
    after["spec"] = {**spec, "type": "NodePort", "ports": ports}
    if done:
        return Change(Verb.NONE, "Service", ns, name, f"already NodePort {app.node_port} → {host_port}", after=after)
    reason = _service_reason(spec, entry, app, host_port) + "".join(followed)
    body: Obj = {"spec": {"type": "NodePort", "ports": ports}}
    if meta_of(service).get("resourceVersion"):
        body["metadata"] = {"resourceVersion": meta_of(service)["resourceVersion"]}
    return Change(Verb.PATCH, "Service", ns, name, reason, body=body, before=service, after=after)


def _service_reason(spec: Obj, entry: Obj, app: AppConfig, host_port: int) -> str:
    """Say what switching the Service changes, naming only what differs (never ``targetPort 3000 → 3000``)."""
    kind = spec.get("type", "ClusterIP")
    parts = [f"type {kind} → NodePort"] if kind != "NodePort" else []
    old_target = entry.get("targetPort", entry.get("port"))
    moves = []
    if old_target != host_port:
        moves.append(f"targetPort {old_target} → {host_port}")
    old_node_port = entry.get("nodePort")
    if old_node_port != app.node_port:
        moves.append(f"nodePort {old_node_port} → {app.node_port}" if old_node_port else f"nodePort {app.node_port}")
    if moves:
        parts.append(f"port {app.service_port}: {', '.join(moves)}")
    if not parts:
        parts.append(f"already NodePort {app.node_port} → {host_port}")
    return ", ".join(parts) + f"; clusterIP {spec.get('clusterIP') or '(none)'} kept"
