"""CoreDNS itself and the NetworkPolicies in its way (pure code)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from keybuzz_fix.checks.diagnose.findings import Candidate, Cause
from keybuzz_fix.checks.diagnose.paths import Path
from keybuzz_fix.checks.diagnose.views import ClusterView, NodeView, is_dns_pod
from keybuzz_fix.cluster.objects import part_of

LOOP = ("plugin/loop", "loop detected")


def coredns(nodes: Sequence[NodeView], cluster: ClusterView) -> Candidate:
    """CoreDNS without endpoints, crash-looping, or in a forwarding loop."""
    lines: dict[str, list[str]] = {}
    loop = False
    objs = cluster.objects
    if objs is not None:
        eps = next(
            (
                e
                for e in objs.endpoints
                if (e.get("metadata") or {}).get("name") == "kube-dns"
                and (e.get("metadata") or {}).get("namespace") == "kube-system"
            ),
            None,
        )
        if eps is not None and not any(s.get("addresses") for s in eps.get("subsets") or []):
            lines.setdefault("cluster", []).extend(
                ["$ kubectl -n kube-system get endpoints kube-dns", "<none> (no ready CoreDNS pod)"]
            )
        for pod in objs.pods:
            if is_dns_pod(pod) and (failing := _failing_containers(pod)):
                lines.setdefault("cluster", []).extend(
                    ["$ kubectl -n kube-system get pods -l k8s-app=kube-dns", *failing]
                )
    for n in nodes:
        c = n.capture
        if c is None:
            continue
        for t in c.tables.values():
            for rule in t.filter:
                if '"kube-system/kube-dns:dns has no endpoints"' in rule:
                    lines.setdefault(n.name, []).extend([f"$ iptables-{t.backend}-save -t filter", rule])
                    break
        hit = [
            line
            for line in c.coredns_logs
            if any(x in line for x in LOOP) or "[FATAL]" in line or ("dial tcp" in line and "i/o timeout" in line)
        ]
        if hit:
            loop = loop or any(x in line for line in hit for x in LOOP)
            lines.setdefault(n.name, []).extend(["$ tail /var/log/pods/kube-system_coredns-*/coredns/*.log", *hit[-2:]])
            stub = [r for r in c.resolv if "127.0.0.53" in r or "127.0.0." in r]
            if stub:
                lines[n.name] += ["$ grep nameserver /etc/resolv.conf", *stub]
    present: bool | None = bool(lines)
    if not lines and objs is None and not any(n.capture and n.capture.coredns_logs for n in nodes):
        present = None if not any(n.capture and n.capture.tables for n in nodes) else False
    fix = (
        "CoreDNS forwards to itself: point it at the real resolvers — K3s `--resolv-conf "
        "/run/systemd/resolve/resolv.conf` (kubelet `--resolv-conf`), or `forward . 1.1.1.1` in the coredns "
        "ConfigMap — then `kubectl -n kube-system rollout restart deploy/coredns`"
        if loop
        else "Look at `kubectl -n kube-system describe pod -l k8s-app=kube-dns` and its logs; make CoreDNS ready "
        "(endpoints of kube-dns must not be empty), then `kubectl -n kube-system rollout restart deploy/coredns`"
    )

    def must(p: Path) -> bool:
        return p.kind == "dns"

    return Candidate(
        Cause.COREDNS,
        present,
        ("forwarding loop" if loop else "not serving") if lines else "CoreDNS has endpoints and no loop in its logs",
        fix,
        tuple(lines),
        {k: tuple(dict.fromkeys(v)) for k, v in lines.items()},
        {} if present is not None else {"cluster": "no cluster.yaml / API, no kube-proxy rules, no CoreDNS logs"},
        breaks=must,
        may_break=lambda p: p.kind in ("dns", "dns-pod"),
    )


def _failing_containers(pod: Mapping[str, Any]) -> list[str]:
    """One line per container of a CoreDNS pod that is not serving, as kubectl would show its state.

    Not serving: in back-off (waiting CrashLoopBackOff), ended with an error (terminated with a
    non-zero exit code: kubectl's Error, OOMKilled, ExitCode:N; the kubelet never writes Error as a
    waiting reason, a hand-made cluster.yaml may), or restarted 3 times or more. Init containers are
    not read: CoreDNS as K3s and kubeadm ship it has none, and a pod stuck in them is not ready,
    which the kube-dns endpoints show.
    """
    statuses = part_of(pod, "status").get("containerStatuses")
    statuses = [cs for cs in statuses if isinstance(cs, Mapping)] if isinstance(statuses, list) else []
    name = part_of(pod, "metadata").get("name")
    out = []
    for cs in statuses:
        state = part_of(cs, "state")
        waiting = part_of(state, "waiting").get("reason")
        ended = part_of(state, "terminated")
        code = ended.get("exitCode")
        # restartCount: an int from the API (0 when a status leaves it out); a hand-made cluster.yaml may say anything
        restarts = cs.get("restartCount", 0)
        crashed = isinstance(code, int) and code != 0
        if waiting in ("CrashLoopBackOff", "Error") or crashed or (isinstance(restarts, int) and restarts >= 3):
            shown = waiting or ended.get("reason") or (f"ExitCode:{code}" if ended else "running")
            who = f"{name} ({cs.get('name')})" if len(statuses) > 1 else name
            out.append(f"{who}: {shown}, {restarts} restarts")
    return out


def network_policy(cluster: ClusterView) -> Candidate:
    """A NetworkPolicy that selects CoreDNS and lets no DNS in, or a default-deny egress without DNS."""
    objs = cluster.objects
    if objs is None:
        why = cluster.objects_note or "no cluster.yaml (kubectl get svc,endpoints,networkpolicy,pods -A -o yaml)"
        return Candidate(Cause.NETWORK_POLICY, None, "not checked", not_checked={"cluster": why})
    bad: list[str] = []
    dns_labels = [((p.get("metadata") or {}).get("labels") or {}) for p in objs.pods if is_dns_pod(p)] or [
        {"k8s-app": "kube-dns"}
    ]
    egress_ns: set[str] = set()
    for pol in objs.policies:
        meta, spec = pol.get("metadata") or {}, pol.get("spec") or {}
        ns, name = meta.get("namespace", "default"), meta.get("name", "")
        types = spec.get("policyTypes") or (["Ingress"] + (["Egress"] if "egress" in spec else []))
        selects_dns = ns == "kube-system" and any(_selects(spec.get("podSelector") or {}, lab) for lab in dns_labels)
        if selects_dns and "Ingress" in types and not any(_allows_53(r) for r in spec.get("ingress") or []):
            bad += [
                f"$ kubectl -n {ns} get networkpolicy {name} -o yaml",
                "selects CoreDNS; no ingress rule allows 53",
            ]
        if (
            "Egress" in types
            and not (spec.get("podSelector") or {}).get("matchLabels")
            and not any(_allows_53(r) for r in spec.get("egress") or [])
        ):
            egress_ns.add(ns)
            bad += [
                f"$ kubectl -n {ns} get networkpolicy {name} -o yaml",
                f"pods of {ns}: egress denied, DNS (53) not allowed",
            ]
    dns_denied = any("selects CoreDNS" in line for line in bad)
    return Candidate(
        Cause.NETWORK_POLICY,
        bool(bad),
        "denies DNS" if bad else "no NetworkPolicy in the way of DNS",
        "Allow DNS in the policy shown: an ingress rule for CoreDNS on 53/udp and 53/tcp from all namespaces "
        "(`namespaceSelector: {}`), and an egress rule to kube-system port 53 in default-deny namespaces",
        ("cluster",) if bad else (),
        {"cluster": tuple(bad)} if bad else {},
        breaks=lambda p: dns_denied and p.source == "pod" and p.kind in ("dns", "dns-pod"),
        may_break=lambda p: bool(bad) and p.kind in ("dns", "dns-pod"),
    )


def _selects(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    want = selector.get("matchLabels") or {}
    return all(labels.get(k) == v for k, v in want.items()) and not selector.get("matchExpressions")


def _allows_53(rule: Mapping[str, Any]) -> bool:
    ports = rule.get("ports")
    if not ports:
        return True  # all ports (from the peers named)
    return any(str(p.get("port")) in ("53", "dns", "dns-tcp") for p in ports)
