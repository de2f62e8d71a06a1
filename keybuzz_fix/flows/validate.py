"""The ``validate`` step: gather every fact at once, then score it.

All API reads, URL probes and ``--extended`` probes start together in one thread pool; each check
is evaluated as soon as its own facts are in, so the whole run takes about as long as its slowest
check. A fact that cannot be read fails the checks that need it, with the error as evidence; it
never stops the others. A read that RBAC forbids is not a finding about the cluster: the run
then ends with the missing permissions instead of a score.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from keybuzz_fix.checks import http as probe
from keybuzz_fix.checks import scorecard as sc
from keybuzz_fix.checks.http import HttpOptions
from keybuzz_fix.checks.scorecard import Check, Row, Scorecard
from keybuzz_fix.cluster import workloads as wl
from keybuzz_fix.config import Config
from keybuzz_fix.errors import Forbidden, Interrupted, KeybuzzFixError
from keybuzz_fix.hosts.ssh import SshOptions
from keybuzz_fix.hosts.ufw import rules as firewall
from keybuzz_fix.hosts.ufw.rules import ActionKind
from keybuzz_fix.inventory import Host

if TYPE_CHECKING:
    from keybuzz_fix.cluster.client import Kube
    from keybuzz_fix.hosts.ufw.apply import HostPlan

_MAX_THREADS = 64


@dataclass(frozen=True)
class ExtendedOptions:
    """What ``--extended`` needs: SSH to the workers for their UFW rules."""

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
    kube: Kube,
    cfg: Config,
    workers: Sequence[Host],
    *,
    http: HttpOptions | None = None,
    threshold: int | None = None,
    strict: bool = False,
    extended: ExtendedOptions | None = None,
) -> Scorecard:
    """Run the seven checks (and the ``extended`` rows) concurrently; return the scorecard.

    N, the pods each DaemonSet needs, is ``len(workers)``; ``threshold`` defaults to the
    configuration's ``validate.threshold``.
    """
    http = http or HttpOptions()
    ctx = probe.tls_context(http) if any(u.startswith("https:") for u in cfg.validate.urls) else None
    n = len(workers)
    ns, ic = cfg.namespace, cfg.ingress
    reads: dict[str, Callable[[], Any]] = {
        "daemonsets": lambda: wl.by_name(kube.list("DaemonSet", ns)),
        "deployments": lambda: wl.by_name(kube.list("Deployment", ns)),
        "pods": lambda: kube.list("Pod", ns),
        "services": lambda: wl.by_name(kube.list("Service", ns)),
        "ingresses": lambda: wl.by_name(kube.list("Ingress", ns)),
        "ingress_ds": lambda: kube.get("DaemonSet", ic.controller, ic.namespace),
        "ingress_deploy": lambda: kube.get("Deployment", ic.controller, ic.namespace),
        "ingress_pods": lambda: kube.list("Pod", ic.namespace),
    }
    url_keys = [f"url {u}" for u in cfg.validate.urls]
    for key, url in zip(url_keys, cfg.validate.urls, strict=True):
        reads[key] = lambda url=url: probe.http_get(url, http, ctx)  # type: ignore[misc]
    rows: list[Callable[[], list[Row]]] = []
    if extended is not None:
        rows = _extended(cfg, workers, http, extended)
    checks: list[tuple[int, tuple[str, ...], Callable[[dict[str, Any]], Check]]] = [
        (1, ("daemonsets", "deployments"), lambda f: sc.check_daemonsets(cfg, f["daemonsets"], f["deployments"])),
        (2, ("daemonsets", "pods"), lambda f: sc.check_pods(cfg, f["daemonsets"], f["pods"], n)),
        (3, ("daemonsets", "deployments"), lambda f: sc.check_host_network(cfg, f["daemonsets"], f["deployments"])),
        (
            4,
            ("ingress_ds", "ingress_deploy", "ingress_pods"),
            lambda f: sc.check_ingress_controller(cfg, f["ingress_ds"], f["ingress_deploy"], f["ingress_pods"], n),
        ),
        (5, ("services",), lambda f: sc.check_services(cfg, f["services"])),
        (6, ("ingresses",), lambda f: sc.check_ingresses(cfg, f["ingresses"])),
        (7, tuple(url_keys), lambda f: sc.check_urls(cfg, [f[k] for k in url_keys])),
    ]
    start = time.monotonic()
    pool = ThreadPoolExecutor(max_workers=min(_MAX_THREADS, len(reads) + len(rows)), thread_name_prefix="check")
    try:
        facts = _Facts(pool, start)
        for key, read in reads.items():
            facts.add(key, read)
        row_futures = [pool.submit(r) for r in rows]
        results = []
        denied: dict[str, Forbidden] = {}
        for number, keys, evaluate in checks:
            values, finished, error = facts.get(keys)
            denied.update((e.permission, e) for e in values.values() if isinstance(e, Forbidden))
            check = evaluate(values) if error is None else sc.unreadable(number, cfg, n, str(error))
            results.append(Check(check.number, check.name, check.passed, check.detail, finished))
        extended_rows = tuple(row for f in row_futures for row in f.result())
    except KeyboardInterrupt:
        pool.shutdown(wait=False, cancel_futures=True)
        raise Interrupted("interrupted: validate stopped before every check finished (nothing was changed)") from None
    finally:
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


def _extended(
    cfg: Config, workers: Sequence[Host], http: HttpOptions, options: ExtendedOptions
) -> list[Callable[[], list[Row]]]:
    """Return one task per worker probe (NodePort, host ports) and one for every worker's UFW rules."""
    tasks: list[Callable[[], list[Row]]] = []
    port = cfg.ingress.http_node_port
    quick = HttpOptions(timeout=http.timeout, retries=0)
    for w in workers:
        tasks.append(lambda w=w: [_nodeport_row(w, port, http.timeout)])  # type: ignore[misc]
        for app in cfg.apps:
            tasks.append(lambda w=w, app=app: [_host_port_row(w, app.name, app.host_port, quick)])  # type: ignore[misc]
    tasks.append(lambda: _ufw_rows(cfg, workers, options))
    return tasks


def _nodeport_row(worker: Host, port: int, timeout: float) -> Row:
    ok, detail = probe.tcp_open(worker.private_ip, port, timeout)
    return Row(worker.hostname, f"NodePort {port} reachable from here", ok, detail)


def _host_port_row(worker: Host, app: str, port: int, http: HttpOptions) -> Row:
    host = f"[{worker.private_ip}]" if ":" in worker.private_ip else worker.private_ip
    answer = probe.http_get(f"http://{host}:{port}/", http)
    name = f"host port {port} ({app}) answering"
    if answer.status is not None:
        return Row(worker.hostname, name, True, f"HTTP {answer.status} {answer.reason}")
    return Row(worker.hostname, name, False, answer.reason)


def _ufw_rows(cfg: Config, workers: Sequence[Host], options: ExtendedOptions) -> list[Row]:
    from keybuzz_fix.hosts.ufw.apply import FirewallRun

    rules = firewall.desired_rules([(r.port, r.proto, r.comment) for r in cfg.firewall.ports], cfg.firewall.source)
    run = FirewallRun(
        hosts=workers, desired=lambda _h: rules, ssh=options.ssh, command="validate", concurrency=options.concurrency
    )
    try:
        outcomes = run.plan(None)
    finally:
        run.close()
    name = "UFW rules present (over SSH)"
    rows = []
    for o in outcomes:
        if o.error is not None:
            rows.append(Row(o.host.hostname, name, False, str(getattr(o.error, "problem", o.error))))
        else:
            assert o.result is not None
            rows.append(ufw_row(o.result, name, len(rules)))
    return rows


def ufw_row(plan: HostPlan, name: str, wanted: int) -> Row:
    """Return the row for one worker's UFW plan: pass when nothing is missing or blocked."""
    missing = [a.rule.describe() for a in plan.actions if a.kind is ActionKind.ADD and a.rule is not None]
    blocked = [a.reason for a in plan.actions if a.kind is ActionKind.BLOCKED]
    if not missing and not blocked:
        return Row(plan.host.hostname, name, True, f"{wanted}/{wanted} rules present")
    parts = ([f"missing: {', '.join(missing)}"] if missing else []) + blocked
    return Row(plan.host.hostname, name, False, "; ".join(parts))
