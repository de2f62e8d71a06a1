"""The ``keybuzz-fix`` command line: thin Typer commands wiring the layers together.

Heavy modules (paramiko, the kubernetes client) are imported inside the commands that need them,
so ``keybuzz-fix --help`` stays fast. Errors are mapped to exit codes in :func:`main`, once.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from typer.core import TyperGroup

from keybuzz_fix import __version__
from keybuzz_fix.errors import ExitCode, KeybuzzFixError, UsageError
from keybuzz_fix.inventory import Role
from keybuzz_fix.options import (
    AcceptNewOpt,
    ConcurrencyOpt,
    ConfigOpt,
    DryRunOpt,
    EnvOpt,
    IdentityOpt,
    KnownHostsOpt,
    Output,
    OutputOpt,
    RoleOpt,
    ServersArg,
    TimeoutOpt,
    UserOpt,
    YesOpt,
)

if TYPE_CHECKING:
    from rich.console import Console

    from keybuzz_fix.ssh import SshOptions

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
    rich_markup_mode="markdown",
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
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    from rich.console import Console

    ctx.obj = AppState(console=Console(stderr=False, highlight=False), debug=debug)


def _state(ctx: typer.Context) -> AppState:
    assert isinstance(ctx.obj, AppState)
    return ctx.obj


def ssh_options(identity: Path | None, known_hosts: Path, accept_new: bool, timeout: float) -> SshOptions:
    """Build and check the SSH options of a command."""
    from keybuzz_fix.ssh import SshOptions

    if timeout <= 0:
        raise UsageError(f"--timeout must be more than 0 seconds, got {timeout:g}")
    if identity is not None and not identity.expanduser().is_file():
        raise UsageError(f"--identity {identity}: no such file")
    return SshOptions(known_hosts=known_hosts.expanduser(), identity=identity.expanduser() if identity else None,
                      accept_new_host_keys=accept_new, connect_timeout=timeout, command_timeout=max(timeout, 30.0))


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
    """List the K3s nodes selected from servers.tsv (touches no network).

    Examples:

        keybuzz-fix inventory servers.tsv
        keybuzz-fix inventory servers.tsv --role all -o json
    """
    from keybuzz_fix import inventory as inv
    from keybuzz_fix import report

    hosts = inv.select(inv.load(servers), role, env)
    if output is Output.JSON:
        report.print_json([h.to_json() for h in hosts])
    else:
        report.inventory_table(_state(ctx).console, hosts, f"{len(hosts)} K3s {role.value} node(s), ENV={env}")


@app.command()
def ufw(
    ctx: typer.Context,
    servers: ServersArg,
    ports: Annotated[str | None, typer.Option("--ports", help="Ports to open, e.g. 31695/tcp,32720/tcp "
                                              "(default: the ingress-nginx NodePorts from the config).",
                                              show_default=False)] = None,
    source: Annotated[str | None, typer.Option("--source", help="Only allow from this CIDR (default: the private "
                                               "network, 10.0.0.0/16); 'any' opens to everyone.",
                                               show_default=False)] = None,
    enable: Annotated[bool, typer.Option("--enable", help="Enable UFW where it is inactive (an SSH allow rule "
                                         "is added first).")] = False,
    env: EnvOpt = "prod",
    user: UserOpt = None,
    dry_run: DryRunOpt = False,
    yes: YesOpt = False,
    identity: IdentityOpt = None,
    known_hosts: KnownHostsOpt = Path("~/.ssh/known_hosts"),
    accept_new_host_keys: AcceptNewOpt = False,
    timeout: TimeoutOpt = 10.0,
    concurrency: ConcurrencyOpt = 16,
    output: OutputOpt = Output.TEXT,
    config: ConfigOpt = None,
) -> None:
    """Open the ingress-nginx NodePorts in UFW on every worker, so the load balancers reach them.

    Reads each worker's rules, shows the plan, asks once, applies and reads back.

    Rules already present are left alone; nothing is removed or reordered; UFW is only enabled
    with --enable, after an SSH allow rule.

    Examples:

        keybuzz-fix ufw servers.tsv --dry-run
        keybuzz-fix ufw servers.tsv --yes -o json
        keybuzz-fix ufw servers.tsv --ports 31695/tcp --source 10.0.0.0/16 --identity ~/.ssh/id_ed25519
    """
    from keybuzz_fix import config as cfg_mod
    from keybuzz_fix import firewall
    from keybuzz_fix import inventory as inv
    from keybuzz_fix.fleet import run_firewall

    cfg = cfg_mod.load(config)
    wanted_source = firewall.parse_source(source) if source is not None else cfg.firewall.source
    if ports is not None:
        triples = [(p, proto, f"keybuzz-fix: port {p}/{proto}") for p, proto in firewall.parse_ports(ports)]
    else:
        triples = [(r.port, r.proto, r.comment) for r in cfg.firewall.ports]
    rules = firewall.desired_rules(triples, wanted_source)
    hosts = inv.with_user(inv.select(inv.load(servers), inv.Role.WORKER, env), user)
    code = run_firewall(_state(ctx).console, command="ufw", hosts=hosts, desired=lambda _h: rules,
                        ssh=ssh_options(identity, known_hosts, accept_new_host_keys, timeout), enable=enable,
                        dry_run=dry_run, yes=yes, concurrency=_check_concurrency(concurrency), output=output)
    raise typer.Exit(int(code))


# -- convert / rollback -------------------------------------------------------------------------


# -- ingress / validate / all --------------------------------------------------------------------


# -- diagnose / overlay --------------------------------------------------------------------------


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
