"""Command-line options, declared once.

Each alias is an ``Annotated`` type for Typer, so the same option has the same name, default and
help everywhere. The options of every command that reaches hosts, the cluster or the URLs come in
groups (:data:`GROUPS`): a command takes a group as one parameter (``ssh: SshArgs``), and
:func:`~keybuzz_fix.cli.connections.connections` builds from the groups, once, what its flow
connects with; their values are checked in :mod:`.parse`. Only light modules are imported here:
``--help`` stays fast.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, cast

import typer

from keybuzz_fix.inventory import Role
from keybuzz_fix.report.output import Output, PlanOutput, ScoreFormat

if TYPE_CHECKING:
    from rich.console import Console


SSH, CLUSTER, SAFETY, HTTP = "SSH", "Cluster", "Safety", "URL checks"
FROM_COMMAND_SERVERS = "@servers.tsv"  # a bare --kubeconfig-from-master: the command's own servers.tsv
READY_TIMEOUT = 300.0


def console_of(ctx: typer.Context) -> "Console":
    """Return the console the root command made for this run."""
    return cast("Console", ctx.obj)


def _opt(names: str, text: str, panel: str | None = None, **kwargs: Any) -> Any:
    """Declare an option: its names (space-separated), its help, its panel."""
    return typer.Option(*names.split(), help=text, rich_help_panel=panel, **kwargs)


_HIDDEN = {"show_default": False}
ServersArg = Annotated[Path, typer.Argument(help="The operator's servers.tsv inventory.", show_default=False)]
EnvOpt = Annotated[str, _opt("--env", "Only rows whose ENV column equals this.")]
LimitOpt = Annotated[
    str | None,
    _opt(
        "--limit -l",
        "Only these hosts (as Ansible's --limit): hostnames or addresses, globs (k8s-worker-0[1-2]), "
        "comma lists, !HOST to leave one out, @FILE for names one a line (a retry file).",
        metavar="PATTERN",
        show_default=False,
    ),
]
RoleOpt = Annotated[Role, _opt("--role", "Which K3s nodes to select.")]
OutputOpt = Annotated[Output, _opt("--output -o", "Output format.")]
PlanOutputOpt = Annotated[
    PlanOutput, _opt("--output -o", "Output format: text, json (a summary), yaml (the objects that would be applied).")
]
ScoreOutputOpt = Annotated[ScoreFormat, _opt("--output -o", "Output format.")]
ConfigOpt = Annotated[Path | None, _opt("--config", "YAML file overriding manifests/defaults.yaml.", **_HIDDEN)]
DryRunOpt = Annotated[bool, _opt("--dry-run", "Show the plan and change nothing.", SAFETY)]
YesOpt = Annotated[bool, _opt("--yes -y", "Do not ask for confirmation.", SAFETY)]
ExitCodeOpt = Annotated[
    bool,
    _opt(
        "--exit-code",
        "Exit 0 when there is nothing to do, 2 when changes are pending (with --dry-run or --from-file), "
        "1 on any error: a drift check for CI or cron.",
        SAFETY,
    ),
]
EnableOpt = Annotated[bool, _opt("--enable", "Enable UFW where it is inactive (an SSH allow rule is added first).")]
InsertFirstOpt = Annotated[
    bool,
    _opt(
        "--insert-first",
        "Put the tool's allow rules at the top of UFW's lists (ufw prepend), above an operator's broader deny or "
        "limit rule; shown in the plan. Default: append, and report such a rule as blocking.",
    ),
]
ForceConflictsOpt = Annotated[
    bool,
    _opt("--force-conflicts", "Take over fields another field manager owns (server-side apply with force).", SAFETY),
]
KeepPortOpt = Annotated[
    bool,
    _opt(
        "--keep-port",
        "Use each app's own container port as its host port instead of the configured one "
        "(for an app whose port cannot move).",
    ),
]
AllowManagedOpt = Annotated[
    bool,
    _opt(
        "--allow-managed",
        "Convert even objects another controller owns or reconciles (a KEDA ScaledObject, Helm, Argo CD, Flux); "
        "the plan names each one and what that controller will undo.",
        SAFETY,
    ),
]
ThresholdOpt = Annotated[
    int | None,
    _opt(
        "--threshold",
        "Pass at this score or above (default: validate.threshold of the config, 80).",
        metavar="PERCENT",
        **_HIDDEN,
    ),
]
StrictOpt = Annotated[bool, _opt("--strict", "Pass only at 100 %.")]
FromFileOpt = Annotated[
    Path | None,
    _opt(
        "--from-file",
        "Plan from this file (`kubectl get deploy,svc,hpa -n keybuzz -o yaml`, or a multi-document YAML) "
        "instead of a cluster; touches no cluster.",
        metavar="STATE.yaml",
        **_HIDDEN,
    ),
]
ShowValuesOpt = Annotated[
    bool,
    _opt(
        "--show-values",
        "Show env values in the plan and diffs (masked by default: they may hold secrets); "
        "-o yaml/json always carry them, complete, to be applied.",
        SAFETY,
    ),
]
BackupOpt = Annotated[Path | None, _opt("--backup", "The convert backup to restore.", metavar="FILE", **_HIDDEN)]
LatestOpt = Annotated[bool, _opt("--latest", "Restore the newest convert backup.")]
ExtendedOpt = Annotated[
    bool,
    _opt(
        "--extended",
        "Add per-worker rows, not counted in the score: NodePort reachable from here, host ports answering, "
        "UFW rules present (over SSH).",
    ),
]


@dataclass(frozen=True)
class SshArgs:
    """How to reach and trust the hosts over SSH."""

    user: Annotated[str | None, _opt("--user", "SSH user for every host (default: USER_SSH).", SSH)] = None
    identity: Annotated[
        Path | None, _opt("--identity -i", "SSH private key (default: ssh-agent, ~/.ssh/config, ~/.ssh/id_*).", SSH)
    ] = None
    known_hosts: Annotated[
        Path | None,
        _opt(
            "--known-hosts",
            "known_hosts file every host key is checked against (default: ssh_config's UserKnownHostsFile "
            "and GlobalKnownHostsFile, else ~/.ssh/known_hosts).",
            SSH,
            **_HIDDEN,
        ),
    ] = None
    accept_new_host_keys: Annotated[
        bool,
        _opt(
            "--accept-new-host-keys",
            "Trust unknown host keys on first use and record them (a changed key is always refused).",
            SSH,
        ),
    ] = False
    ssh_config: Annotated[
        Path | None,
        _opt(
            "--ssh-config",
            "Read only this ssh_config file, as ssh -F does ('none': none); default ~/.ssh/config then "
            "/etc/ssh/ssh_config.",
            SSH,
            metavar="FILE",
            **_HIDDEN,
        ),
    ] = None


@dataclass(frozen=True)
class FleetArgs:
    """How long each host may take, and how many are worked on at once."""

    timeout: Annotated[
        float,
        _opt(
            "--timeout",
            "Seconds each host has to answer: to connect (TCP, SSH banner, key exchange and login together), and, "
            "while a command runs, to answer anything at all (a keepalive every second): a host silent that long "
            "is given up, a change in flight reported as unknown (read it again to see where it stands). A command "
            "on a host that answers gets max(this, 30) s: a ufw reload can take seconds. ufw and diagnose also bound "
            "each cluster read by max(this, 10) s. URL checks and waits for pods have their own options.",
            SSH,
        ),
    ] = 10.0
    concurrency: Annotated[int, _opt("--concurrency", "Hosts worked on at once.", SSH)] = 16


@dataclass(frozen=True)
class ClusterReadArgs:
    """Where the kubeconfig comes from."""

    kubeconfig: Annotated[
        Path | None, _opt("--kubeconfig", "kubeconfig file (default: $KUBECONFIG, ~/.kube/config).", CLUSTER, **_HIDDEN)
    ] = None
    context: Annotated[str | None, _opt("--context", "kubeconfig context.", CLUSTER)] = None
    namespace: Annotated[
        str | None,
        _opt(
            "--namespace -n",
            "Namespace of the apps (default: namespace of --config, else the kubeconfig context's, else keybuzz).",
            CLUSTER,
            **_HIDDEN,
        ),
    ] = None
    as_user: Annotated[
        str | None,
        _opt(
            "--as", "Impersonate this user (as kubectl --as; default: the kubeconfig user's as:).", CLUSTER, **_HIDDEN
        ),
    ] = None
    as_group: Annotated[
        list[str] | None,
        _opt(
            "--as-group", "Impersonate this group, with --as; repeatable (as kubectl --as-group).", CLUSTER, **_HIDDEN
        ),
    ] = None
    kubeconfig_from_master: Annotated[
        Path | None,
        _opt(
            "--kubeconfig-from-master",
            "Read /etc/rancher/k3s/k3s.yaml over SSH from the K3s masters of this servers.tsv, each in turn until one "
            "answers (kept in memory); alone (last, or before another option), the command's own servers.tsv.",
            CLUSTER,
            metavar="SERVERS_TSV",
            **_HIDDEN,
        ),
    ] = None


@dataclass(frozen=True)
class ClusterArgs(ClusterReadArgs):
    """Where the kubeconfig comes from, and where to keep the one read from a master."""

    save_kubeconfig: Annotated[
        Path | None,
        _opt(
            "--save-kubeconfig",
            "With --kubeconfig-from-master: also save it to this file (mode 0600).",
            CLUSTER,
            **_HIDDEN,
        ),
    ] = None


@dataclass(frozen=True)
class HttpArgs:
    """How the URL checks reach and trust the sites."""

    resolve: Annotated[
        list[str] | None,
        _opt(
            "--resolve",
            "Connect to ADDR for HOST:PORT (as curl does), e.g. to aim at one load balancer; repeatable.",
            HTTP,
            metavar="HOST:PORT:ADDR",
            **_HIDDEN,
        ),
    ] = None
    ca_file: Annotated[
        Path | None, _opt("--ca-file", "Trust this PEM CA bundle for the https URLs.", HTTP, **_HIDDEN)
    ] = None
    insecure: Annotated[bool, _opt("--insecure", "Do not verify TLS certificates (explicit opt-in).", HTTP)] = False
    url_timeout: Annotated[
        float, _opt("--url-timeout", "Seconds per URL attempt (and per --extended probe).", HTTP)
    ] = 10.0
    retries: Annotated[int, _opt("--retries", "Further attempts after a failed one (errors, 408, 429, 5xx).", HTTP)] = 2


GROUPS = (SshArgs, FleetArgs, ClusterReadArgs, ClusterArgs, HttpArgs)
