"""The SSH-side commands: ``inventory``, ``ufw``, ``overlay`` and ``diagnose``."""

from pathlib import Path
from typing import Annotated

import typer

from keybuzz_fix.cli import inputs
from keybuzz_fix.cli import options as opt
from keybuzz_fix.cli.connections import connections
from keybuzz_fix.cli.parse import parse_ports, parse_source
from keybuzz_fix.errors import Outcome
from keybuzz_fix.inventory import Role
from keybuzz_fix.report.output import Output, can_ask


def inventory(
    ctx: typer.Context,
    servers: opt.ServersArg,
    role: opt.RoleOpt = Role.WORKER,
    env: opt.EnvOpt = "prod",
    hosts_limit: opt.LimitOpt = None,
    output: opt.OutputOpt = Output.TEXT,
) -> None:
    """List the K3s nodes selected from servers.tsv.

    Reads the file only: touches no network.

    Examples:

    
        keybuzz-fix inventory servers.tsv
        keybuzz-fix inventory servers.tsv --role all -o json
    """
    from keybuzz_fix.report.hosts import show_inventory

    show_inventory(opt.console_of(ctx), inputs.nodes(servers, role, env, hosts=hosts_limit), role, env, output)


def ufw(
    ctx: typer.Context,
    servers: opt.ServersArg,
    ports: Annotated[
        str | None,
        typer.Option(
            "--ports",
            help="Open exactly these ports, e.g. 31695/tcp,80/tcp (default: the ports the ingress traffic "
            "arrives on, read from the cluster).",
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
    enable: opt.EnableOpt = False,
    insert_first: opt.InsertFirstOpt = False,
    env: opt.EnvOpt = "prod",
    hosts_limit: opt.LimitOpt = None,
    dry_run: opt.DryRunOpt = False,
    yes: opt.YesOpt = False,
    exit_code: opt.ExitCodeOpt = False,  # read by raw_main (the exit-code contract)
    *,
    ssh: opt.SshArgs,
    fleet: opt.FleetArgs,
    cluster: opt.ClusterReadArgs,
    output: opt.OutputOpt = Output.TEXT,
    config: opt.ConfigOpt = None,
) -> Outcome:
    """Open in UFW, on every worker, the ports the ingress traffic arrives on.

    From the private network: the ingress-nginx NodePorts (31695, 32720) the load balancers
    connect to; the ports kube-proxy translates them to before UFW sees the packet (ingress-nginx's
    host ports 80, 443, on this worker or another); and the apps' host ports (8080, 3000), which
    ingress-nginx on every worker proxies to. The ports are read from the cluster (the ingress
    Service, its controller, the apps' DaemonSets or what convert will make); without a usable
    kubeconfig, from the config, and the plan says so. Each rule's purpose is shown.

    Reads each worker's rules, shows the plan, asks once, applies and reads back.

    Each port is judged as UFW decides it (first matching rule, per IPv4/IPv6 list, limit is not
    open, then the default policy): already open (by which rule or policy), added, or blocked by an
    earlier rule, named (exit 1). --insert-first puts the allow rules at the top instead. Nothing
    is removed or reordered; UFW is only enabled with --enable, after an SSH allow rule.

    Examples:

    \b
        keybuzz-fix ufw servers.tsv --dry-run
        keybuzz-fix ufw servers.tsv --kubeconfig ~/.kube/keybuzz.yaml --yes -o json
        keybuzz-fix ufw servers.tsv --ports 31695/tcp --source 10.0.0.0/16 --identity ~/.ssh/id_ed25519
    """
    from keybuzz_fix.config import load_config
    from keybuzz_fix.flows.firewall import run_firewall, worker_rules
    from keybuzz_fix.hosts.ufw.run import ports_given

    cfg = load_config(config)
    allowed_from = parse_source(source) if source is not None else cfg.firewall.source
    given = parse_ports(ports) if ports is not None else None
    hosts = inputs.nodes(servers, Role.WORKER, env, ssh.user, hosts_limit)
    reach = connections(env, ssh, fleet=fleet, cluster=cluster, api_timeout=max(fleet.timeout, 10.0), servers=servers)
    can_ask("ufw", yes=yes, dry_run=dry_run)
    wanted = ports_given(given, allowed_from) if given is not None else worker_rules(reach, cfg, source=allowed_from)
    return run_firewall(
        opt.console_of(ctx),
        reach,
        command="ufw",
        hosts=hosts,
        wanted=wanted,
        enable=enable,
        insert_first=insert_first,
        dry_run=dry_run,
        yes=yes,
        output=output,
    )


def overlay(
    ctx: typer.Context,
    servers: opt.ServersArg,
    enable: opt.EnableOpt = False,
    insert_first: opt.InsertFirstOpt = False,
    checksum_offload_off: Annotated[
        bool,
        typer.Option(
            "--checksum-offload-off",
            help="Also turn off tx-checksum-ip-generic on flannel.1 (ethtool) and keep it off with a udev rule: "
            "the workaround for the VXLAN checksum-offload bug of kernels older than 5.7.",
        ),
    ] = False,
    env: opt.EnvOpt = "prod",
    hosts_limit: opt.LimitOpt = None,
    dry_run: opt.DryRunOpt = False,
    yes: opt.YesOpt = False,
    exit_code: opt.ExitCodeOpt = False,  # read by raw_main (the exit-code contract)
    *,
    ssh: opt.SshArgs,
    fleet: opt.FleetArgs,
    output: opt.OutputOpt = Output.TEXT,
    config: opt.ConfigOpt = None,
) -> Outcome:
    """Let Flannel's VXLAN through UFW on every K3s node.

    Masters and workers alike.

    Adds, where missing: allow 8472/udp from the private network, allow from the pod network and
    allow from the service network (overlay.* in the config). Same run as `ufw`: reads each node,
    shows the plan, asks once, applies and reads back; nothing is removed or reordered.

    Examples:

    
        keybuzz-fix overlay servers.tsv --dry-run
        keybuzz-fix overlay servers.tsv --yes -o json
        keybuzz-fix overlay servers.tsv --yes --checksum-offload-off
    """
    from keybuzz_fix.config import load_config
    from keybuzz_fix.flows.firewall import run_firewall
    from keybuzz_fix.hosts.flannel.plan import OFFLOAD, overlay_wanted

    cfg = load_config(config)
    hosts = inputs.nodes(servers, Role.ALL, env, ssh.user, hosts_limit)
    reach = connections(env, ssh, fleet=fleet)
    can_ask("overlay", yes=yes, dry_run=dry_run)
    return run_firewall(
        opt.console_of(ctx),
        reach,
        command="overlay",
        hosts=hosts,
        wanted=overlay_wanted(cfg.overlay),
        enable=enable,
        insert_first=insert_first,
        dry_run=dry_run,
        yes=yes,
        output=output,
        extra=OFFLOAD if checksum_offload_off else None,
    )


def diagnose(
    ctx: typer.Context,
    servers: Annotated[
        Path | None,
        typer.Argument(help="The operator's servers.tsv inventory (not with --from-dir).", show_default=False),
    ] = None,
    env: opt.EnvOpt = "prod",
    hosts_limit: opt.LimitOpt = None,
    collect_script: Annotated[
        bool,
        typer.Option(
            "--collect-script",
            help="Print the read-only node script (POSIX sh, about 10 s) for these nodes, to run by hand: "
            'sh collect.sh > "$(hostname)".txt on every node, at the same time.',
        ),
    ] = False,
    from_dir: Annotated[
        Path | None,
        typer.Option(
            "--from-dir",
            help="Judge what the nodes' scripts printed: DIR/<HOSTNAME>.txt, DIR/nodes.yaml (kubectl get nodes "
            "-o yaml), optional DIR/cluster.yaml (kubectl get svc,endpoints,networkpolicy,pods -A -o yaml).",
            show_default=False,
        ),
    ] = None,
    *,
    ssh: opt.SshArgs,
    fleet: opt.FleetArgs,
    cluster: opt.ClusterReadArgs,
    output: opt.OutputOpt = Output.TEXT,
    config: opt.ConfigOpt = None,
) -> Outcome | None:
    """Find why ClusterIP and DNS time out: every known cause, seen from where the pods stand.

    Read-only: changes nothing.

    On every K3s node (over SSH, in parallel) one script probes from inside a pod's network
    namespace and from the node: a pod on each other node, the kubernetes Service, CoreDNS by
    ClusterIP and by pod IP, a NodePort, the underlay and the VTEPs (full-size don't-fragment
    pings too), UdpInCsumErrors before and after; and gathers what each cause needs (UFW,
    iptables in both backends, firewalld, nftables, br_netfilter, the VXLAN devices, MTUs,
    offloads, CoreDNS's logs). The API adds Flannel's annotations, CoreDNS's endpoints and the
    NetworkPolicies. Causes are ranked by how well they explain the paths that fail; a missing
    tool is "not checked", never a pass. Exit code 0 when healthy, 1 otherwise.

    Examples:

    \b
        keybuzz-fix diagnose servers.tsv
        keybuzz-fix diagnose servers.tsv --kubeconfig-from-master -o json
        keybuzz-fix diagnose --collect-script servers.tsv > collect.sh
        keybuzz-fix diagnose --from-dir captures/ -o json
    """
    from keybuzz_fix.config import load_config
    from keybuzz_fix.errors import UsageError
    from keybuzz_fix.flows.diagnose import print_collect_script, run_diagnose, run_from_dir

    if from_dir is not None:
        if servers is not None or collect_script:
            raise UsageError("--from-dir judges captures: give no servers.tsv and no --collect-script with it")
        return run_from_dir(opt.console_of(ctx), from_dir, output)
    if servers is None:
        raise UsageError("diagnose needs a servers.tsv (or --from-dir DIR)")
    load_config(config)  # a broken --config is refused here as by every command; diagnose reads the nodes
    hosts = inputs.nodes(servers, Role.ALL, env, ssh.user, hosts_limit)
    if collect_script:
        print_collect_script(hosts)
        return None
    reach = connections(env, ssh, fleet=fleet, cluster=cluster, api_timeout=max(fleet.timeout, 10.0), servers=servers)
    return run_diagnose(opt.console_of(ctx), reach, hosts, output)
