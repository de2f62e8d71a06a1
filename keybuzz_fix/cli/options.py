"""Command-line options shared by several commands, declared once.

Each alias is an ``Annotated`` type for Typer; commands use them as parameter annotations so the
same option has the same name, default and help everywhere.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from keybuzz_fix.inventory import Role


class Output(str, Enum):
    """Output formats of most commands."""

    TEXT = "text"
    JSON = "json"


class PlanOutput(str, Enum):
    """Output formats of commands that can also print the objects they would apply."""

    TEXT = "text"
    JSON = "json"
    YAML = "yaml"


SSH = "SSH"
CLUSTER = "Cluster"
SAFETY = "Safety"

ServersArg = Annotated[Path, typer.Argument(help="The operator's servers.tsv inventory.", show_default=False)]
EnvOpt = Annotated[str, typer.Option("--env", help="Only rows whose ENV column equals this.")]
RoleOpt = Annotated[Role, typer.Option("--role", help="Which K3s nodes to select.")]
UserOpt = Annotated[
    str | None, typer.Option("--user", help="SSH user for every host (default: USER_SSH).", rich_help_panel=SSH)
]
OutputOpt = Annotated[Output, typer.Option("--output", "-o", help="Output format.")]
PlanOutputOpt = Annotated[
    PlanOutput,
    typer.Option(
        "--output", "-o", help="Output format: text, json (a summary), yaml (the objects that would be applied)."
    ),
]
ConfigOpt = Annotated[
    Path | None, typer.Option("--config", help="YAML file overriding manifests/defaults.yaml.", show_default=False)
]
DryRunOpt = Annotated[bool, typer.Option("--dry-run", help="Show the plan and change nothing.", rich_help_panel=SAFETY)]
EnableOpt = Annotated[
    bool, typer.Option("--enable", help="Enable UFW where it is inactive (an SSH allow rule is added first).")
]
ForceConflictsOpt = Annotated[
    bool,
    typer.Option(
        "--force-conflicts",
        help="Take over fields another field manager owns (server-side apply with force).",
        rich_help_panel=SAFETY,
    ),
]
YesOpt = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.", rich_help_panel=SAFETY)]
IdentityOpt = Annotated[
    Path | None,
    typer.Option(
        "--identity",
        "-i",
        help="SSH private key (default: ssh-agent, ~/.ssh/config, ~/.ssh/id_*).",
        rich_help_panel=SSH,
    ),
]
KnownHostsOpt = Annotated[
    Path, typer.Option("--known-hosts", help="known_hosts file the host keys are checked against.", rich_help_panel=SSH)
]
AcceptNewOpt = Annotated[
    bool,
    typer.Option(
        "--accept-new-host-keys",
        help="Trust unknown host keys on first use and record them (a changed key is always refused).",
        rich_help_panel=SSH,
    ),
]
TimeoutOpt = Annotated[
    float,
    typer.Option("--timeout", help="Seconds allowed to connect and for each remote command.", rich_help_panel=SSH),
]
ConcurrencyOpt = Annotated[int, typer.Option("--concurrency", help="Hosts worked on at once.", rich_help_panel=SSH)]
KubeconfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--kubeconfig",
        help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config).",
        rich_help_panel=CLUSTER,
        show_default=False,
    ),
]
ContextOpt = Annotated[str | None, typer.Option("--context", help="kubeconfig context.", rich_help_panel=CLUSTER)]
FromMasterOpt = Annotated[
    Path | None,
    typer.Option(
        "--kubeconfig-from-master",
        metavar="SERVERS_TSV",
        help="Read /etc/rancher/k3s/k3s.yaml from the first K3s master of this servers.tsv over SSH (kept in memory).",
        rich_help_panel=CLUSTER,
        show_default=False,
    ),
]
SaveKubeconfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--save-kubeconfig",
        help="With --kubeconfig-from-master: also save it to this file (mode 0600).",
        rich_help_panel=CLUSTER,
        show_default=False,
    ),
]

DEFAULT_KNOWN_HOSTS = Path("~/.ssh/known_hosts")
