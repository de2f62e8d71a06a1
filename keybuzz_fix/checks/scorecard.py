"""The scorecard: eight checks over what was read from the cluster, the URLs and the workers (pure code).

Each check is a pure function of facts (API objects, HTTP answers) that returns pass or fail
with its evidence: counts, values, the error. The score is passed / total; it passes at the
threshold (80 % by default, 100 % with ``--strict``). ``--extended`` rows (per worker) are shown
but never counted. The facts are gathered concurrently by :mod:`keybuzz_fix.flows.validate`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from keybuzz_fix.cluster import scheduling
from keybuzz_fix.cluster.ingress import ServingFacts, route_backends, serving_problems
from keybuzz_fix.cluster.objects import Obj, name_of, spec_of
from keybuzz_fix.config import Config
from keybuzz_fix.hosts.reach import Paths, Reach
from keybuzz_fix.hosts.ufw.plan import ActionKind
from keybuzz_fix.hosts.ufw.run import HostOutcome


class UrlAnswer(Protocol):
    """What check 7 needs of a URL's answer (:class:`keybuzz_fix.checks.http.HttpAnswer`)."""

    @property
    def url(self) -> str:
        """The URL asked."""
        ...

    @property
    def ok(self) -> bool:
        """Whether it answered HTTP 200."""
        ...

    def describe(self) -> str:
        """Return the evidence line."""
        ...


@dataclass(frozen=True)
class ScoredCheck:
    """One scored check: pass or fail, with the evidence."""

    number: int
    name: str
    passed: bool
    detail: str
    seconds: float = 0.0

    @property
    def status(self) -> str:
        """Return ``pass`` or ``fail``."""
        return "pass" if self.passed else "fail"


@dataclass(frozen=True)
class Row:
    """One ``--extended`` per-worker row, not counted in the score."""

    host: str
    check: str
    passed: bool
    detail: str

    @property
    def status(self) -> str:
        """Return ``pass`` or ``fail``."""
        return "pass" if self.passed else "fail"


@dataclass(frozen=True)
class Scorecard:
    """Every check, the score and what it takes to pass."""

    checks: tuple[ScoredCheck, ...]
    threshold: int = 80
    strict: bool = False
    workers: int = 0
    extended: tuple[Row, ...] = ()
    seconds: float = 0.0

    @property
    def passed(self) -> int:
        """Return how many checks passed."""
        return sum(c.passed for c in self.checks)

    @property
    def total(self) -> int:
        """Return how many checks count."""
        return len(self.checks)

    @property
    def score(self) -> float:
        """Return the score in percent."""
        return 100.0 * self.passed / self.total if self.total else 0.0

    @property
    def required(self) -> int:
        """Return the percentage needed to pass (100 with ``--strict``)."""
        return 100 if self.strict else self.threshold

    @property
    def ok(self) -> bool:
        """Whether the score reaches what is required (exact integer arithmetic)."""
        return self.total > 0 and self.passed * 100 >= self.required * self.total

    @property
    def perfect(self) -> bool:
        """Whether every check passed."""
        return self.total > 0 and self.passed == self.total

    @property
    def failed(self) -> bool:
        """Whether the score is below what is required."""
        return not self.ok


# -- the eight checks ----------------------------------------------------------------------------


def check_daemonsets(cfg: Config, daemonsets: Mapping[str, Obj], deployments: Mapping[str, Obj]) -> ScoredCheck:
    """ScoredCheck 1: a DaemonSet exists for every app."""
    parts, ok = [], True
    for app in cfg.apps:
        if app.name in daemonsets:
            parts.append(f"{app.name}: DaemonSet found")
        else:
            ok = False
            still = " (still a Deployment)" if app.name in deployments else ""
            parts.append(f"{app.name}: no DaemonSet{still}")
    return ScoredCheck(1, check_name(1, cfg, 0), ok, "; ".join(parts))


def check_pods(cfg: Config, daemonsets: Mapping[str, Obj], pods: Sequence[Obj], workers: int) -> ScoredCheck:
    """ScoredCheck 2: each app's DaemonSet has at least N Running and Ready pods (N = workers)."""
    parts, ok = [], True
    for app in cfg.apps:
        if app.name not in daemonsets:
            ok = False
            parts.append(f"{app.name}: 0/{workers} (no DaemonSet)")
            continue
        mine = scheduling.pods_of(pods, "DaemonSet", app.name)
        good = [p for p in mine if scheduling.is_running(p) and scheduling.is_ready(p)]
        text = f"{app.name}: {len(good)}/{workers} Running and Ready"
        bad = [p for p in mine if p not in good]
        if bad:
            text += (
                " ("
                + ", ".join(f"{name_of(p)} {_pod_state(p)}" for p in bad[:3])
                + (f", {len(bad) - 3} more" if len(bad) > 3 else "")
                + ")"
            )
        if len(good) < workers:
            ok = False
        parts.append(text)
    return ScoredCheck(2, check_name(2, cfg, workers), ok, "; ".join(parts))


def check_host_network(cfg: Config, daemonsets: Mapping[str, Obj], deployments: Mapping[str, Obj]) -> ScoredCheck:
    """ScoredCheck 3: every app's DaemonSet pod template has hostNetwork on."""
    parts, ok = [], True
    for app in cfg.apps:
        ds = daemonsets.get(app.name)
        if ds is None:
            ok = False
            dep = deployments.get(app.name)
            extra = f"; the Deployment has hostNetwork {_on(scheduling.host_network(dep))}" if dep is not None else ""
            parts.append(f"{app.name}: no DaemonSet{extra}")
        elif scheduling.host_network(ds):
            parts.append(f"{app.name}: hostNetwork on")
        else:
            ok = False
            parts.append(f"{app.name}: hostNetwork off")
    return ScoredCheck(3, check_name(3, cfg, workers=0), ok, "; ".join(parts))


def check_ingress_controller(
    cfg: Config, daemonset: Obj | None, deployment: Obj | None, pods: Sequence[Obj], workers: int
) -> ScoredCheck:
    """ScoredCheck 4: ingress-nginx runs as a hostNetwork DaemonSet with at least N Running pods."""
    ic = cfg.ingress
    name = check_name(4, cfg, workers)
    if daemonset is None:
        what = "a Deployment, not a DaemonSet" if deployment is not None else "not found"
        return ScoredCheck(4, name, False, f"{ic.namespace}/{ic.controller}: {what}")
    running = [p for p in scheduling.pods_of(pods, "DaemonSet", ic.controller) if scheduling.is_running(p)]
    hn = scheduling.host_network(daemonset)
    ok = hn and len(running) >= workers
    return ScoredCheck(4, name, ok, f"DaemonSet found; hostNetwork {_on(hn)}; {len(running)}/{workers} pods Running")


def check_services(cfg: Config, services: Mapping[str, Obj]) -> ScoredCheck:
    """ScoredCheck 5: every app's Service is NodePort on its configured node port."""
    parts, ok = [], True
    for app in cfg.apps:
        svc = services.get(app.name)
        if svc is None:
            ok = False
            parts.append(f"{app.name}: no Service")
            continue
        kind = spec_of(svc).get("type", "ClusterIP")
        port = next((p for p in spec_of(svc).get("ports") or [] if p.get("port") == app.service_port), None)
        node_port = port.get("nodePort") if port else None
        if kind == "NodePort" and node_port == app.node_port:
            parts.append(f"{app.name}: NodePort {app.service_port}→{node_port}")
        else:
            ok = False
            found = f"{kind}" + (f", nodePort {node_port}" if node_port else "")
            if port is None:
                found += f", no port {app.service_port}"
            parts.append(f"{app.name}: {found} (expected NodePort {app.node_port})")
    return ScoredCheck(5, check_name(5, cfg, 0), ok, "; ".join(parts))


def check_ingresses(cfg: Config, ingresses: Mapping[str, Obj], serving: ServingFacts) -> ScoredCheck:
    """ScoredCheck 6: every route's Ingress sends its host to the app's Service, and ingress-nginx would serve it.

    Served means what ingress-nginx itself decides (:func:`keybuzz_fix.cluster.ingress.serving_problems`):
    the Ingress is of the controller's class, no older Ingress of that class holds its host and path
    in any namespace, its Service and port exist, and so do the TLS Secrets it names.
    """
    parts, ok = [], True
    for route in cfg.ingress.routes:
        ing = ingresses.get(route.name)
        if ing is None:
            ok = False
            parts.append(f"{route.name}: not found")
            continue
        backends = route_backends(ing)
        wanted = (route.host, route.service, route.port)
        problems = serving_problems(ing, serving)
        if wanted not in backends:
            ok = False
            found = ", ".join(f"{h} → {s}:{p}" for h, s, p in backends) or "no rules"
            parts.append(f"{route.name}: {found} (expected {route.host} → {route.service}:{route.port})")
        elif problems:
            ok = False
            parts.append(
                f"{route.name}: {route.host} → {route.service}:{route.port} not served: "
                + "; ".join(p.describe() for p in problems)
            )
        else:
            parts.append(f"{route.name}: {route.host} → {route.service}:{route.port}, served")
    return ScoredCheck(6, check_name(6, cfg, 0), ok, "; ".join(parts))


def check_urls(cfg: Config, answers: Sequence[UrlAnswer]) -> ScoredCheck:
    """ScoredCheck 7: every URL answers HTTP 200, to every request of its round (each on its own connection)."""
    ok = bool(answers) and all(a.ok for a in answers)
    detail = "; ".join(f"{a.url}: {a.describe()}" for a in answers) or "no URLs configured"
    return ScoredCheck(7, check_name(7, cfg, 0), ok, detail)


def check_paths(
    cfg: Config, workers: Sequence[str], seen: Sequence[Paths], failed: Mapping[str, str], ports: Sequence[int]
) -> ScoredCheck:
    """ScoredCheck 8: from every worker, every other worker's ingress and app host ports open (over SSH).

    These are the connections the traffic makes between workers: kube-proxy forwards a NodePort
    connection to the ingress controller on any worker, and ingress-nginx proxies to the app on any
    worker. ``seen`` holds what each worker saw; ``failed`` the workers that could not be asked, and
    why. A path not tested (no tool on the worker) is no pass.
    """
    name = check_name(8, cfg, 0, ports)
    if len(workers) < 2:
        return ScoredCheck(8, name, True, "one worker: no path between workers")
    if not ports:
        return ScoredCheck(8, name, False, "no ingress or app host port to check (see the UFW plan's notes)")
    bad: dict[tuple[int, str, str], list[tuple[str, str]]] = {}
    per_port: dict[int, int] = {}
    for paths in seen:
        for target, outcome, _detail in paths.outcomes:
            per_port[target.port] = per_port.get(target.port, 0) + 1
            if outcome is not Reach.OPEN:
                bad.setdefault((target.port, target.what, outcome.value), []).append((paths.source, target.host))
    total = sum(per_port.values())
    parts = [
        f"{port} ({what}) {outcome} on {len(pairs)} of {per_port[port]} paths: {_pairs(pairs, workers)}"
        for (port, what, outcome), pairs in sorted(bad.items())
    ]
    parts += [f"cannot check from {host}: {why}" for host, why in sorted(failed.items())]
    if not parts:
        return ScoredCheck(8, name, True, f"{total}/{total} paths open, from every worker to every other")
    failing = sum(len(p) for p in bad.values())
    head = f"{failing}/{total} paths fail" if total else "nothing checked"
    return ScoredCheck(8, name, False, f"{head}: " + "; ".join(parts))


def _pairs(pairs: Sequence[tuple[str, str]], workers: Sequence[str], most: int = 8) -> str:
    """Name failing (from, to) worker pairs briefly: a worker every other one fails to reach is named once."""
    if len(set(pairs)) == len(workers) * (len(workers) - 1):
        return "between every pair of workers"
    shown: list[str] = []
    for to in sorted({t for _, t in pairs}):
        sources = sorted(f for f, t in pairs if t == to)
        if len(sources) == len(workers) - 1:
            shown.append(f"to {to} from every other worker")
        else:
            shown += [f"{f} → {to}" for f in sources]
    more = f", … ({len(shown) - most} more)" if len(shown) > most else ""
    return ", ".join(shown[:most]) + more


def check_name(number: int, cfg: Config, workers: int, host_ports: Sequence[int] = ()) -> str:
    """Return the title of check ``number`` (1–8), as the scorecard shows it."""
    ic = cfg.ingress
    ports = " / ".join(str(a.node_port) for a in cfg.apps)
    names = {
        1: f"DaemonSets {_names(cfg)} exist",
        2: f"Each DaemonSet has ≥ {workers} Running and Ready pods (N = workers)",
        3: "Both pod templates have hostNetwork on" if len(cfg.apps) == 2 else "Pod templates have hostNetwork on",
        4: f"ingress-nginx {ic.namespace}/{ic.controller}: DaemonSet, hostNetwork, ≥ {workers} Running pods",
        5: f"Services {_names(cfg)} are NodePort ({ports})",
        6: f"Ingresses {' and '.join(r.name for r in ic.routes)} exist and point at the Services",
        7: f"{'Both URLs answer' if len(cfg.validate.urls) == 2 else 'URLs answer'} HTTP 200 to every request",
        8: "Ingress and app host ports open between workers"
        + (f" ({', '.join(map(str, host_ports))})" if host_ports else ""),
    }
    return names[number]


def unreadable(number: int, cfg: Config, workers: int, error: str) -> ScoredCheck:
    """Return a failed check whose facts could not be read, the error as its evidence."""
    return ScoredCheck(number, check_name(number, cfg, workers), False, error)


def _names(cfg: Config) -> str:
    names = [a.name for a in cfg.apps]
    return " and ".join(names) if len(names) <= 2 else ", ".join(names[:-1]) + " and " + names[-1]


def _on(value: bool) -> str:
    return "on" if value else "off"


def _pod_state(pod: Obj) -> str:
    p = scheduling.phase(pod)
    return p if p != "Running" else "not Ready"


def ufw_row(outcome: HostOutcome, name: str, wanted: int) -> Row:
    """Return the ``--extended`` row of one worker's UFW plan: pass when every wanted port is open.

    The plan judged each port with the verdict model (first match per family, limit is not open,
    the default policy): a rule to add is a port not open yet, a blocked one names what keeps it out.
    """
    missing = [a.rule.describe() for a in outcome.actions if a.kind is ActionKind.ADD and a.rule is not None]
    blocked = [a.reason for a in outcome.actions if a.kind is ActionKind.BLOCKED]
    if not missing and not blocked:
        return Row(outcome.host.hostname, name, True, f"{wanted}/{wanted} wanted ports open")
    parts = ([f"missing: {', '.join(missing)}"] if missing else []) + blocked
    return Row(outcome.host.hostname, name, False, "; ".join(parts))
