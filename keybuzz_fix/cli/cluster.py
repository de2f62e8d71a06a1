"""The ``keybuzz-fix`` command line: thin Typer commands wiring the layers together.

Heavy modules (paramiko, the kubernetes client) are imported inside the commands that need them,
so ``keybuzz-fix --help`` stays fast. Errors are mapped to exit codes in :func:`main`, once.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from typer.core import TyperGroup

from keybuzz_fix import __version__
from keybuzz_fix.cli.options import (
    DEFAULT_KNOWN_HOSTS,
    SAFETY,
    AcceptNewOpt,
    ConcurrencyOpt,
    ConfigOpt,
    ContextOpt,
    DryRunOpt,
    EnableOpt,
    EnvOpt,
    ForceConflictsOpt,
    FromMasterOpt,
    IdentityOpt,
    KnownHostsOpt,
    KubeconfigOpt,
    Output,
    OutputOpt,
    PlanOutput,
    PlanOutputOpt,
    RoleOpt,
    SaveKubeconfigOpt,
    ServersArg,
    TimeoutOpt,
    UserOpt,
    YesOpt,
)
from keybuzz_fix.errors import ExitCode, KeybuzzFixError, UsageError
from keybuzz_fix.inventory import Role

if TYPE_CHECKING:
    from rich.console import Console

    from keybuzz_fix.checks.http import HttpOptions
    from keybuzz_fix.cluster.client import Kube
    from keybuzz_fix.hosts.ssh import SshOptions


class _Group(TyperGroup):
    """The root command group: the one place where errors become one line and an exit code."""

    def invoke(self, ctx: typer.Context) -> Any:  # type: ignore[override]
        debug = bool(ctx.params.get("debug"))
        try:
            return super().invoke(ctx)
        except KeybuzzFixError as e:
            if debug:
                raise
            _error(str(e))
            raise typer.Exit(int(e.exit_code)) from None
        except typer.TyperException as e:
            if debug or e.exit_code != 2:
                raise
            _error(e.format_message())
            raise typer.Exit(int(ExitCode.USAGE)) from None
        except (KeyboardInterrupt, typer.Abort):
            if debug:
                raise
            _error("interrupted (Ctrl-C)")
            raise typer.Exit(int(ExitCode.INTERRUPTED)) from None


app = typer.Typer(
    cls=_Group,
    name="keybuzz-fix",
    help="Repair a K3s cluster whose ClusterIP Services and ingress time out (504) because Flannel's VXLAN "
    "traffic does not pass: open the ingress NodePorts in UFW, run the apps as hostNetwork DaemonSets, "
    "apply the ingress routes, and score the result.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help: rich's help renderer would triple the start-up time of --help
    context_settings={"help_option_names": ["-h", "--help"]},
)


@dataclass(frozen=True)
class AppState:
    """What every command receives from the top-level options."""

    console: Console
    debug: bool


def _version(value: bool) -> None:
    if value:
        typer.echo(f"keybuzz-fix {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks of errors.")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    from rich.console import Console

    ctx.obj = AppState(console=Console(stderr=False, highlight=False), debug=debug)


def _state(ctx: typer.Context) -> AppState:
    assert isinstance(ctx.obj, AppState)
    return ctx.obj


def ssh_options(identity: Path | None, known_hosts: Path, accept_new: bool, timeout: float) -> SshOptions:
    """Build and check the SSH options of a command."""
    from keybuzz_fix.hosts.ssh import SshOptions

    timeout = _seconds("--timeout", timeout)
    if identity is not None and not identity.expanduser().is_file():
        raise UsageError(f"--identity {identity}: no such file")
    return SshOptions(
        known_hosts=known_hosts.expanduser(),
        identity=identity.expanduser() if identity else None,
        accept_new_host_keys=accept_new,
        connect_timeout=timeout,
        command_timeout=max(timeout, 30.0),
    )


def _check_concurrency(concurrency: int) -> int:
    if not 1 <= concurrency <= 512:
        raise UsageError(f"--concurrency must be between 1 and 512, got {concurrency}")
    return concurrency


@app.command()
def inventory(
    ctx: typer.Context,
    servers: ServersArg,
    role: RoleOpt = Role.WORKER,
    env: EnvOpt = "prod",
    output: OutputOpt = Output.TEXT,
) -> None:
    """List the K3s nodes selected from servers.tsv.

    Reads the file only: touches no network.

    Examples:

    \b
        keybuzz-fix inventory servers.tsv
        keybuzz-fix inventory servers.tsv --role all -o json
    """
    from keybuzz_fix import inventory as inv
    from keybuzz_fix.report import hosts as report

    hosts = inv.select(inv.load(servers), role, env)
    if output is Output.JSON:
        report.print_json([h.to_json() for h in hosts])
    else:
        report.inventory_table(_state(ctx).console, hosts, f"{len(hosts)} K3s {role.value} node(s), ENV={env}")


@app.command()
def ufw(
    ctx: typer.Context,
    servers: ServersArg,
    ports: Annotated[
        str | None,
        typer.Option(
            "--ports",
            help="Ports to open, e.g. 31695/tcp,32720/tcp (default: the ingress-nginx NodePorts from the config).",
            show_default=False,
        ),
    ] = None,
    source: Annotated[
        str | None,
        typer.Option(
            "--source",
            help="Only allow from this CIDR (default: the private network, 10.0.0.0/16); 'any' opens to everyone.",
            show_default=False,
        ),
    ] = None,
    enable: EnableOpt = False,
    env: EnvOpt = "prod",
    user: UserOpt = None,
    dry_run: DryRunOpt = False,
    yes: YesOpt = False,
    identity: IdentityOpt = None,
    known_hosts: KnownHostsOpt = DEFAULT_KNOWN_HOSTS,
    accept_new_host_keys: AcceptNewOpt = False,
    timeout: TimeoutOpt = 10.0,
    concurrency: ConcurrencyOpt = 16,
    output: OutputOpt = Output.TEXT,
    config: ConfigOpt = None,
) -> None:
    """Open the ingress NodePorts in UFW on every worker.

    The ingress-nginx NodePorts (31695/tcp, 32720/tcp), from the private network, so the load
    balancers reach them.

    Reads each worker's rules, shows the plan, asks once, applies and reads back.

    Rules already present are left alone; nothing is removed or reordered; UFW is only enabled
    with --enable, after an SSH allow rule.

    Examples:

    \b
        keybuzz-fix ufw servers.tsv --dry-run
        keybuzz-fix ufw servers.tsv --yes -o json
        keybuzz-fix ufw servers.tsv --ports 31695/tcp --source 10.0.0.0/16 --identity ~/.ssh/id_ed25519
    """
    from keybuzz_fix import config as cfg_mod
    from keybuzz_fix import inventory as inv
    from keybuzz_fix.flows.firewall import run_firewall
    from keybuzz_fix.hosts.ufw import rules as firewall

    cfg = cfg_mod.load(config)
    wanted_source = firewall.parse_source(source) if source is not None else cfg.firewall.source
    if ports is not None:
        triples = [(p, proto, f"keybuzz-fix: port {p}/{proto}") for p, proto in firewall.parse_ports(ports)]
    else:
        triples = [(r.port, r.proto, r.comment) for r in cfg.firewall.ports]
    rules = firewall.desired_rules(triples, wanted_source)
    hosts = inv.with_user(inv.select(inv.load(servers), inv.Role.WORKER, env), user)
    code = run_firewall(
        _state(ctx).console,
        command="ufw",
        hosts=hosts,
        desired=lambda _h: rules,
        ssh=ssh_options(identity, known_hosts, accept_new_host_keys, timeout),
        enable=enable,
        dry_run=dry_run,
        yes=yes,
        concurrency=_check_concurrency(concurrency),
        output=output,
    )
    raise typer.Exit(int(code))


# -- convert / rollback -------------------------------------------------------------------------


_READY_TIMEOUT = 300.0


def _cluster_for(
    kubeconfig: Path | None,
    context: str | None,
    from_master: Path | None,
    save: Path | None,
    env: str,
    user: str | None,
    identity: Path | None,
    known_hosts: Path,
    accept_new: bool,
) -> Kube:
    """Connect to the API server as the cluster options say (SSH only for --kubeconfig-from-master)."""
    from keybuzz_fix.cluster.connect import ClusterOptions, connect_cluster

    ssh = ssh_options(identity, known_hosts, accept_new, 10.0) if from_master is not None else None
    return connect_cluster(
        ClusterOptions(
            kubeconfig=kubeconfig, context=context, from_master=from_master, save_kubeconfig=save, env=env, user=user
        ),
        ssh,
    )


def _ready_timeout(timeout: float) -> float:
    return _seconds("--timeout", timeout)


def _seconds(option: str, value: float) -> float:
    """Check a duration option: a finite number of seconds, more than 0 (nan and inf would never time out)."""
    if not math.isfinite(value):
        raise UsageError(f"{option} must be a number of seconds, got {value:g}")
    if value <= 0:
        raise UsageError(f"{option} must be more than 0 seconds, got {value:g}")
    return value


@app.command()
def convert(
    ctx: typer.Context,
    config: ConfigOpt = None,
    from_file: Annotated[
        Path | None,
        typer.Option(
            "--from-file",
            metavar="STATE.yaml",
            help="Plan from this file "
            "(`kubectl get deploy,svc,hpa -n keybuzz -o yaml`, or a "
            "multi-document YAML) instead of a cluster; touches no cluster.",
            show_default=False,
        ),
    ] = None,
    keep_port: Annotated[
        bool,
        typer.Option(
            "--keep-port",
            help="Use each app's own container port as its host port "
            "instead of the configured one (for an app whose port cannot move).",
        ),
    ] = False,
    timeout: Annotated[
        float, typer.Option("--timeout", help="Seconds to wait for the DaemonSets to be ready.")
    ] = _READY_TIMEOUT,
    dry_run: DryRunOpt = False,
    yes: YesOpt = False,
    force_conflicts: ForceConflictsOpt = False,
    show_values: Annotated[
        bool,
        typer.Option(
            "--show-values",
            help="Show env values in the plan, diffs and -o yaml/json (masked by default: they may hold secrets).",
            rich_help_panel=SAFETY,
        ),
    ] = False,
    output: PlanOutputOpt = PlanOutput.TEXT,
    kubeconfig: KubeconfigOpt = None,
    context: ContextOpt = None,
    kubeconfig_from_master: FromMasterOpt = None,
    save_kubeconfig: SaveKubeconfigOpt = None,
    env: EnvOpt = "prod",
    user: UserOpt = None,
    identity: IdentityOpt = None,
    known_hosts: KnownHostsOpt = DEFAULT_KNOWN_HOSTS,
    accept_new_host_keys: AcceptNewOpt = False,
) -> None:
    """Turn the app Deployments into hostNetwork DaemonSets.

    keybuzz-api and keybuzz-front run as hostNetwork DaemonSets on every worker, their Services
    as NodePorts.

    Each Deployment's pod template is carried over unchanged except for hostNetwork: the app's port
    moves to its host port (8080 / 3000) with its PORT variable and probes; workers only. Then the
    Services become NodePort 30080 / 30000 in place (clusterIP kept), and the HPAs and Deployments
    are deleted. Names and ports come from manifests/defaults.yaml or --config.

    Order: plan (refusing port collisions and ports that cannot move), back up every object it
    changes (0600, path printed), apply the DaemonSets, wait until every pod is ready (--timeout;
    too slow: stop, delete nothing, show the stuck pods), switch the Services, delete the HPAs and
    Deployments. A second run is a no-op; an interrupted run converges when re-run. Undo with
    `keybuzz-fix rollback --latest`.

    Examples:

    \b
        keybuzz-fix convert --dry-run
        keybuzz-fix convert --kubeconfig ~/.kube/keybuzz.yaml --yes
        keybuzz-fix convert --kubeconfig-from-master servers.tsv -o json --yes
        kubectl get deploy,svc,hpa -n keybuzz -o yaml > state.yaml && keybuzz-fix convert --from-file state.yaml -o yaml
    """
    from keybuzz_fix import config as cfg_mod

    cfg = cfg_mod.load(config)
    console = _state(ctx).console
    if from_file is not None:
        if kubeconfig or kubeconfig_from_master or context:
            raise UsageError(
                "--from-file touches no cluster: drop --kubeconfig, --context and --kubeconfig-from-master"
            )
        from keybuzz_fix.flows.convert import run_offline

        raise typer.Exit(
            int(run_offline(console, from_file, cfg, keep_port=keep_port, show_values=show_values, output=output.value))
        )
    if output is PlanOutput.YAML and not dry_run:
        raise UsageError("-o yaml prints the objects convert would apply: use it with --dry-run or --from-file")
    from keybuzz_fix.flows.convert import run_convert

    timeout = _ready_timeout(timeout)
    kube = _cluster_for(
        kubeconfig,
        context,
        kubeconfig_from_master,
        save_kubeconfig,
        env,
        user,
        identity,
        known_hosts,
        accept_new_host_keys,
    )
    result = run_convert(
        console,
        kube,
        cfg,
        dry_run=dry_run,
        yes=yes,
        timeout=timeout,
        force_conflicts=force_conflicts,
        keep_port=keep_port,
        show_values=show_values,
        output=output.value,
    )
    raise typer.Exit(int(result.exit_code))


@app.command()
def rollback(
    ctx: typer.Context,
    backup_file: Annotated[
        Path | None, typer.Option("--backup", metavar="FILE", help="The convert backup to restore.", show_default=False)
    ] = None,
    latest: Annotated[bool, typer.Option("--latest", help="Restore the newest convert backup.")] = False,
    timeout: Annotated[
        float, typer.Option("--timeout", help="Seconds to wait for the Deployments to be ready.")
    ] = _READY_TIMEOUT,
    dry_run: DryRunOpt = False,
    yes: YesOpt = False,
    output: OutputOpt = Output.TEXT,
    kubeconfig: KubeconfigOpt = None,
    context: ContextOpt = None,
    kubeconfig_from_master: FromMasterOpt = None,
    save_kubeconfig: SaveKubeconfigOpt = None,
    env: EnvOpt = "prod",
    user: UserOpt = None,
    identity: IdentityOpt = None,
    known_hosts: KnownHostsOpt = DEFAULT_KNOWN_HOSTS,
    accept_new_host_keys: AcceptNewOpt = False,
) -> None:
    """Undo convert from its backup.

    Deployments and HPAs back, Services restored, DaemonSets deleted.

    Recreates the Deployments and HPAs that are gone, waits (by watching) until the Deployments are
    ready, restores each Service's type and ports (clusterIP kept), then deletes the DaemonSets
    convert made. What it changes is backed up first. A second run is a no-op.

    Examples:

    \b
        keybuzz-fix rollback --latest --dry-run
        keybuzz-fix rollback --backup ~/.local/state/keybuzz-fix/backups/convert-20250101T120000.000000Z.yaml --yes
    """
    from keybuzz_fix.cluster import backup
    from keybuzz_fix.cluster.rollback import run_rollback

    if (backup_file is None) == (not latest):
        raise UsageError("pass exactly one of --backup FILE and --latest")
    path = backup_file if backup_file is not None else backup.latest("convert")
    timeout = _ready_timeout(timeout)
    kube = _cluster_for(
        kubeconfig,
        context,
        kubeconfig_from_master,
        save_kubeconfig,
        env,
        user,
        identity,
        known_hosts,
        accept_new_host_keys,
    )
    result = run_rollback(
        _state(ctx).console, kube, path, dry_run=dry_run, yes=yes, timeout=timeout, output=output.value
    )
    raise typer.Exit(int(result.exit_code))


# -- ingress / validate / all --------------------------------------------------------------------


_HTTP = "URL checks"


class ScoreFormat(str, Enum):
    """Output formats of ``validate``."""

    TEXT = "text"
    JSON = "json"
    JUNIT = "junit"


@app.command()
def ingress(
    ctx: typer.Context,
    servers: Annotated[
        Path | None,
        typer.Argument(
            help="servers.tsv: each of its workers must run a controller pod (default: the cluster's worker Nodes).",
            show_default=False,
        ),
    ] = None,
    env: EnvOpt = "prod",
    config: ConfigOpt = None,
    dry_run: DryRunOpt = False,
    yes: YesOpt = False,
    force_conflicts: ForceConflictsOpt = False,
    output: OutputOpt = Output.TEXT,
    kubeconfig: KubeconfigOpt = None,
    context: ContextOpt = None,
    kubeconfig_from_master: FromMasterOpt = None,
    save_kubeconfig: SaveKubeconfigOpt = None,
    user: UserOpt = None,
    identity: IdentityOpt = None,
    known_hosts: KnownHostsOpt = DEFAULT_KNOWN_HOSTS,
    accept_new_host_keys: AcceptNewOpt = False,
) -> None:
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

    \b
        keybuzz-fix ingress --dry-run
        keybuzz-fix ingress servers.tsv --kubeconfig ~/.kube/keybuzz.yaml --yes
        keybuzz-fix ingress servers.tsv --kubeconfig-from-master servers.tsv -o json --yes
    """
    from keybuzz_fix import config as cfg_mod
    from keybuzz_fix import inventory as inv
    from keybuzz_fix.flows.ingress import run_ingress

    cfg = cfg_mod.load(config)
    workers = inv.select(inv.load(servers), Role.WORKER, env) if servers is not None else None
    kube = _cluster_for(
        kubeconfig,
        context,
        kubeconfig_from_master,
        save_kubeconfig,
        env,
        user,
        identity,
        known_hosts,
        accept_new_host_keys,
    )
    plan = run_ingress(
        _state(ctx).console,
        kube,
        cfg,
        workers,
        dry_run=dry_run,
        yes=yes,
        force_conflicts=force_conflicts,
        output=output,
    )
    raise typer.Exit(int(plan.exit_code))


@app.command()
def validate(
    ctx: typer.Context,
    servers: ServersArg,
    env: EnvOpt = "prod",
    config: ConfigOpt = None,
    threshold: Annotated[
        int | None,
        typer.Option(
            "--threshold",
            metavar="PERCENT",
            help="Pass at this score or above (default: validate.threshold of the config, 80).",
            show_default=False,
        ),
    ] = None,
    strict: Annotated[bool, typer.Option("--strict", help="Pass only at 100 %.")] = False,
    output: Annotated[ScoreFormat, typer.Option("--output", "-o", help="Output format.")] = ScoreFormat.TEXT,
    resolve: Annotated[
        list[str] | None,
        typer.Option(
            "--resolve",
            metavar="HOST:PORT:ADDR",
            help="Connect to ADDR for HOST:PORT (as curl does), e.g. to aim at one load balancer; repeatable.",
            rich_help_panel=_HTTP,
            show_default=False,
        ),
    ] = None,
    ca_file: Annotated[
        Path | None,
        typer.Option(
            "--ca-file", help="Trust this PEM CA bundle for the https URLs.", rich_help_panel=_HTTP, show_default=False
        ),
    ] = None,
    insecure: Annotated[
        bool,
        typer.Option("--insecure", help="Do not verify TLS certificates (explicit opt-in).", rich_help_panel=_HTTP),
    ] = False,
    url_timeout: Annotated[
        float,
        typer.Option(
            "--url-timeout", help="Seconds per URL attempt (and per --extended probe).", rich_help_panel=_HTTP
        ),
    ] = 10.0,
    retries: Annotated[
        int,
        typer.Option(
            "--retries", help="Further attempts after a failed one (errors, 408, 429, 5xx).", rich_help_panel=_HTTP
        ),
    ] = 2,
    extended: Annotated[
        bool,
        typer.Option(
            "--extended",
            help="Add per-worker rows, not counted in the score: "
            "NodePort reachable from here, host ports answering, UFW rules present "
            "(over SSH).",
        ),
    ] = False,
    kubeconfig: KubeconfigOpt = None,
    context: ContextOpt = None,
    kubeconfig_from_master: FromMasterOpt = None,
    save_kubeconfig: SaveKubeconfigOpt = None,
    user: UserOpt = None,
    identity: IdentityOpt = None,
    known_hosts: KnownHostsOpt = DEFAULT_KNOWN_HOSTS,
    accept_new_host_keys: AcceptNewOpt = False,
    timeout: TimeoutOpt = 10.0,
    concurrency: ConcurrencyOpt = 16,
) -> None:
    """Score the cluster: seven checks, each with its evidence.

    The checks run at once.

    1 DaemonSets keybuzz-api and keybuzz-front exist; 2 each has ≥ N Running and Ready pods (N = workers
    in servers.tsv); 3 their pod templates have hostNetwork on; 4 ingress-nginx is a hostNetwork
    DaemonSet with ≥ N Running pods; 5 the Services are NodePort 30080 / 30000; 6 both Ingresses exist
    and point at them; 7 both URLs answer HTTP 200 (timeout, retries, status or error shown).

    Exit 0 when the score reaches the threshold (80 %, or 100 % with --strict), 1 below, 2 on bad input.

    Examples:

    \b
        keybuzz-fix validate servers.tsv
        keybuzz-fix validate servers.tsv --strict -o junit > scorecard.xml
        keybuzz-fix validate servers.tsv --extended --identity ~/.ssh/id_ed25519
        keybuzz-fix validate servers.tsv --resolve platform.keybuzz.io:443:10.0.0.2 -o json
    """
    from keybuzz_fix import config as cfg_mod
    from keybuzz_fix import inventory as inv
    from keybuzz_fix.checks import scorecard as sc
    from keybuzz_fix.flows.validate import ExtendedOptions, run_validate
    from keybuzz_fix.report import hosts as report

    cfg = cfg_mod.load(config)
    http = _http_options(cfg.validate.urls, resolve or [], ca_file, insecure, url_timeout, retries)
    if threshold is not None and not 0 <= threshold <= 100:
        raise UsageError(f"--threshold must be between 0 and 100 (percent), got {threshold}")
    workers = inv.with_user(inv.select(inv.load(servers), Role.WORKER, env), user)
    ssh = ssh_options(identity, known_hosts, accept_new_host_keys, timeout)
    more = ExtendedOptions(ssh, _check_concurrency(concurrency)) if extended else None
    kube = _cluster_for(
        kubeconfig,
        context,
        kubeconfig_from_master,
        save_kubeconfig,
        env,
        user,
        identity,
        known_hosts,
        accept_new_host_keys,
    )
    card = run_validate(kube, cfg, workers, http=http, threshold=threshold, strict=strict, extended=more)
    if output is ScoreFormat.JSON:
        report.print_json(sc.to_json(card))
    elif output is ScoreFormat.JUNIT:
        sys.stdout.write(sc.to_junit(card))
    else:
        report.scorecard_table(_state(ctx).console, card, note="TLS not verified (--insecure)" if insecure else "")
    raise typer.Exit(int(card.exit_code))


def _http_options(
    urls: tuple[str, ...], resolve: list[str], ca_file: Path | None, insecure: bool, url_timeout: float, retries: int
) -> HttpOptions:
    from keybuzz_fix.checks import http as probe

    if not 0 < url_timeout <= 600:
        raise UsageError(f"--url-timeout must be more than 0 and at most 600 seconds, got {url_timeout:g}")
    if not 0 <= retries <= 10:
        raise UsageError(f"--retries must be between 0 and 10, got {retries}")
    if insecure and ca_file is not None:
        raise UsageError("--insecure and --ca-file exclude each other")
    if ca_file is not None and not ca_file.expanduser().is_file():
        raise UsageError(f"--ca-file {ca_file}: no such file")
    mapping = probe.parse_resolve(resolve)
    targets = {probe.target(u)[1:3] for u in urls}
    unused = [f"{h}:{p}" for h, p in mapping if (h, p) not in targets]
    if unused:
        shown = ", ".join(f"{h}:{p}" for h, p in sorted(targets))
        raise UsageError(f"--resolve {', '.join(unused)} matches none of the URLs checked ({shown})")
    return probe.HttpOptions(
        timeout=url_timeout,
        retries=retries,
        resolve=mapping,
        ca_file=ca_file.expanduser() if ca_file else None,
        insecure=insecure,
    )


@app.command("all")
def all_steps(
    ctx: typer.Context,
    servers: ServersArg,
    enable: Annotated[
        bool, typer.Option("--enable", help="ufw: enable UFW where it is inactive (an SSH allow rule is added first).")
    ] = False,
    env: EnvOpt = "prod",
    config: ConfigOpt = None,
    dry_run: DryRunOpt = False,
    yes: YesOpt = False,
    force_conflicts: ForceConflictsOpt = False,
    keep_port: Annotated[
        bool, typer.Option("--keep-port", help="convert: use each app's own container port as its host port.")
    ] = False,
    ready_timeout: Annotated[
        float, typer.Option("--ready-timeout", help="convert: seconds to wait for the DaemonSets to be ready.")
    ] = _READY_TIMEOUT,
    threshold: Annotated[
        int | None,
        typer.Option(
            "--threshold",
            metavar="PERCENT",
            help="validate: pass at this score or above (default 80).",
            show_default=False,
        ),
    ] = None,
    strict: Annotated[bool, typer.Option("--strict", help="validate: pass only at 100 %.")] = False,
    resolve: Annotated[
        list[str] | None,
        typer.Option(
            "--resolve",
            metavar="HOST:PORT:ADDR",
            help="validate: connect to ADDR for HOST:PORT (as curl does).",
            rich_help_panel=_HTTP,
            show_default=False,
        ),
    ] = None,
    ca_file: Annotated[
        Path | None,
        typer.Option(
            "--ca-file", help="validate: trust this PEM CA bundle.", rich_help_panel=_HTTP, show_default=False
        ),
    ] = None,
    insecure: Annotated[
        bool, typer.Option("--insecure", help="validate: do not verify TLS certificates.", rich_help_panel=_HTTP)
    ] = False,
    url_timeout: Annotated[
        float, typer.Option("--url-timeout", help="validate: seconds per URL attempt.", rich_help_panel=_HTTP)
    ] = 10.0,
    retries: Annotated[
        int, typer.Option("--retries", help="validate: further attempts after a failed one.", rich_help_panel=_HTTP)
    ] = 2,
    kubeconfig: KubeconfigOpt = None,
    context: ContextOpt = None,
    kubeconfig_from_master: FromMasterOpt = None,
    save_kubeconfig: SaveKubeconfigOpt = None,
    user: UserOpt = None,
    identity: IdentityOpt = None,
    known_hosts: KnownHostsOpt = DEFAULT_KNOWN_HOSTS,
    accept_new_host_keys: AcceptNewOpt = False,
    timeout: TimeoutOpt = 10.0,
    concurrency: ConcurrencyOpt = 16,
) -> None:
    """Run the whole remediation: ufw, convert, ingress, validate.

    First every step plans (nothing changes) and the combined plan is shown; one confirmation
    (or --yes) covers all of it. The steps then run in order, each outcome shown as it finishes.
    The first failing step stops the run, saying what was done and what was not; re-running
    resumes (steps already done are no-ops). --dry-run runs every step's planning only.

    Exit codes: 0 every step ran and the score is 100 %; 3 every step ran and the score passed
    the threshold but is below 100 %; 1 a step failed or the score is below the threshold;
    4 declined at the confirmation; 130 interrupted.

    Examples:

    \b
        keybuzz-fix all servers.tsv --dry-run
        keybuzz-fix all servers.tsv --kubeconfig ~/.kube/keybuzz.yaml --identity ~/.ssh/id_ed25519 --yes
        keybuzz-fix all servers.tsv --kubeconfig-from-master servers.tsv --resolve platform.keybuzz.io:443:10.0.0.2
    """
    from keybuzz_fix import config as cfg_mod
    from keybuzz_fix import inventory as inv
    from keybuzz_fix.flows.all import AllOptions, run_all

    cfg = cfg_mod.load(config)
    http = _http_options(cfg.validate.urls, resolve or [], ca_file, insecure, url_timeout, retries)
    if threshold is not None and not 0 <= threshold <= 100:
        raise UsageError(f"--threshold must be between 0 and 100 (percent), got {threshold}")
    hosts = inv.with_user(inv.select(inv.load(servers), Role.WORKER, env), user)
    ssh = ssh_options(identity, known_hosts, accept_new_host_keys, timeout)
    options = AllOptions(
        dry_run=dry_run,
        yes=yes,
        enable=enable,
        concurrency=_check_concurrency(concurrency),
        ready_timeout=_seconds("--ready-timeout", ready_timeout),
        force_conflicts=force_conflicts,
        keep_port=keep_port,
        threshold=threshold,
        strict=strict,
    )
    kube = _cluster_for(
        kubeconfig,
        context,
        kubeconfig_from_master,
        save_kubeconfig,
        env,
        user,
        identity,
        known_hosts,
        accept_new_host_keys,
    )
    raise typer.Exit(
        int(run_all(_state(ctx).console, hosts=hosts, cfg=cfg, ssh=ssh, kube=kube, http=http, options=options))
    )


# -- diagnose / overlay --------------------------------------------------------------------------


@app.command()
def overlay(
    ctx: typer.Context,
    servers: ServersArg,
    enable: EnableOpt = False,
    checksum_offload_off: Annotated[
        bool,
        typer.Option(
            "--checksum-offload-off",
            help="Also turn off tx-checksum-ip-generic on flannel.1 (ethtool) and keep it "
            "off with a udev rule: the workaround for the VXLAN checksum-offload bug of kernels older than 5.7.",
        ),
    ] = False,
    env: EnvOpt = "prod",
    user: UserOpt = None,
    dry_run: DryRunOpt = False,
    yes: YesOpt = False,
    identity: IdentityOpt = None,
    known_hosts: KnownHostsOpt = DEFAULT_KNOWN_HOSTS,
    accept_new_host_keys: AcceptNewOpt = False,
    timeout: TimeoutOpt = 10.0,
    concurrency: ConcurrencyOpt = 16,
    output: OutputOpt = Output.TEXT,
    config: ConfigOpt = None,
) -> None:
    """Let Flannel's VXLAN through UFW on every K3s node.

    Masters and workers alike.

    Adds, where missing: allow 8472/udp from the private network, allow from the pod network and
    allow from the service network (overlay.* in the config). Same run as `ufw`: reads each node,
    shows the plan, asks once, applies and reads back; nothing is removed or reordered.

    Examples:

    \b
        keybuzz-fix overlay servers.tsv --dry-run
        keybuzz-fix overlay servers.tsv --yes -o json
        keybuzz-fix overlay servers.tsv --yes --checksum-offload-off
    """
    from keybuzz_fix import config as cfg_mod
    from keybuzz_fix import inventory as inv
    from keybuzz_fix.flows.firewall import run_firewall
    from keybuzz_fix.hosts.flannel import plan as overlay_mod
    from keybuzz_fix.hosts.ufw.apply import HostExtra

    cfg = cfg_mod.load(config)
    rules = overlay_mod.overlay_rules(cfg.overlay)
    extra = HostExtra(overlay_mod.OFFLOAD_PROBE, overlay_mod.plan_offload) if checksum_offload_off else None
    hosts = inv.with_user(inv.select(inv.load(servers), inv.Role.ALL, env), user)
    code = run_firewall(
        _state(ctx).console,
        command="overlay",
        hosts=hosts,
        desired=lambda _h: rules,
        ssh=ssh_options(identity, known_hosts, accept_new_host_keys, timeout),
        enable=enable,
        dry_run=dry_run,
        yes=yes,
        concurrency=_check_concurrency(concurrency),
        output=output,
        extra=extra,
    )
    raise typer.Exit(int(code))


@app.command()
def diagnose(
    ctx: typer.Context,
    servers: ServersArg,
    env: EnvOpt = "prod",
    user: UserOpt = None,
    identity: IdentityOpt = None,
    known_hosts: KnownHostsOpt = DEFAULT_KNOWN_HOSTS,
    accept_new_host_keys: AcceptNewOpt = False,
    timeout: TimeoutOpt = 10.0,
    concurrency: ConcurrencyOpt = 16,
    kubeconfig: KubeconfigOpt = None,
    context: ContextOpt = None,
    kubeconfig_from_master: FromMasterOpt = None,
    output: OutputOpt = Output.TEXT,
    config: ConfigOpt = None,
) -> None:
    """Find why ClusterIP traffic does not cross the nodes.

    Read-only: changes nothing.

    On every K3s node (over SSH, in parallel) and in the API: Flannel on the wrong interface,
    UFW dropping VXLAN, the VXLAN checksum-offload bug, an MTU too large for VXLAN, and a live
    probe (each node pings every other node's flannel.1; CoreDNS through its ClusterIP). Findings
    are ranked, confirmed by a failing probe first; a missing tool is "not checked", never a pass.
    Exit code 0 when the overlay is healthy, 1 otherwise. Without a reachable API the node checks
    still run.

    Examples:

    \b
        keybuzz-fix diagnose servers.tsv
        keybuzz-fix diagnose servers.tsv --kubeconfig-from-master servers.tsv -o json
    """
    from keybuzz_fix import config as cfg_mod
    from keybuzz_fix import inventory as inv
    from keybuzz_fix.checks import diagnose as diag
    from keybuzz_fix.cluster.connect import ClusterOptions
    from keybuzz_fix.flows.diagnose import gather
    from keybuzz_fix.hosts.flannel import plan as overlay_mod
    from keybuzz_fix.report import hosts as report

    if kubeconfig is not None and kubeconfig_from_master is not None:
        raise UsageError("--kubeconfig and --kubeconfig-from-master exclude each other")
    cfg = cfg_mod.load(config)
    console = _state(ctx).console
    hosts = inv.with_user(inv.select(inv.load(servers), inv.Role.ALL, env), user)
    ssh = ssh_options(identity, known_hosts, accept_new_host_keys, timeout)
    cluster = ClusterOptions(
        kubeconfig=kubeconfig,
        context=context,
        from_master=kubeconfig_from_master,
        env=env,
        user=user,
        timeout=max(timeout, 10.0),
    )
    found = gather(
        hosts,
        ssh,
        cluster,
        concurrency=_check_concurrency(concurrency),
        console=None if output is Output.JSON else console,
    )
    findings = diag.diagnose(found.nodes, found.cluster, overlay_mod.overlay_rules(cfg.overlay), cfg.overlay.vxlan_port)
    code = ExitCode.OK if diag.healthy(findings) and not any(n.error for n in found.nodes) else ExitCode.FAILURE
    if output is Output.JSON:
        report.print_json(
            report.diagnosis_json(
                findings,
                found.nodes,
                found.cluster,
                seconds=found.seconds,
                accepted=found.accepted.entries,
                exit_code=code,
            )
        )
    else:
        report.diagnosis(
            console, findings, found.nodes, found.cluster, seconds=found.seconds, accepted=found.accepted.entries
        )
    raise typer.Exit(int(code))


def main(argv: list[str] | None = None) -> None:
    """Run the CLI (errors inside commands are mapped by the root group, the rest here)."""
    args = sys.argv[1:] if argv is None else argv
    try:
        rv = app(args=args, prog_name="keybuzz-fix", standalone_mode=False)
    except typer.TyperException as e:  # a bad option before the command name
        _error(e.format_message())
        sys.exit(int(ExitCode.USAGE))
    except (KeyboardInterrupt, typer.Abort):
        _error("interrupted (Ctrl-C)")
        sys.exit(int(ExitCode.INTERRUPTED))
    sys.exit(rv if isinstance(rv, int) else 0)


def _error(message: str) -> None:
    print(f"keybuzz-fix: error: {' '.join(message.split())}", file=sys.stderr)
