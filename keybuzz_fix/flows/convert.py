"""The imperative shell of ``convert``: observe, plan, back up, apply, wait, switch, delete, report.

1. Read everything (through :mod:`keybuzz_fix.cluster.client`) and compute the plan (pure). Refusals stop
   here; ``--dry-run`` prints the plan and sends every write as a server-side dry run.
2. Check the permissions every write needs, ask once, write the backup (no backup, no change).
3. Server-side apply the DaemonSets and wait, by watching, until every scheduled pod is ready.
   Too slow: stop, delete nothing, report the stuck pods and their events.
4. Switch the Services, delete the HPAs, then the Deployments (uid preconditions).
Each step is audited. An interrupted run (Ctrl-C, an API error) says what it did and converges
when re-run.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from keybuzz_fix import storage as state
from keybuzz_fix.cluster import backup
from keybuzz_fix.cluster.changes import Change, RunResult, Verb
from keybuzz_fix.cluster.convert import Observed, Plan, observed_from_objects, plan_convert
from keybuzz_fix.cluster.objects import meta, parse_objects, yaml_stream
from keybuzz_fix.cluster.rollout import Stuck, wait_ready
from keybuzz_fix.errors import ExitCode, Forbidden, InputError, Interrupted, KeybuzzFixError, PlanRefused, read_input
from keybuzz_fix.flows.firewall import confirm
from keybuzz_fix.report import hosts as report

if TYPE_CHECKING:
    from rich.console import Console

    from keybuzz_fix.cluster.client import Kube
    from keybuzz_fix.config import Config

COMMAND = "convert"
DEFAULT_TIMEOUT = 300.0


def observe(kube: Kube, cfg: Config) -> Observed:
    """Read what the plan needs: workloads and Services everywhere (for collisions), HPAs, nodes."""
    return Observed(
        namespace=cfg.namespace,
        deployments=kube.list("Deployment"),
        daemonsets=kube.list("DaemonSet"),
        statefulsets=kube.list("StatefulSet"),
        services=kube.list("Service"),
        hpas=kube.list("HorizontalPodAutoscaler", cfg.namespace),
        nodes=kube.list("Node"),
        service_cidr=cfg.overlay.service_cidr,
    )


def permissions(changes: list[Change], *, wait_kind: str | None) -> list[tuple[str, str]]:
    """Return the (verb, kind) pairs the changes need, in a stable order."""
    needed: list[tuple[str, str]] = []
    for c in changes:
        verbs = {
            Verb.APPLY: ["patch"] + (["create"] if c.before is None else []),
            Verb.CREATE: ["create"],
            Verb.PATCH: ["patch"],
            Verb.DELETE: ["delete"],
        }.get(c.verb, [])
        needed += [(v, c.kind) for v in verbs]
    if wait_kind:
        needed += [("list", wait_kind), ("watch", wait_kind)]
    return list(dict.fromkeys(needed))


def preflight(kube: Kube, namespace: str, needed: list[tuple[str, str]]) -> None:
    """Ask the API whether every needed permission is granted; name all those missing at once."""
    from keybuzz_fix.cluster.client import RESOURCES

    missing = []
    for verb, kind in needed:
        if not kube.can_i(verb, kind, namespace):
            res = RESOURCES[kind]
            group = res.group_version.split("/")[0] if "/" in res.group_version else ""
            missing.append(f"{verb} {res.plural}{'.' + group if group else ''}")
    if missing:
        raise Forbidden(
            f"forbidden: missing permission(s) in namespace {namespace}: {', '.join(missing)}; "
            "nothing changed; grant them (see manifests/rbac.yaml)"
        )


def run_convert(
    console: Console,
    kube: Kube,
    cfg: Config,
    *,
    dry_run: bool = False,
    yes: bool = False,
    timeout: float = DEFAULT_TIMEOUT,
    force_conflicts: bool = False,
    keep_port: bool = False,
    show_values: bool = False,
    output: str = "text",
) -> RunResult:
    """Convert the configured Deployments into hostNetwork DaemonSets; return what was done.

    ``output`` is ``text``, ``json`` (a summary on stdout) or ``yaml`` (with ``dry_run``: the objects
    that would be applied). Errors are raised as the tool's own, after the summary is printed.
    """
    ns = cfg.namespace
    text = output == "text"
    result = RunResult(COMMAND, dry_run)
    start = time.monotonic()

    def mark(name: str) -> None:
        result.timings[name] = time.monotonic() - start

    try:
        plan = plan_convert(cfg, observe(kube, cfg), keep_port=keep_port)
        result.changes, result.refusals, result.warnings, result.notes = (
            plan.changes,
            plan.refusals,
            plan.warnings,
            plan.notes,
        )
        mark("planned")
        if plan.refusals:
            if text:
                _show_plan(console, f"{COMMAND}: refused", plan, show_values)
            raise result.fail(
                console, output, PlanRefused(f"convert refused: {'; '.join(plan.refusals)}; nothing changed")
            )
        pending = plan.pending
        if output == "yaml":
            print(yaml_stream(plan.applied_objects(show_values=show_values)), end="")
        elif text:
            title = f"{COMMAND}: plan for namespace {ns}" + (" (dry run)" if dry_run else "")
            _show_plan(console, title, plan, show_values)
        if not pending:
            if text:
                console.print(f"[green]{COMMAND}: nothing to do[/]: already converted")
            return result.finish(output)
        preflight(kube, ns, permissions(pending, wait_kind="DaemonSet"))
        if dry_run:
            result.send(kube, pending, dry_run=True, force=force_conflicts)
            if text:
                console.print(
                    f"[yellow]dry run[/]: the API server accepted all {len(pending)} change(s) "
                    "(server-side dry run); nothing changed"
                )
            return result.finish(output)
        confirm(console, f"Apply {len(pending)} change(s) in namespace {ns}?", yes=yes)
        result.backup = _write_backup(kube, plan, ns)
        mark("backed_up")
        if text:
            console.print(f"backup: {result.backup}")
        _convert(console, kube, plan, result, timeout=timeout, force=force_conflicts, text=text, mark=mark)
    except KeyboardInterrupt:
        raise result.fail(
            console,
            output,
            Interrupted(f"interrupted (Ctrl-C): {result.progress()}; re-run convert to finish: it converges"),
        ) from None
    except Stuck as e:
        if text:
            report.stuck_pods(console, e.pods)
        e.message += (
            f"; {result.progress()}; nothing was deleted; re-run convert once the pods run, "
            f"or roll back with: keybuzz-fix rollback --backup {result.backup}"
        )
        raise result.fail(console, output, e) from None
    except KeybuzzFixError as e:
        if result.error is not None:  # already reported
            raise
        if result.backup is not None:
            e.message += f"; {result.progress()}; re-run convert to finish (it converges)"
        raise result.fail(console, output, e) from None
    mark("done")
    if text:
        report.change_summary(console, f"{COMMAND}: result", plan.changes, result.outcome)
        _timing_line(console, result)
    return result.finish(output)


def _convert(
    console: Console,
    kube: Kube,
    plan: Plan,
    result: RunResult,
    *,
    timeout: float,
    force: bool,
    text: bool,
    mark: Callable[[str], None],
) -> None:
    result.send(kube, plan.daemonsets, force=force)
    mark("applied")
    names = [c.name for c in plan.daemonsets]
    if text:
        console.print(f"waiting for DaemonSet(s) {', '.join(names)} to be ready (timeout {timeout:g}s)…")
    wait_ready(kube, "DaemonSet", plan.daemonsets[0].namespace, names, timeout=timeout)
    mark("ready")
    result.send(kube, plan.services + plan.hpas + plan.deployments, force=force)


def _write_backup(kube: Kube, plan: Plan, namespace: str) -> Path:
    objects = plan.to_back_up
    server = kube.endpoint.server
    history = backup.history(COMMAND)
    previous = None
    if history:
        try:
            previous = backup.load(history[0])
        except InputError:
            previous = None
    live = [str(meta(c.before).get("uid")) for c in plan.deployments if c.before is not None]
    extra = backup.carried(previous, objects, live, server=server, namespace=namespace)
    path = backup.write(
        objects + extra,
        command=COMMAND,
        server=server,
        namespace=namespace,
        carried_from=previous.path if extra and previous else None,
    )
    state.audit(COMMAND, str(path), "backup", "ok", objects=len(objects) + len(extra))
    return path


def _show_plan(console: Console, title: str, plan: Plan, show_values: bool) -> None:
    report.change_plan(
        console,
        title,
        plan.changes,
        refusals=plan.refusals,
        warnings=plan.warnings,
        notes=plan.notes,
        show_values=show_values,
        shown_env=plan.shown_env,
    )


def _timing_line(console: Console, result: RunResult) -> None:
    t = result.timings
    if "ready" in t and "applied" in t:
        console.print(
            f"DaemonSets ready {t['ready']:.2f}s after start ({t['ready'] - t['applied']:.2f}s after "
            f"apply); done in {t.get('done', t['ready']):.2f}s"
        )


def run_offline(
    console: Console,
    path: Path,
    cfg: Config,
    *,
    keep_port: bool = False,
    show_values: bool = False,
    output: str = "text",
) -> ExitCode:
    """Plan from a state file (a ``kubectl get -o yaml`` List or a YAML stream); touch no cluster."""
    text = read_input(path)
    objects = parse_objects(text, str(path))
    if not objects:
        raise InputError(str(path), "holds no Kubernetes object")
    plan = plan_convert(cfg, observed_from_objects(objects, cfg), keep_port=keep_port)
    if plan.refusals:
        if output == "text":
            _show_plan(console, f"{COMMAND}: refused ({path})", plan, show_values)
        raise PlanRefused(f"{path}: convert refused: {'; '.join(plan.refusals)}")
    if output == "yaml":
        print(yaml_stream(plan.applied_objects(show_values=show_values)), end="")
    elif output == "json":
        report.print_json(plan.to_offline_json(show_values=show_values))
    else:
        _show_plan(console, f"{COMMAND}: plan from {path} (offline: no cluster touched)", plan, show_values)
    return ExitCode.OK
