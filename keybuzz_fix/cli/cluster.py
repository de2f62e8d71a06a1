"""The cluster-side commands that change the cluster: ``convert``, ``rollback`` and ``ingress``."""

import dataclasses
from pathlib import Path
from typing import Annotated

import typer

from keybuzz_fix.cli import inputs
from keybuzz_fix.cli import options as opt
from keybuzz_fix.cli.connections import connections, namespaced
from keybuzz_fix.cli.parse import seconds
from keybuzz_fix.errors import Outcome, UsageError
from keybuzz_fix.inventory import Role
from keybuzz_fix.report.output import Output, PlanOutput, can_ask


def convert(
    ctx: typer.Context,
    servers: Annotated[
        Path | None,
        typer.Argument(
            help="servers.tsv: each of its workers must get a pod of each DaemonSet (default: the cluster's "
            "worker Nodes).",
            show_default=False,
        ),
    ] = None,
    config: opt.ConfigOpt = None,
    from_file: opt.FromFileOpt = None,
    keep_port: opt.KeepPortOpt = False,
    allow_managed: opt.AllowManagedOpt = False,
    timeout: Annotated[
        float, typer.Option("--timeout", help="Seconds to wait for the DaemonSets to be ready.")
    ] = opt.READY_TIMEOUT,
    dry_run: opt.DryRunOpt = False,
    yes: opt.YesOpt = False,
    exit_code: opt.ExitCodeOpt = False,  # read by raw_main (the exit-code contract)
    force_conflicts: opt.ForceConflictsOpt = False,
    show_values: opt.ShowValuesOpt = False,
    output: opt.PlanOutputOpt = PlanOutput.TEXT,
    *,
    cluster: opt.ClusterArgs,
    env: opt.EnvOpt = "prod",
    ssh: opt.SshArgs,
) -> Outcome:
    """Turn the app Deployments into hostNetwork DaemonSets.

    keybuzz-api and keybuzz-front run as hostNetwork DaemonSets on every worker, their Services
    as NodePorts.

    Each Deployment's pod template is carried over unchanged except for hostNetwork: the app's port
    moves to its host port (8080 / 3000) everywhere the pod names it (every PORT entry, probes,
    hooks); self anti-affinity and spread constraints are dropped; workers only. Then the Services
    become NodePort 30080 / 30000 in place (clusterIP kept), and the HPAs and Deployments are
    deleted. Names and ports come from manifests/defaults.yaml or --config.

    Order: plan (refusing port collisions, ports written where they cannot move, constraints that
    leave out a worker, and objects another controller owns or reconciles unless --allow-managed),
    back up every object it changes (0600, path printed), apply the DaemonSets, wait until every
    pod is ready (--timeout; too slow: stop, delete nothing, show the stuck pods), switch the
    Services, delete the HPAs and Deployments. A second run is a no-op; an interrupted run
    converges when re-run. Undo with `keybuzz-fix rollback --latest`.

    Examples:

    
        keybuzz-fix convert --dry-run
        keybuzz-fix convert servers.tsv --kubeconfig ~/.kube/keybuzz.yaml --yes
        keybuzz-fix convert servers.tsv --kubeconfig-from-master -o json --yes
        kubectl get deploy,svc,hpa -n keybuzz -o yaml > state.yaml && keybuzz-fix convert --from-file state.yaml -o yaml
    """
    from keybuzz_fix.config import load_config

    cfg = load_config(config)
    workers = inputs.nodes(servers, Role.WORKER, env) if servers is not None else None
    if from_file is not None:
        if cluster.kubeconfig or cluster.kubeconfig_from_master or cluster.context:
            raise UsageError(
                "--from-file touches no cluster: drop --kubeconfig, --context and --kubeconfig-from-master"
            )
        from keybuzz_fix.flows.convert import run_offline

        if cluster.namespace:
            cfg = dataclasses.replace(cfg, namespace=cluster.namespace)

        return run_offline(
            opt.console_of(ctx),
            from_file,
            cfg,
            keep_port=keep_port,
            allow_managed=allow_managed,
            workers=workers,
            show_values=show_values,
            output=output,
        )
    if output is PlanOutput.YAML and not dry_run:
        raise UsageError("-o yaml prints the objects convert would apply: use it with --dry-run or --from-file")
    from keybuzz_fix.flows.convert import run_convert

    ready = seconds("--timeout", timeout)
    reach = connections(env, ssh, cluster=cluster, servers=servers)
    cfg = namespaced(cfg, config, reach)
    can_ask("convert", yes=yes, dry_run=dry_run)
    return run_convert(
        opt.console_of(ctx),
        reach,
        cfg,
        dry_run=dry_run,
        yes=yes,
        timeout=ready,
        force_conflicts=force_conflicts,
        keep_port=keep_port,
        allow_managed=allow_managed,
        workers=workers,
        show_values=show_values,
        output=output,
    )


def rollback(
    ctx: typer.Context,
    backup_file: opt.BackupOpt = None,
    latest: opt.LatestOpt = False,
    timeout: Annotated[
        float, typer.Option("--timeout", help="Seconds to wait for the Deployments to be ready.")
    ] = opt.READY_TIMEOUT,
    dry_run: opt.DryRunOpt = False,
    yes: opt.YesOpt = False,
    exit_code: opt.ExitCodeOpt = False,  # read by raw_main (the exit-code contract)
    output: opt.OutputOpt = Output.TEXT,
    force_cluster: Annotated[
        bool,
        typer.Option(
            "--force-cluster",
            help="Restore a backup taken from another cluster (its kube-system uid differs from this one's).",
            rich_help_panel=opt.SAFETY,
        ),
    ] = False,
    *,
    cluster: opt.ClusterArgs,
    env: opt.EnvOpt = "prod",
    ssh: opt.SshArgs,
) -> Outcome:
    """Undo convert from its backup.

    Deployments and HPAs back, Services restored, DaemonSets deleted.

    Recreates the Deployments and HPAs that are gone, waits (by watching) until the Deployments are
    ready, restores each Service's type and ports (clusterIP kept), then deletes the DaemonSets
    convert made. What it changes is backed up first. A second run is a no-op. A backup taken from
    another cluster than the one connected to is refused (--force-cluster).

    Examples:

    
        keybuzz-fix rollback --latest --dry-run
        keybuzz-fix rollback --backup ~/.local/state/keybuzz-fix/backups/convert-20250101T120000.000000Z.yaml --yes
    """
    from keybuzz_fix.cluster.backup import latest_backup, read_backup
    from keybuzz_fix.flows.rollback import run_rollback

    if (backup_file is None) == (not latest):
        raise UsageError("pass exactly one of --backup FILE and --latest")
    path = backup_file if backup_file is not None else latest_backup("convert")
    ready = seconds("--timeout", timeout)
    reach = connections(env, ssh, cluster=cluster)
    read_backup(path)  # a missing or malformed backup is named before anything else
    can_ask("rollback", yes=yes, dry_run=dry_run)
    return run_rollback(
        opt.console_of(ctx),
        reach,
        path,
        dry_run=dry_run,
        yes=yes,
        timeout=ready,
        output=output,
        force_cluster=force_cluster,
    )


def ingress(
    ctx: typer.Context,
    servers: Annotated[
        Path | None,
        typer.Argument(
            help="servers.tsv: each of its workers must run a controller pod (default: the cluster's worker Nodes).",
            show_default=False,
        ),
    ] = None,
    env: opt.EnvOpt = "prod",
    config: opt.ConfigOpt = None,
    dry_run: opt.DryRunOpt = False,
    yes: opt.YesOpt = False,
    exit_code: opt.ExitCodeOpt = False,  # read by raw_main (the exit-code contract)
    force_conflicts: opt.ForceConflictsOpt = False,
    output: opt.OutputOpt = Output.TEXT,
    *,
    cluster: opt.ClusterArgs,
    ssh: opt.SshArgs,
) -> Outcome:
    """Check ingress-nginx and apply the two Ingress routes.

    The routes are applied with server-side apply.

    ingress-nginx must run as a DaemonSet with hostNetwork on, a Running pod on every worker, and a
    Service with the HTTP and HTTPS NodePorts (31695 / 32720 by default): each mismatch is reported,
    never changed.

    The routes (platform.keybuzz.io → keybuzz-front:80, platform-api.keybuzz.io → keybuzz-api:80,
    class nginx, the proxy annotations) come from manifests/defaults.yaml or --config. They are
    applied as field manager keybuzz-fix: what other managers own (TLS blocks, cert-manager
    annotations) is kept; a field another manager owns is a conflict, reported; --force-conflicts
    takes it over. The diff shown is the API server's dry-run answer.

    Examples:

    
        keybuzz-fix ingress --dry-run
        keybuzz-fix ingress servers.tsv --kubeconfig ~/.kube/keybuzz.yaml --yes
        keybuzz-fix ingress servers.tsv -o json --yes --kubeconfig-from-master
    """
    from keybuzz_fix.config import load_config
    from keybuzz_fix.flows.ingress import run_ingress

    cfg = load_config(config)
    workers = inputs.nodes(servers, Role.WORKER, env) if servers is not None else None
    reach = connections(env, ssh, cluster=cluster, servers=servers)
    cfg = namespaced(cfg, config, reach)
    can_ask("ingress", yes=yes, dry_run=dry_run)
    return run_ingress(
        opt.console_of(ctx),
        reach,
        cfg,
        workers,
        dry_run=dry_run,
        yes=yes,
        force_conflicts=force_conflicts,
        output=output,
    )
