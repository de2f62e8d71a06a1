"""The ``validate`` step: gather every fact at once, then score it (:func:`score_cluster`), and show the scorecard.

All API reads, URL checks and worker checks start together in one thread pool; each check is
evaluated as soon as its own facts are in, so the whole run takes about as long as its slowest
check. A fact that cannot be read fails the checks that need it, with the error as evidence; it
never stops the others. A read that RBAC forbids is not a finding about the cluster: the run
then ends with the missing permissions instead of a score.

Check 8 and the ``--extended`` UFW rows look from the workers, over SSH: the ports the traffic
uses are read from the cluster (:mod:`keybuzz_fix.cluster.traffic`), and each worker tries every
other worker's ingress and app host ports, as kube-proxy and ingress-nginx connect to them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from keybuzz_fix.checks import scorecard as sc
from keybuzz_fix.checks.exchange import tcp_open
from keybuzz_fix.checks.http import HttpOptions, http_get, http_round, tls_context
from keybuzz_fix.checks.scorecard import Row, Scorecard, ScoredCheck
from keybuzz_fix.cluster.client import Kube
from keybuzz_fix.cluster.ingress import ServingFacts, controller_class, key_of, referenced_secrets
from keybuzz_fix.cluster.objects import by_name
from keybuzz_fix.cluster.traffic import Hop, TrafficPorts, facts_from_objects, from_cluster, from_config
from keybuzz_fix.config import Config
from keybuzz_fix.errors import Forbidden, Interrupted, KeybuzzFixError
from keybuzz_fix.flows import Connections
from keybuzz_fix.flows.firewall import traffic_rules
from keybuzz_fix.hints import hint
from keybuzz_fix.hosts.parallel import on_each_host
from keybuzz_fix.hosts.reach import Paths, Reach, reach_probe, targets_for
from keybuzz_fix.hosts.ssh import connect
from keybuzz_fix.hosts.sshoptions import SshOptions
from keybuzz_fix.hosts.ufw.apply import FirewallRun
from keybuzz_fix.inventory import Host
from keybuzz_fix.report.output import ScoreFormat
from keybuzz_fix.report.scorecard import show_scorecard

if TYPE_CHECKING:
    from rich.console import Console

_MAX_THREADS = 64
PATH_TIMEOUT = 3.0  # seconds for one worker-to-worker connection: on a private network, more is a failure
_SETTLE_PAUSE = 0.5


@dataclass(frozen=True)
class WorkerAccess:
    """How validate reaches the workers over SSH (check 8, and the ``--extended`` UFW rows)."""

    ssh: SshOptions
    concurrency: int = 16


class _Facts:
    """Futures of every fact, with the time each one finished."""

    def __init__(self, pool: ThreadPoolExecutor, start: float) -> None:
        self._pool = pool
        self._start = start
        self._futures: dict[str, Future[tuple[Any, float]]] = {}

    def add(self, key: str, read: Callable[[], Any]) -> None:
        def timed() -> tuple[Any, float]:
            try:
                value: Any = read()
            except KeybuzzFixError as e:
                value = e
            return value, time.monotonic() - self._start

        self._futures[key] = self._pool.submit(timed)

    def get(self, keys: Sequence[str]) -> tuple[dict[str, Any], float, KeybuzzFixError | None]:
        """Wait for ``keys``; return their values, when the last one finished, and the first error."""
        values, last, error = {}, 0.0, None
        for key in keys:
            value, finished = self._futures[key].result()
            last = max(last, finished)
            if isinstance(value, KeybuzzFixError) and error is None:
                error = value
            values[key] = value
        return values, last, error


def run_validate(
    console: Console,
    reach: Connections,
    cfg: Config,
    workers: Sequence[Host],
    *,
    threshold: int | None,
    strict: bool,
    extended: bool,
    output: ScoreFormat,
) -> Scorecard:
    """Connect, score the cluster (``extended``: and each worker), show the scorecard; return it."""
    http = reach.http or HttpOptions()
    access = WorkerAccess(reach.ssh, reach.concurrency)
    card = score_cluster(
        reach.kube(), cfg, workers, http=http, threshold=threshold, strict=strict, access=access, extended=extended
    )
    show_scorecard(
        console,
        card,
        output,
        note=hint("--insecure", "TLS not verified (--insecure)", "TLS not verified") if http.insecure else "",
    )
    return card


def score_cluster(
    kube: Kube,
    cfg: Config,
    workers: Sequence[Host],
    *,
    http: HttpOptions | None = None,
    threshold: int | None = None,
    strict: bool = False,
    access: WorkerAccess | None = None,
    extended: bool = False,
    settle: float = 0.0,
) -> Scorecard:
    """Run the eight checks (and the ``extended`` rows) concurrently; return the scorecard.

    N, the pods each DaemonSet needs, is ``len(workers)``; each URL gets 2 × N requests (at least
    2), each on its own connection, so that a load balancer spreads them over every worker;
    ``threshold`` defaults to the configuration's ``validate.threshold``. Without ``access`` (SSH to
    the workers), check 8 fails saying so. ``settle``: seconds during which the URL rounds and the
    paths between workers are tried again when they fail (what just changed may take a moment).
    """
    http = http or HttpOptions()
    if settle > http.settle:
        http = replace(http, settle=settle)
    ctx = tls_context(http) if any(u.startswith("https:") for u in cfg.validate.urls) else None
    n = len(workers)
    ns, ic = cfg.namespace, cfg.ingress
    start = time.monotonic()
    pool = ThreadPoolExecutor(max_workers=_MAX_THREADS, thread_name_prefix="check")
    facts = _Facts(pool, start)
    reads: dict[str, Callable[[], Any]] = {
        "daemonsets": lambda: by_name(kube.list("DaemonSet", ns)),
        "deployments": lambda: by_name(kube.list("Deployment", ns)),
        "pods": lambda: kube.list("Pod", ns),
        "services": lambda: by_name(kube.list("Service", ns)),
        "ingresses": lambda: by_name(kube.list("Ingress", ns)),
        "all_ingresses": lambda: kube.list("Ingress"),
        "ingress_classes": lambda: kube.list("IngressClass"),
        "tls_secrets": lambda: _tls_secrets(kube, facts),
        "ingress_ds": lambda: kube.get("DaemonSet", ic.controller, ic.namespace),
        "ingress_deploy": lambda: kube.get("Deployment", ic.controller, ic.namespace),
        "ingress_service": lambda: kube.get("Service", ic.service, ic.namespace),
        "ingress_pods": lambda: kube.list("Pod", ic.namespace),
        "traffic": lambda: _traffic(cfg, facts),
        "paths": lambda: _paths(workers, facts, access, http.settle),
    }
    url_keys = [f"url {u}" for u in cfg.validate.urls]
    for key, url in zip(url_keys, cfg.validate.urls, strict=True):
        reads[key] = lambda url=url: http_round(url, http, ctx, count=max(2, 2 * n))  # type: ignore[misc]
    checks: list[tuple[int, tuple[str, ...], Callable[[dict[str, Any]], ScoredCheck]]] = [
        (1, ("daemonsets", "deployments"), lambda f: sc.check_daemonsets(cfg, f["daemonsets"], f["deployments"])),
        (2, ("daemonsets", "pods"), lambda f: sc.check_pods(cfg, f["daemonsets"], f["pods"], n)),
        (3, ("daemonsets", "deployments"), lambda f: sc.check_host_network(cfg, f["daemonsets"], f["deployments"])),
        (
            4,
            ("ingress_ds", "ingress_deploy", "ingress_pods"),
            lambda f: sc.check_ingress_controller(cfg, f["ingress_ds"], f["ingress_deploy"], f["ingress_pods"], n),
        ),
        (5, ("services",), lambda f: sc.check_services(cfg, f["services"])),
        (
            6,
            (
                "ingresses",
                "all_ingresses",
                "ingress_classes",
                "services",
                "tls_secrets",
                "ingress_ds",
                "ingress_deploy",
            ),
            lambda f: sc.check_ingresses(cfg, f["ingresses"], _serving(f)),
        ),
        (7, tuple(url_keys), lambda f: sc.check_urls(cfg, [f[k] for k in url_keys])),
        (8, ("paths",), lambda f: sc.check_paths(cfg, [w.hostname for w in workers], *f["paths"])),
    ]
    try:
        for key, read in reads.items():
            facts.add(key, read)
        row_futures = [pool.submit(r) for r in (extended_tasks(cfg, workers, http, facts, access) if extended else [])]
        results = []
        denied: dict[str, Forbidden] = {}
        for number, keys, evaluate in checks:
            values, finished, error = facts.get(keys)
            denied.update((e.permission, e) for e in values.values() if isinstance(e, Forbidden))
            check = evaluate(values) if error is None else sc.unreadable(number, cfg, n, str(error))
            results.append(ScoredCheck(check.number, check.name, check.passed, check.detail, finished))
        extended_rows = tuple(row for f in row_futures for row in f.result())
    except KeyboardInterrupt:
        # The checks only read: the threads still waiting on a silent address are left behind
        # (the CLI ends the process without joining them), the operator is not kept waiting.
        pool.shutdown(wait=False, cancel_futures=True)
        raise Interrupted("interrupted: validate stopped before every check finished (nothing was changed)") from None
    except BaseException:
        pool.shutdown(wait=True)
        raise
    pool.shutdown(wait=True)
    if denied:  # a score over facts the identity may not read would blame the cluster for missing rights
        raise Forbidden(
            f"forbidden: validate cannot read what it scores: missing permission(s) "
            f"{', '.join(sorted(denied))}; nothing was scored; grant them (see manifests/rbac.yaml)"
        )
    return Scorecard(
        tuple(results),
        threshold if threshold is not None else cfg.validate.threshold,
        strict,
        n,
        extended_rows,
        time.monotonic() - start,
    )


def _tls_secrets(kube: Kube, facts: _Facts) -> frozenset[str]:
    """The TLS Secrets the routes' Ingresses name that exist (metadata only: their keys are never read)."""
    values, _, error = facts.get(["ingresses"])
    if error is not None:
        raise error
    named = referenced_secrets(list(values["ingresses"].values()))
    return frozenset(f"{ns}/{name}" for ns, name in named if kube.exists("Secret", name, ns))


def _serving(f: dict[str, Any]) -> ServingFacts:
    """What ingress-nginx decides by, from the facts check 6 waited for."""
    return ServingFacts(
        ingresses=tuple(f["all_ingresses"]),
        classes=tuple(f["ingress_classes"]),
        services={key_of(s): s for s in f["services"].values()},
        secrets=f["tls_secrets"],
        controller=controller_class(f["ingress_ds"] or f["ingress_deploy"]),
    )


def _traffic(cfg: Config, facts: _Facts) -> TrafficPorts:
    """The ports the traffic uses, from the objects the checks read (the configured ones if they could not be)."""
    keys = ("ingress_service", "ingress_ds", "ingress_deploy", "daemonsets", "services")
    values, _, error = facts.get(keys)
    if error is not None:
        return from_config(cfg, f"the cluster could not be read ({error})")
    return from_cluster(
        cfg,
        facts_from_objects(
            cfg,
            ingress_service=values["ingress_service"],
            ingress_daemonset=values["ingress_ds"],
            ingress_deployment=values["ingress_deploy"],
            daemonsets=list(values["daemonsets"].values()),
            services=list(values["services"].values()),
        ),
    )


def _host_ports(traffic: TrafficPorts) -> list[tuple[int, str]]:
    """The TCP ports one worker connects to on another: (port, what it is)."""
    return [
        (p.port, p.comment.removeprefix("keybuzz-fix: "))
        for p in traffic.ports
        if p.hop.between_workers and p.proto == "tcp"
    ]


def _paths(
    workers: Sequence[Host], facts: _Facts, access: WorkerAccess | None, settle: float
) -> tuple[list[Paths], dict[str, str], list[int]]:
    """From every worker (over SSH), try every other worker's ingress and app host ports at once.

    A try in which a path fails is repeated while ``settle`` seconds have not passed since the first.
    """
    ports = _host_ports(facts.get(["traffic"])[0]["traffic"])
    numbers = [p for p, _ in ports]
    if access is None:
        return [], {w.hostname: "no SSH access to the workers was given" for w in workers}, numbers
    if len(workers) < 2 or not ports:
        return [], {}, numbers

    def probe(worker: Host) -> Paths:
        targets = targets_for(worker, workers, ports)
        with connect(worker, access.ssh) as session:
            out = session.run(reach_probe(targets, PATH_TIMEOUT), check=False, timeout=PATH_TIMEOUT + 10)
        return Paths.parsed(worker.hostname, targets, out.stdout)

    started = time.monotonic()
    while True:
        attempts = on_each_host(workers, probe, concurrency=access.concurrency, label="worker paths")
        seen = [a.result for a in attempts if a.result is not None]
        failed = {a.host.hostname: a.error.problem for a in attempts if a.error is not None}
        all_open = not failed and all(o is Reach.OPEN for p in seen for _, o, _ in p.outcomes)
        if all_open or time.monotonic() - started >= settle:
            return seen, failed, numbers
        time.sleep(_SETTLE_PAUSE)


def extended_tasks(
    cfg: Config, workers: Sequence[Host], http: HttpOptions, facts: _Facts, access: WorkerAccess | None
) -> list[Callable[[], list[Row]]]:
    """Return one task per worker probe (NodePort, app host ports) and one for every worker's UFW rules."""
    tasks: list[Callable[[], list[Row]]] = []
    port = cfg.ingress.http_node_port
    quick = HttpOptions(timeout=http.timeout, retries=0)

    def app_rows(w: Host) -> list[Row]:
        traffic: TrafficPorts = facts.get(["traffic"])[0]["traffic"]
        apps = [(p.port, p.comment.removeprefix("keybuzz-fix: ")) for p in traffic.ports if p.hop is Hop.APP]
        return [_host_port_row(w, what, number, quick) for number, what in apps]

    for w in workers:
        tasks.append(lambda w=w: [_nodeport_row(w, port, http.timeout)])  # type: ignore[misc]
        tasks.append(lambda w=w: app_rows(w))  # type: ignore[misc]
    if access is not None:
        tasks.append(lambda: _ufw_rows(cfg, workers, facts.get(["traffic"])[0]["traffic"], access))
    return tasks


def _nodeport_row(worker: Host, port: int, timeout: float) -> Row:
    ok, detail = tcp_open(worker.private_ip, port, timeout)
    return Row(worker.hostname, f"NodePort {port} reachable from here", ok, detail)


def _host_port_row(worker: Host, what: str, port: int, http: HttpOptions) -> Row:
    host = f"[{worker.private_ip}]" if ":" in worker.private_ip else worker.private_ip
    answer = http_get(f"http://{host}:{port}/", http)
    name = f"host port {port} ({what}) answering"
    if answer.status is not None:
        return Row(worker.hostname, name, True, f"HTTP {answer.status} {answer.reason}")
    return Row(worker.hostname, name, False, answer.reason)


def _ufw_rows(cfg: Config, workers: Sequence[Host], traffic: TrafficPorts, access: WorkerAccess) -> list[Row]:
    rules = traffic_rules(traffic, cfg.firewall.source).ufw_rules
    run = FirewallRun(
        hosts=workers, desired=lambda _h: rules, ssh=access.ssh, command="validate", concurrency=access.concurrency
    )
    try:
        outcomes = run.plan()
    finally:
        run.close()
    name = "UFW rules present (over SSH)"
    return [
        sc.ufw_row(o, name, len(rules)) if o.error is None else Row(o.host.hostname, name, False, o.error.problem)
        for o in outcomes
    ]
