"""The imperative shell of the SSH-side commands (``ufw``, ``overlay``).

Plan on every host, show the plan, ask once, apply, report. The result fails when any host failed
or needs the operator, so a cron job or CI step notices. What ``ufw`` opens on the workers is read
from the cluster where it can be (:func:`worker_rules`): the ports the ingress traffic really
arrives on, not only the NodePorts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from keybuzz_fix.cluster.lock import one_at_a_time
from keybuzz_fix.cluster.objects import Obj
from keybuzz_fix.cluster.traffic import TrafficPorts, facts_from_objects, from_cluster, from_config
from keybuzz_fix.config import Config
from keybuzz_fix.errors import KeybuzzFixError
from keybuzz_fix.flows import Connections
from keybuzz_fix.hosts.ufw.apply import FirewallRun
from keybuzz_fix.hosts.ufw.run import FirewallResult, HostExtra, HostOutcome, Wanted
from keybuzz_fix.inventory import Host
from keybuzz_fix.report.hosts import FirewallView
from keybuzz_fix.report.output import Output
from keybuzz_fix.storage import write_retry

if TYPE_CHECKING:
    from rich.console import Console

    from keybuzz_fix.cluster.client import Kube


def read_traffic(kube: Kube, cfg: Config, planned: Sequence[Obj] = ()) -> TrafficPorts:
    """Read the ports the ingress traffic arrives on at a worker from the cluster (``planned``: convert's objects)."""
    ic = cfg.ingress
    facts = facts_from_objects(
        cfg,
        ingress_service=kube.get("Service", ic.service, ic.namespace),
        ingress_daemonset=kube.get("DaemonSet", ic.controller, ic.namespace),
        ingress_deployment=kube.get("Deployment", ic.controller, ic.namespace),
        daemonsets=kube.list("DaemonSet", cfg.namespace),
        services=kube.list("Service", cfg.namespace),
        planned=planned,
    )
    return from_cluster(cfg, facts)


def worker_rules(
    reach: Connections,
    cfg: Config,
    *,
    source: str | None = None,
    kube: Kube | None = None,
    planned: Sequence[Obj] = (),
) -> Wanted:
    """Return the rules ``ufw`` and ``all`` open on every worker, each with its purpose, from ``source``.

    The ports are read from the cluster (``kube``, or the command's cluster options). Where the
    operator named no cluster (no --kubeconfig, --context or --kubeconfig-from-master) and the
    default kubeconfig cannot be used, the configured ports are used and the plan says why; a
    cluster the operator named must be readable.
    """
    allowed_from = source or cfg.firewall.source
    options = reach.cluster
    if kube is not None:
        traffic = read_traffic(kube, cfg, planned)
    elif options is None:
        traffic = from_config(cfg, "no cluster to read")
    else:
        try:
            traffic = read_traffic(reach.kube(), cfg)
        except KeybuzzFixError as e:
            if any((options.kubeconfig, options.context, options.from_master)):
                raise  # the cluster the operator named must be readable
            traffic = from_config(cfg, f"the cluster could not be read ({e})")
    return traffic_rules(traffic, allowed_from)


def configured_rules(cfg: Config, why: str) -> Wanted:
    """Return the configured ports (``firewall.ports``) as the rules to open, noting ``why`` the cluster is not read."""
    return traffic_rules(from_config(cfg, why), cfg.firewall.source)


def traffic_rules(traffic: TrafficPorts, source: str) -> Wanted:
    """Return the rules that open the ``traffic`` ports from ``source``, each with its purpose."""
    return Wanted.of(
        [(p.port, p.proto, p.comment, p.purpose, p.source) for p in traffic.ports],
        source,
        "cluster" if traffic.from_cluster else "config",
        traffic.notes,
    )


def run_firewall(
    console: Console,
    reach: Connections,
    *,
    command: str,
    hosts: Sequence[Host],
    wanted: Wanted,
    enable: bool,
    dry_run: bool,
    yes: bool,
    output: Output,
    extra: HostExtra | None = None,
    insert_first: bool = False,
) -> FirewallResult:
    """Open the ``wanted`` rules on every host (plan, show, confirm, apply, read back); return how every host ended."""
    view = FirewallView(console, output)
    rules = wanted.ufw_rules
    run = FirewallRun(
        hosts=hosts,
        desired=lambda _h: rules,
        ssh=reach.ssh,
        command=command,
        enable=enable,
        insert_first=insert_first,
        concurrency=reach.concurrency,
        extra=extra,
    )
    try:
        view.wanted(wanted)
        planned = run.plan(view.progress())
        changing = [o for o in planned if o.changes]
        if dry_run or not changing:
            result = _result(run, planned, wanted, dry_run=dry_run)
            view.finish(
                result, f"{command}: plan (dry run, nothing changed)" if dry_run else f"{command}: nothing to do"
            )
            return result
        view.plans(planned)
        total = sum(len(o.changes) for o in changing)
        view.confirm(f"Apply {total} change(s) on {len(changing)} host(s)?", yes=yes)
        with one_at_a_time(command, hosts=[o.host for o in changing]):  # one run at a time changes a host
            result = _result(run, run.apply(planned, view.progress()), wanted, dry_run=False)
        view.finish(result, f"{command}: result")
        return result
    finally:
        run.close()


def _result(run: FirewallRun, outcomes: Sequence[HostOutcome], wanted: Wanted, *, dry_run: bool) -> FirewallResult:
    known_hosts = run.ssh.known_hosts or run.accepted.where
    result = FirewallResult(run.command, tuple(outcomes), dry_run, tuple(run.accepted.entries), known_hosts, wanted)
    if result.failed_hosts:  # as Ansible's retry files: the summary says how to re-run only these
        return replace(result, retry_file=write_retry(run.command, result.failed_hosts))
    return result
