"""The cluster commands on the test control plane: `convert` against the DaemonSet controller, and
`validate` against its slowest check.

convert: the cluster is reset and seeded before each run. A watch of this process records when
each DaemonSet appears and when it is ready (every scheduled pod updated and ready, status
observed for the current generation): the controller's own time is from the first DaemonSet's
creation to the last one's readiness. The tool's time is from its start to the moment it saw the
DaemonSets ready (its exit, minus what its own ``timings`` say came after ``ready``).

validate: five lab workers (their NodePort open), the lab load balancer in front of them, the
seeded control plane; the whole process against its slowest check (``checks[].seconds`` of
``-o json``: each check's time from the start of the scorecard until its facts were in).
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.timing import CommandFailed, measure
from benchmarks.ufw_bench import _base_env, keybuzz_fix_argv

DAEMONSETS = ("keybuzz-api", "keybuzz-front")
NAMESPACE = "keybuzz"


def has_command(name: str) -> bool:
    """Whether the installed keybuzz-fix has this command (the commands are written in parallel)."""
    proc = subprocess.run(
        [*keybuzz_fix_argv(), name, "--help"], capture_output=True, timeout=60, check=False, env=_base_env()
    )
    return proc.returncode == 0


@dataclass
class _DaemonSetWatch:
    """Created and ready times (time.monotonic) of the DaemonSets, seen by a watch in a thread."""

    api: Any
    created: dict[str, float] = field(default_factory=dict)
    ready: dict[str, float] = field(default_factory=dict)
    error: BaseException | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        from kubernetes import client

        apps = client.AppsV1Api(self.api)
        version = apps.list_namespaced_daemon_set(NAMESPACE).metadata.resource_version
        self._thread = threading.Thread(target=self._run, args=(apps, version), daemon=True)
        self._thread.start()

    def _run(self, apps: Any, version: str) -> None:
        from kubernetes import watch

        w = watch.Watch()
        try:
            while not self._stop.is_set():
                for event in w.stream(
                    apps.list_namespaced_daemon_set,
                    NAMESPACE,
                    resource_version=version,
                    timeout_seconds=5,
                    _request_timeout=10,
                ):
                    now = time.monotonic()
                    ds = event["raw_object"]
                    version = ds["metadata"]["resourceVersion"]
                    name = ds["metadata"]["name"]
                    if name not in DAEMONSETS or event["type"] == "DELETED":
                        continue
                    self.created.setdefault(name, now)
                    if name not in self.ready and _ready(ds):
                        self.ready[name] = now
                    if self._stop.is_set():
                        break
        except Exception as e:  # noqa: BLE001 - reported by the caller
            self.error = e
        finally:
            w.stop()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=15)

    def controller_seconds(self) -> float:
        if set(self.ready) != set(DAEMONSETS) or set(self.created) != set(DAEMONSETS):
            raise CommandFailed(
                f"the watch saw created {sorted(self.created)}, ready {sorted(self.ready)}"
                + (f" ({self.error})" if self.error else "")
            )
        return max(self.ready.values()) - min(self.created.values())


def _ready(ds: dict[str, Any]) -> bool:
    status, meta = ds.get("status") or {}, ds["metadata"]
    desired = status.get("desiredNumberScheduled", 0)
    return (
        desired > 0
        and status.get("observedGeneration", 0) >= meta.get("generation", 1)
        and status.get("numberReady", 0) == desired
        and status.get("updatedNumberScheduled", 0) == desired
    )


def convert_runs(
    api: Any, kubeconfig: Path, runs: int, workdir: Path, reseed: Callable[[], None], log: Callable[[str], None] = print
) -> list[dict[str, float]]:
    """Reset + seed, then time `convert --yes` against the controller, ``runs`` times."""
    results = []
    for run in range(runs):
        reseed()
        time.sleep(1.0)
        watch = _DaemonSetWatch(api)
        watch.start()
        out = workdir / f"convert-{run}.json"
        env = {**_base_env(), "KEYBUZZ_FIX_STATE_DIR": str(workdir / "state")}
        try:
            sample = measure(
                [*keybuzz_fix_argv(), "convert", "--kubeconfig", str(kubeconfig), "--yes", "-o", "json"],
                env=env,
                output=out,
            )
            deadline = time.monotonic() + 30
            while set(watch.ready) != set(DAEMONSETS) and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            watch.stop()
        data = json.loads(out.read_text())
        timings = data.get("timings", {})
        if "ready" not in timings or "done" not in timings:
            raise CommandFailed(f"convert reported no ready/done timings: {timings}")
        tool_ready = (sample.end - (timings["done"] - timings["ready"])) - sample.start
        controller = watch.controller_seconds()
        r = {
            "wall": sample.wall,
            "cpu": sample.cpu,
            "tool_to_ready": tool_ready,
            "controller": controller,
            "overhead": tool_ready - controller,
            "in_tool_ready": timings["ready"],
            "in_tool_applied": timings.get("applied", 0.0),
            "first_ds_created": min(watch.created.values()) - sample.start,
        }
        results.append(r)
        log(
            f"  convert run {run + 1}/{runs}: start→ready {tool_ready:.2f}s, controller {controller:.2f}s, "
            f"overhead {r['overhead']:.2f}s, exit {sample.wall:.2f}s"
        )
    return results


def validate_runs(
    argv_tail: list[str], runs: int, workdir: Path, log: Callable[[str], None] = print, label: str = ""
) -> list[dict[str, float]]:
    """Time `validate -o json` ``runs`` times; compare with its slowest check."""
    results = []
    for run in range(runs):
        out = workdir / f"validate{label.replace(' ', '')}-{run}.json"
        env = {**_base_env(), "KEYBUZZ_FIX_STATE_DIR": str(workdir / "state")}
        sample = measure([*keybuzz_fix_argv(), "validate", *argv_tail, "-o", "json"], env=env, output=out, check=False)
        if sample.rc not in (0, 1):
            raise CommandFailed(f"validate exited {sample.rc}: {out.read_text()[-1500:]}")
        card = json.loads(out.read_text())
        slowest = max(c["seconds"] for c in card["checks"])
        r = {
            "wall": sample.wall,
            "cpu": sample.cpu,
            "in_tool": card["seconds"],
            "slowest_check": slowest,
            "passed": card["passed"],
            "slowest_name": max(card["checks"], key=lambda c: c["seconds"])["name"],
        }
        results.append(r)
        log(
            f"  validate{label} run {run + 1}/{runs}: process {sample.wall:.2f}s, scorecard {card['seconds']:.2f}s, "
            f"slowest check {slowest:.2f}s ({card['passed']}/{card['total']})"
        )
    return results


def run(runs: int, workdir: Path, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Start the control plane (and, for validate, the lab), measure what exists, stop everything."""
    from kubernetes import config as kconfig

    from tests.cluster.controlplane import ControlPlane, build_binaries
    from tests.cluster.reset import reset_cluster
    from tests.cluster.seed import DEFAULT_MASTERS, DEFAULT_WORKERS, SEEDED_NAMESPACES, seed_keybuzz

    found = {"convert": has_command("convert"), "validate": has_command("validate")}
    out: dict[str, Any] = {"commands": found}
    if not any(found.values()):
        return out
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with ControlPlane(build_binaries()) as cp:
        api = kconfig.new_client_from_config(config_file=str(cp.kubeconfig))
        names = [n for n, _ in [*DEFAULT_MASTERS, *DEFAULT_WORKERS]]

        def reseed() -> None:
            reset_cluster(api, keep_namespaces=SEEDED_NAMESPACES, keep_nodes=names)
            seed_keybuzz(api)

        try:
            seed_keybuzz(api)
            log(f"  control plane up and seeded in {time.monotonic() - started:.1f}s")
            if found["convert"]:
                out["convert"] = convert_runs(api, cp.kubeconfig, runs, workdir, reseed, log)
            if found["validate"]:
                out["validate"] = _validate_on_lab(cp.kubeconfig, runs, workdir, log)
        finally:
            api.close()
    out["seconds"] = time.monotonic() - started
    return out


def _validate_on_lab(kubeconfig: Path, runs: int, workdir: Path, log: Callable[[str], None]) -> dict[str, Any]:
    from tests.cluster.seed import DEFAULT_WORKERS
    from tests.lab.hosts import INGRESS_PORT, SUBNET, HostSpec, Lab
    from tests.lab.loadbalancer import LoadBalancer

    workers = [name for name, _ in DEFAULT_WORKERS]
    base = int(DEFAULT_WORKERS[0][1].rsplit(".", 1)[1])  # the seeded Nodes' addresses
    with (
        Lab(workers, base_ip=base) as lab,
        Lab([HostSpec("lb-01", ufw_active=False, http_listener=False)], base_ip=40) as lb_lab,
        LoadBalancer(lb_lab.hosts[0], [h.ip for h in lab.hosts], workdir / "lb") as lb,
    ):
        for h in lab.hosts:
            h.run(f"ufw allow from {SUBNET} to any port {INGRESS_PORT} proto tcp")
        servers = lab.servers_tsv(workdir / "servers.tsv")
        cfg = workdir / "lab.yaml"
        cfg.write_text(f"firewall:\n  source: {SUBNET}\n  ports:\n    - {{port: {INGRESS_PORT}, proto: tcp}}\n")
        tail = [
            str(servers),
            "--kubeconfig",
            str(kubeconfig),
            "--config",
            str(cfg),
            *lb.resolve_args(),
            "--ca-file",
            str(lb.ca_file),
            "--identity",
            str(lab.identity_file),
            "--known-hosts",
            str(lab.known_hosts_file),
        ]
        # Not --extended: its per-worker rows carry no time of their own to compare with.
        return {"plain": validate_runs(tail, runs, workdir, log)}
