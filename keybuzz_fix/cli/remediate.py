"""The commands over the whole remediation: ``validate`` (the scorecard) and ``all`` (every step in order).

Both take the SSH, fleet, cluster and URL option groups, as they reach the workers, the API
server and the sites; the single-step commands are in :mod:`.hosts` and :mod:`.cluster`.
"""

from dataclasses import replace
from typing import Annotated

import typer

from keybuzz_fix.cli import inputs
from keybuzz_fix.cli import options as opt
from keybuzz_fix.cli.connections import connections, namespaced
from keybuzz_fix.cli.parse import percent, seconds
from keybuzz_fix.errors import Outcome
from keybuzz_fix.inventory import Role
from keybuzz_fix.report.output import Output, ScoreFormat, can_ask


def validate(
    ctx: typer.Context,
    servers: opt.ServersArg,
    env: opt.EnvOpt = "prod",
    config: opt.ConfigOpt = None,
    threshold: opt.ThresholdOpt = None,
    strict: opt.StrictOpt = False,
    output: opt.ScoreOutputOpt = ScoreFormat.TEXT,
    *,
    http: opt.HttpArgs,
    extended: opt.ExtendedOpt = False,
    cluster: opt.ClusterArgs,
    ssh: opt.SshArgs,
    fleet: opt.FleetArgs,
) -> Outcome:
    """Score the cluster: eight checks, each with its evidence.

    The checks run at once.

    1 DaemonSets keybuzz-api and keybuzz-front exist; 2 each has ≥ N Running and Ready pods (N = workers
    in servers.tsv); 3 their pod templates have hostNetwork on; 4 ingress-nginx is a hostNetwork
    DaemonSet with ≥ N Running pods; 5 the Services are NodePort 30080 / 30000; 6 both Ingresses exist
    and point at them; 7 both URLs answer HTTP 200 to 2 × N requests each, on their own connections
    (statuses or errors shown); 8 from every worker (over SSH), every other worker's ingress and app
    host ports accept a connection (the failing worker pairs shown).

    Exit 0 when the score reaches the threshold (80 %, or 100 % with --strict), 1 below, 2 on bad input.

    Examples:

    
        keybuzz-fix validate servers.tsv
        keybuzz-fix validate servers.tsv --strict -o junit > scorecard.xml
        keybuzz-fix validate servers.tsv --extended --identity ~/.ssh/id_ed25519
        keybuzz-fix validate servers.tsv --resolve platform.keybuzz.io:443:10.0.0.2 -o json
    """
    from keybuzz_fix.config import load_config
    from keybuzz_fix.flows.validate import run_validate

    cfg = load_config(config)
    reach = connections(env, ssh, fleet=fleet, cluster=cluster, http=http, urls=cfg.validate.urls, servers=servers)
    cfg = namespaced(cfg, config, reach)
    required = percent("--threshold", threshold)
    workers = inputs.nodes(servers, Role.WORKER, env, ssh.user)
    return run_validate(
        opt.console_of(ctx), reach, cfg, workers, threshold=required, strict=strict, extended=extended, output=output
    )


def all_steps(
    ctx: typer.Context,
    servers: opt.ServersArg,
    enable: opt.EnableOpt = False,
    insert_first: opt.InsertFirstOpt = False,
    env: opt.EnvOpt = "prod",
    hosts_limit: opt.LimitOpt = None,
    config: opt.ConfigOpt = None,
    dry_run: opt.DryRunOpt = False,
    yes: opt.YesOpt = False,
    exit_code: opt.ExitCodeOpt = False,  # read by raw_main (the exit-code contract)
    force_conflicts: opt.ForceConflictsOpt = False,
    keep_port: opt.KeepPortOpt = False,
    allow_managed: opt.AllowManagedOpt = False,
    ready_timeout: Annotated[
        float, typer.Option("--ready-timeout", help="convert: seconds to wait for the DaemonSets to be ready.")
    ] = opt.READY_TIMEOUT,
    threshold: opt.ThresholdOpt = None,
    strict: opt.StrictOpt = False,
    output: opt.OutputOpt = Output.TEXT,
    *,
    http: opt.HttpArgs,
    cluster: opt.ClusterArgs,
    ssh: opt.SshArgs,
    fleet: opt.FleetArgs,
) -> Outcome:
    """Run the whole remediation: ufw, convert, ingress, validate.

    First every step plans (nothing changes) and the combined plan is shown; one confirmation
    (or --yes) covers all of it. The steps then run in order, each outcome shown as it finishes.
    The first failing step stops the run, saying what was done and what was not; re-running
    resumes (steps already done are no-ops). --dry-run runs every step's planning only.

    Exit codes: 0 every step ran and the score is 100 %; 3 every step ran and the score passed
    the threshold but is below 100 %; 1 a step failed or the score is below the threshold;
    4 declined at the confirmation; 130 interrupted.

    Examples:

    
        keybuzz-fix all servers.tsv --dry-run
        keybuzz-fix all servers.tsv --kubeconfig ~/.kube/keybuzz.yaml --identity ~/.ssh/id_ed25519 --yes
        keybuzz-fix all servers.tsv --resolve platform.keybuzz.io:443:10.0.0.2 --kubeconfig-from-master
    """
    from keybuzz_fix.config import load_config
    from keybuzz_fix.flows.all import run_all
    from keybuzz_fix.flows.allplan import AllOptions

    cfg = load_config(config)
    reach = connections(env, ssh, fleet=fleet, cluster=cluster, http=http, urls=cfg.validate.urls, servers=servers)
    cfg = namespaced(cfg, config, reach)
    options = AllOptions(
        dry_run=dry_run,
        yes=yes,
        enable=enable,
        insert_first=insert_first,
        ready_timeout=seconds("--ready-timeout", ready_timeout),
        force_conflicts=force_conflicts,
        keep_port=keep_port,
        allow_managed=allow_managed,
        threshold=percent("--threshold", threshold),
        strict=strict,
        json=output is Output.JSON,
        servers=servers,
    )
    hosts = inputs.nodes(servers, Role.WORKER, env, ssh.user)
    can_ask("all", yes=yes, dry_run=dry_run)
    if hosts_limit is not None:  # the ufw step works host by host; convert, ingress and validate see every worker
        from keybuzz_fix.inventory import limit

        options = replace(options, firewall_hosts=tuple(h.hostname for h in limit(hosts, hosts_limit)))
    from keybuzz_fix.report.output import new_console

    console = new_console(stderr=True) if options.json else opt.console_of(ctx)  # stdout carries only the JSON
    return run_all(console, reach, hosts, cfg, options)
