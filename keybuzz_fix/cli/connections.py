"""The one builder of what a command connects with, from its SSH, cluster and URL option groups.

:func:`connections` checks the groups declared in :mod:`.options` and builds the flows'
:class:`~keybuzz_fix.flows.Connections` once; :func:`namespaced` picks the apps' namespace the
way kubectl does. The heavy modules (paramiko, the kubernetes client) are imported inside these
functions, so ``--help`` stays fast.
"""

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from keybuzz_fix.cli.options import FROM_COMMAND_SERVERS, ClusterArgs, ClusterReadArgs, FleetArgs, HttpArgs, SshArgs
from keybuzz_fix.cli.parse import seconds
from keybuzz_fix.errors import UsageError

if TYPE_CHECKING:
    from keybuzz_fix.config import Config
    from keybuzz_fix.flows import Connections


def connections(
    env: str,
    ssh: SshArgs,
    *,
    fleet: FleetArgs | None = None,
    cluster: ClusterReadArgs | None = None,
    api_timeout: float = 30.0,
    http: HttpArgs | None = None,
    urls: Sequence[str] = (),
    servers: Path | None = None,
) -> "Connections":
    """Check the SSH, cluster and URL options of a command and build what its flow connects with.

    ``servers``: the command's servers.tsv, which a bare ``--kubeconfig-from-master`` reads.
    """
    from keybuzz_fix.checks.http import checked_http_options
    from keybuzz_fix.cluster.connect import ClusterOptions
    from keybuzz_fix.flows import Connections
    from keybuzz_fix.hosts.sshoptions import SshOptions

    over_ssh = fleet is not None
    fleet = fleet or FleetArgs()
    timeout = seconds("--timeout", fleet.timeout)
    if ssh.identity is not None and not ssh.identity.expanduser().is_file():
        raise UsageError(f"--identity {ssh.identity}: no such file")
    if not 1 <= fleet.concurrency <= 512:
        raise UsageError(f"--concurrency must be between 1 and 512, got {fleet.concurrency}")
    options = SshOptions(
        known_hosts=ssh.known_hosts.expanduser() if ssh.known_hosts else None,
        identity=ssh.identity.expanduser() if ssh.identity else None,
        accept_new_host_keys=ssh.accept_new_host_keys,
        connect_timeout=timeout,
        command_timeout=max(timeout, 30.0),  # a live command: ufw reload can take that long
        silence_timeout=timeout,  # a host gone mid-command is given up after --timeout, not the command's time
        user=ssh.user,
    )
    if ssh.ssh_config is not None:  # as ssh -F: only this file, and not the system one
        if str(ssh.ssh_config) != "none" and not ssh.ssh_config.expanduser().is_file():
            raise UsageError(f"--ssh-config {ssh.ssh_config}: no such file")
        only = None if str(ssh.ssh_config) == "none" else ssh.ssh_config.expanduser()
        options = dataclasses.replace(options, ssh_config=only, system_ssh_config=None)
    if over_ssh or (cluster is not None and cluster.kubeconfig_from_master is not None):
        options.check_config()  # this command goes over SSH: a bad ssh_config line stops it here
    reach = None
    if cluster is not None:
        from_master = cluster.kubeconfig_from_master
        if from_master is not None and str(from_master) == FROM_COMMAND_SERVERS:
            if servers is None:
                raise UsageError(
                    "--kubeconfig-from-master: this command has no servers.tsv of its own; "
                    "name one: --kubeconfig-from-master servers.tsv"
                )
            from_master = servers
        reach = ClusterOptions(
            kubeconfig=cluster.kubeconfig,
            context=cluster.context,
            from_master=from_master,
            save_kubeconfig=cluster.save_kubeconfig if isinstance(cluster, ClusterArgs) else None,
            env=env,
            user=ssh.user,
            timeout=api_timeout,
            impersonate=cluster.as_user,
            impersonate_groups=tuple(cluster.as_group or ()),
            namespace=cluster.namespace,
        )
    web = None
    if http is not None:
        web = checked_http_options(
            http.url_timeout, http.retries, http.resolve or [], http.ca_file, http.insecure, urls
        )
    return Connections(options, fleet.concurrency, reach, web)


def namespaced(cfg: "Config", config_file: Path | None, reach: "Connections") -> "Config":
    """Return ``cfg`` with the apps' namespace kubectl's way: -n, then --config's, then the context's, then keybuzz.

    The context's namespace is read from the kubeconfig (or the pod's, in cluster); nothing connects.
    """
    from keybuzz_fix.cluster.connect import context_namespace
    from keybuzz_fix.config import sets_namespace

    chosen = reach.cluster.namespace if reach.cluster is not None else None
    if chosen is None and not sets_namespace(config_file) and reach.cluster is not None:
        chosen = context_namespace(reach.cluster)
    return dataclasses.replace(cfg, namespace=chosen) if chosen else cfg
