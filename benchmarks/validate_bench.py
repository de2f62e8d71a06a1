"""How long `validate` takes compared with its slowest check: the checks are meant to run at once.

    python3 -m benchmarks.validate_bench [--runs N] [--out RESULT.json]

Builds the test control plane (seeded like the KeyBuzz cluster), five lab workers and the nginx
load balancer, then, in each state (UFW drops the NodePort: the URLs get 504 after the load
balancer's upstream timeout; NodePort open: 200), runs the scorecard N times with and without
``--extended``. For every run it records the total wall time and each check alone (its own facts
fetched by themselves, nothing else running, on a new API connection as a CLI run would), and
reports total / slowest-alone and the time a one-check-after-the-other scorecard would take (the
sum). Run as root; the lab waits for the
machine-wide lab lock like the tests.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from keybuzz_fix import config
from keybuzz_fix.checks import http as probe
from keybuzz_fix.cluster import client as kube
from keybuzz_fix.cluster.connect import from_kubeconfig
from keybuzz_fix.cluster.objects import by_name
from keybuzz_fix.flows import validate as val
from keybuzz_fix.hosts.sshoptions import SshOptions
from keybuzz_fix.inventory import Role, read_inventory, select
from tests.cluster.controlplane import ControlPlane, build_binaries
from tests.cluster.seed import seed_keybuzz
from tests.lab.hosts import INGRESS_PORT, SUBNET, HostSpec, Lab
from tests.lab.loadbalancer import LoadBalancer

WORKERS = [f"k8s-worker-0{i}" for i in range(1, 6)]


def alone(k: kube.Kube, cfg: config.Config, http: probe.HttpOptions) -> dict[int, Callable[[], Any]]:
    """Each check's facts, fetched by themselves (concurrently among themselves, as validate does)."""
    ns, ic = cfg.namespace, cfg.ingress
    ctx = probe.tls_context(http)

    def both(*reads: Callable[[], Any]) -> Callable[[], Any]:
        def run() -> Any:
            with ThreadPoolExecutor(len(reads)) as pool:
                return [f.result() for f in [pool.submit(r) for r in reads]]

        return run

    return {
        1: both(lambda: k.list("DaemonSet", ns), lambda: k.list("Deployment", ns)),
        2: both(lambda: k.list("DaemonSet", ns), lambda: k.list("Pod", ns)),
        3: both(lambda: k.list("DaemonSet", ns), lambda: k.list("Deployment", ns)),
        4: both(
            lambda: k.get("DaemonSet", ic.controller, ic.namespace),
            lambda: k.get("Deployment", ic.controller, ic.namespace),
            lambda: k.list("Pod", ic.namespace),
        ),
        5: lambda: by_name(k.list("Service", ns)),
        6: lambda: by_name(k.list("Ingress", ns)),
        7: both(*[lambda u=u: probe.http_get(u, http, ctx) for u in cfg.validate.urls]),
    }


def one_state(
    name: str,
    connect: Callable[[], kube.Kube],
    cfg: config.Config,
    workers: list,
    http: probe.HttpOptions,
    ext: val.ExtendedOptions,
    runs: int,
) -> dict[str, Any]:
    """Measure one state of the lab; every run and every check alone gets a new API connection, as a CLI run."""
    out: dict[str, Any] = {}
    for extended in (False, True):
        totals, slowest, sums, ratios = [], [], [], []
        for _ in range(runs):
            k = connect()
            start = time.monotonic()
            card = val.score_cluster(k, cfg, workers, http=http, extended=ext if extended else None)
            total = time.monotonic() - start
            singles = {}
            for number in range(1, 8):
                fetch = alone(connect(), cfg, http)[number]
                t = time.monotonic()
                fetch()
                singles[number] = time.monotonic() - t
            if extended:  # the per-worker rows, alone
                for i, task in enumerate(val.extended_tasks(cfg, workers, http, ext)):
                    t = time.monotonic()
                    task()
                    singles[100 + i] = time.monotonic() - t
            totals.append(total)
            slowest.append(max(singles.values()))
            sums.append(sum(singles.values()))
            ratios.append(total / max(singles.values()))
            passed = card.passed
        key = f"{name}{' --extended' if extended else ''}"
        out[key] = {
            "runs": runs,
            "passed": passed,
            "total_s": totals,
            "slowest_alone_s": slowest,
            "sequential_sum_s": sums,
            "ratio": ratios,
            "median_ratio": statistics.median(ratios),
            "max_ratio": max(ratios),
        }
        print(
            f"{key:32} total {statistics.median(totals):6.2f}s  slowest check alone "
            f"{statistics.median(slowest):6.2f}s  ratio median {statistics.median(ratios):.2f} "
            f"max {max(ratios):.2f}  one-after-the-other {statistics.median(sums):6.2f}s  ({passed}/7)"
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="kbf-validate-bench-"))
    results: dict[str, Any] = {}
    with ControlPlane(build_binaries()) as cp:
        from kubernetes import config as kconfig

        api = kconfig.new_client_from_config(config_file=str(cp.kubeconfig))
        seed_keybuzz(api)
        with (
            Lab(WORKERS, base_ip=11) as lab,
            Lab([HostSpec("lb-01", ufw_active=False, http_listener=False)], base_ip=40) as lb_lab,
            LoadBalancer(lb_lab.hosts[0], [h.ip for h in lab.hosts], work / "lb") as lb,
        ):
            servers = lab.servers_tsv(work / "servers.tsv")
            cfg_path = work / "lab.yaml"
            cfg_path.write_text(
                f"firewall:\n  source: {SUBNET}\n  ports:\n    - {{port: {INGRESS_PORT}, proto: tcp}}\n"
            )
            cfg = config.load_config(cfg_path)
            workers = select(read_inventory(servers), Role.WORKER)

            def connect() -> kube.Kube:
                return from_kubeconfig(cp.kubeconfig)

            resolve = probe.parse_resolve([a for a in lb.resolve_args() if a != "--resolve"])
            http = probe.HttpOptions(timeout=4, retries=1, resolve=resolve, ca_file=lb.ca_file)
            ext = val.ExtendedOptions(
                SshOptions(
                    known_hosts=lab.known_hosts_file, identity=lab.identity_file, connect_timeout=5, command_timeout=30
                )
            )
            results |= one_state("504 (NodePort dropped)", connect, cfg, workers, http, ext, args.runs)
            for h in lab.hosts:
                h.run(f"ufw allow from {SUBNET} to any port {INGRESS_PORT} proto tcp")
            results |= one_state("200 (NodePort open)", connect, cfg, workers, http, ext, args.runs)
        api.close()
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
