"""The habits operators bring from kubectl, Ansible and spreadsheets, each tried through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from keybuzz_fix.cli import app

ROOT = Path(__file__).resolve().parent.parent.parent
SERVERS = ROOT / "tests" / "data" / "servers"
EXAMPLE = ROOT / "servers.tsv.example"
runner = CliRunner()

WORKERS = [f"k8s-worker-0{i}" for i in range(1, 6)]


# -- servers.tsv as editors and spreadsheets write it ---------------------------------------------


def test_excel_cp1252_file_is_read_with_a_note_naming_the_encoding():
    raw = (SERVERS / "excel-cp1252.tsv").read_bytes()
    assert b"\xe9" in raw and b"\r\n" in raw  # what Excel writes: Windows-1252, CRLF
    result = runner.invoke(app, ["inventory", str(SERVERS / "excel-cp1252.tsv"), "-o", "json"])
    assert result.exit_code == 0, result.output
    assert [h["hostname"] for h in json.loads(result.stdout)] == WORKERS
    assert result.stderr.strip() == (
        f"keybuzz-fix: note: {SERVERS / 'excel-cp1252.tsv'}: not UTF-8, read as Windows-1252 (cp1252); "
        "save it as UTF-8 to silence this note"
    )


def test_utf8_file_gets_no_note():
    result = runner.invoke(app, ["inventory", str(EXAMPLE), "-o", "json"])
    assert result.exit_code == 0
    assert result.stderr == ""


def test_spreadsheet_export_with_quoted_multiline_cells_is_read():
    path = SERVERS / "spreadsheet-quoted.tsv"
    assert b'"Master K3s #1\n' in path.read_bytes()
    result = runner.invoke(app, ["inventory", str(path), "--role", "all", "-o", "json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert [h["hostname"] for h in data] == [f"k8s-master-0{i}" for i in range(1, 4)] + WORKERS
    assert [h["private_ip"] for h in data][-2:] == ["10.0.0.113", "10.0.0.114"]


def test_cells_keep_tabs_newlines_and_doubled_quotes():
    from keybuzz_fix.inventory import parse_inventory

    text = (
        "ENV\tHOSTNAME\tIP_PRIVEE\tUSER_SSH\tROLE\tSUBROLE\tNOTES\r\n"
        'prod\tw1\t10.0.0.1\troot\tk3s\tworker\t"a\tb\r\nc ""d"""\r\n'
        "prod\tw2\t10.0.0.2\troot\tk3s\tworker\tplain\r\n"
    )
    inv = parse_inventory(text)
    assert [(h.hostname, h.line) for h in inv.hosts] == [("w1", 2), ("w2", 4)]


def test_line_numbers_count_only_newlines_not_u2028():
    path = SERVERS / "broken" / "27-error-after-u2028-in-cell.tsv"
    assert "\u2028" in path.read_text(encoding="utf-8")
    result = runner.invoke(app, ["inventory", str(path)])
    assert result.exit_code == 2
    assert result.stderr.startswith(f"keybuzz-fix: error: {path}:3: IP_PRIVEE '10.0.0.300'")


def test_line_numbers_after_a_multiline_cell_are_the_editors():
    path = SERVERS / "broken" / "26-error-after-multiline-cell.tsv"
    result = runner.invoke(app, ["inventory", str(path)])
    assert result.exit_code == 2
    assert result.stderr.startswith(f"keybuzz-fix: error: {path}:5: IP_PRIVEE '10.0.0.300'")


# -- the exit-code contract of a planning run -------------------------------------------------------

CONVERT = ROOT / "tests" / "data" / "convert"


@pytest.mark.parametrize(
    ("case", "extra", "code"),
    [
        ("01-kubectl-list", [], 0),  # without --exit-code a plan is a success
        ("01-kubectl-list", ["--exit-code"], 2),  # changes pending
        ("06-converted", ["--exit-code"], 0),  # nothing to do
        ("10-refused-no-port-variable", ["--exit-code"], 1),  # an error
        ("14-not-yaml", ["--exit-code"], 1),  # bad input is 1 too: 2 means only "changes pending"
        ("14-not-yaml", [], 2),
    ],
)
def test_convert_from_file_exit_code(case, extra, code):
    result = runner.invoke(app, ["convert", "--from-file", str(CONVERT / case / "state.yaml"), *extra])
    assert result.exit_code == code, result.output


def test_exit_code_bad_command_line_is_1():
    result = runner.invoke(
        app, ["convert", "--from-file", str(CONVERT / "06-converted" / "state.yaml"), "--exit-code", "--bogus"]
    )
    assert result.exit_code == 1
    assert "No such option: --bogus" in result.stderr


@pytest.mark.parametrize("command", ["ufw", "overlay", "convert", "rollback", "ingress", "all"])
def test_every_planning_command_takes_exit_code(command):
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0
    assert "--exit-code" in result.stdout


def test_firewall_result_exit_codes():
    from keybuzz_fix.errors import ExitCode
    from keybuzz_fix.hosts.ufw.run import FirewallResult, HostOutcome, HostStatus
    from keybuzz_fix.inventory import Host

    def run(*statuses):
        hosts = [Host(f"w{i}", f"10.0.0.{i}", None, "root", "prod", "k3s", "worker") for i in range(len(statuses))]
        outcomes = tuple(HostOutcome(h, s) for h, s in zip(hosts, statuses, strict=True))
        return FirewallResult("ufw", outcomes, dry_run=True)

    assert ExitCode.detailed(run(HostStatus.UNCHANGED, HostStatus.UNCHANGED)) == 0
    assert ExitCode.detailed(run(HostStatus.UNCHANGED, HostStatus.PLANNED)) == 2
    assert ExitCode.detailed(run(HostStatus.PLANNED, HostStatus.FAILED)) == 1
    assert ExitCode.of(run(HostStatus.UNCHANGED, HostStatus.PLANNED)) == 0


# -- machine output is complete and round-trips ----------------------------------------------------

GOLDEN = sorted(p.name for p in CONVERT.iterdir() if p.is_dir() and not (p / "error.txt").exists())


def _containers(obj):
    spec = obj["spec"]["template"]["spec"]
    return {c["name"]: c for c in spec.get("initContainers", []) + spec["containers"]}


@pytest.mark.parametrize("case", GOLDEN)
def test_convert_yaml_round_trips_to_the_source_objects(case):
    """`convert --from-file -o yaml | kubectl apply -f -` must carry every env value and reference as found."""
    import yaml

    folder = CONVERT / case
    args = (folder / "args").read_text().split() if (folder / "args").exists() else []
    result = runner.invoke(app, ["convert", "--from-file", str(folder / "state.yaml"), *args, "-o", "yaml"])
    assert result.exit_code == 0, result.output
    assert "<masked>" not in result.stdout
    applied = [d for d in yaml.safe_load_all(result.stdout) if d]
    source = []
    for doc in yaml.safe_load_all((folder / "state.yaml").read_text()):
        source += doc.get("items", [doc]) if isinstance(doc, dict) else []
    # each DaemonSet comes from the Deployment of its name (or is the DaemonSet already there)
    deployments = {o["metadata"]["name"]: o for o in source if o.get("kind") == "DaemonSet"}
    deployments.update({o["metadata"]["name"]: o for o in source if o.get("kind") == "Deployment"})
    daemonsets = [o for o in applied if o["kind"] == "DaemonSet"]
    compared = 0
    for ds in daemonsets:
        before = deployments.get(ds["metadata"]["name"])
        if before is None:
            continue
        old, new = _containers(before), _containers(ds)
        assert set(old) == set(new)
        for name, container in old.items():
            was = {v["name"]: v for v in container.get("env", [])}
            now = {v["name"]: v for v in new[name].get("env", [])}
            assert set(was) <= set(now)
            for var, v in was.items():
                if "valueFrom" in v:  # a Secret or ConfigMap stays a reference
                    assert now[var]["valueFrom"] == v["valueFrom"]
                    compared += 1
                elif now[var].get("value") == v.get("value"):
                    compared += 1
                else:  # only a port variable the tool moves may differ, and only to a port number
                    assert str(now[var]["value"]).isdigit() and str(v.get("value")).isdigit(), (var, v, now[var])
            assert new[name].get("envFrom") == container.get("envFrom")
    assert compared or not any(c.get("env") for d in daemonsets for c in _containers(d).values())


def test_convert_json_carries_the_values_the_text_plan_masks():
    state = str(CONVERT / "03-numeric-probes-affinity" / "state.yaml")
    text = runner.invoke(app, ["convert", "--from-file", state])
    assert "s3cret" not in text.stdout and "--show-values" in text.stdout
    data = json.loads(runner.invoke(app, ["convert", "--from-file", state, "-o", "json"]).stdout)
    assert "s3cret" in json.dumps(data["apply"]) and "<masked>" not in json.dumps(data)


# -- -o json everywhere, one shape -------------------------------------------------------------------

JSON_COMMANDS = ["inventory", "ufw", "overlay", "diagnose", "convert", "rollback", "ingress", "validate", "all"]


@pytest.mark.parametrize("command", JSON_COMMANDS)
def test_every_command_has_o_json(command):
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0
    assert "--output" in result.stdout and "json" in result.stdout


def test_all_o_json_is_one_document_even_when_it_stops():
    kubeconfig = ROOT / "tests" / "data" / "cli" / "kubeconfig-unreachable.yaml"
    result = runner.invoke(app, ["all", str(EXAMPLE), "--dry-run", "-o", "json", "--kubeconfig", str(kubeconfig)])
    assert result.exit_code == 1
    data = json.loads(result.stdout)  # stdout holds the JSON document and nothing else
    assert {"command", "dry_run", "exit_code", "error"} <= set(data)
    assert data["command"] == "all" and data["exit_code"] == 1 and "127.0.0.1:1" in data["error"]
    assert [s["step"] for s in data["steps"]] == ["ufw", "convert", "ingress", "validate"]
    assert {s["status"] for s in data["steps"]} == {"not run"} and data["scorecard"] is None
    assert result.stderr.startswith("keybuzz-fix: error: cannot reach the Kubernetes API")


def test_convert_o_json_has_the_common_keys():
    state = str(CONVERT / "01-kubectl-list" / "state.yaml")
    data = json.loads(runner.invoke(app, ["convert", "--from-file", state, "-o", "json"]).stdout)
    assert (data["command"], data["dry_run"], data["exit_code"]) == ("convert", True, 0)


# -- --limit, as Ansible's -------------------------------------------------------------------------


def _limited(*pattern: str) -> list[str]:
    result = runner.invoke(app, ["inventory", str(EXAMPLE), "--role", "all", "-o", "json", "--limit", *pattern])
    assert result.exit_code == 0, result.output
    return [h["hostname"] for h in json.loads(result.stdout)]


def test_limit_names_globs_lists_and_exclusions():
    assert _limited("k8s-worker-02") == ["k8s-worker-02"]
    assert _limited("K8S-WORKER-02") == ["k8s-worker-02"]  # host names are not case-sensitive
    assert _limited("k8s-worker-0[1-2],k8s-master-01") == ["k8s-master-01", "k8s-worker-01", "k8s-worker-02"]
    assert _limited("k8s-worker-*,!k8s-worker-01,!k8s-worker-05") == ["k8s-worker-02", "k8s-worker-03", "k8s-worker-04"]
    assert _limited("!k8s-master-*") == WORKERS  # only exclusions: everything else
    assert _limited("10.0.0.110") == ["k8s-worker-01"]  # an address, as in IP_PRIVEE


def test_limit_from_a_file(tmp_path):
    retry = tmp_path / "ufw.retry"
    retry.write_text("k8s-worker-03\n\n# a comment\nk8s-worker-01\n")
    assert _limited(f"@{retry}") == ["k8s-worker-01", "k8s-worker-03"]  # the file's order
    assert _limited(f"@{retry},!k8s-worker-01") == ["k8s-worker-03"]


@pytest.mark.parametrize(
    ("pattern", "fragment"),
    [
        ("k8s-wroker-01", "--limit: 'k8s-wroker-01' matches none of the selected hosts"),
        ("k8s-worker-01,!k8s-worker-01", "leaves no host to work on"),
        ("@/nonexistent/ufw.retry", "--limit @/nonexistent/ufw.retry: no such file"),
        (",", "names no host"),
    ],
)
def test_limit_typos_are_errors(pattern, fragment):
    result = runner.invoke(app, ["inventory", str(EXAMPLE), "--limit", pattern])
    assert result.exit_code == 2
    assert fragment in result.stderr and len(result.stderr.splitlines()) == 1


@pytest.mark.parametrize("command", ["inventory", "ufw", "overlay", "diagnose", "all"])
def test_every_host_command_takes_limit(command):
    result = runner.invoke(app, [command, "--help"])
    assert "--limit" in result.stdout


# -- -v / -vv ---------------------------------------------------------------------------------------

UNREACHABLE = ROOT / "tests" / "data" / "cli" / "kubeconfig-unreachable.yaml"


@pytest.mark.parametrize(
    "args",
    [
        ["-v", "ingress", "--dry-run", "--kubeconfig", str(UNREACHABLE)],
        ["ingress", "--dry-run", "--kubeconfig", str(UNREACHABLE), "-v"],  # after the command, as with kubectl
    ],
)
def test_v_traces_each_api_request_on_one_line(args):
    result = runner.invoke(app, args)
    assert result.exit_code == 1
    lines = result.stderr.splitlines()
    assert lines[0].startswith("keybuzz-fix: trace: api GET https://127.0.0.1:1/apis/apps/v1/namespaces/")
    assert "-> no answer" in lines[0]
    assert lines[-1].startswith("keybuzz-fix: error: cannot reach the Kubernetes API")


def test_no_trace_without_v():
    result = runner.invoke(app, ["ingress", "--dry-run", "--kubeconfig", str(UNREACHABLE)])
    assert "trace:" not in result.stderr and len(result.stderr.splitlines()) == 1


def test_traced_bodies_mask_env_values_and_drop_credentials():
    from keybuzz_fix.cluster.rest import _traced_body
    from keybuzz_fix.errors import redact_credentials

    ds = {
        "kind": "DaemonSet",
        "spec": {"template": {"spec": {"containers": [{"name": "a", "env": [{"name": "DB", "value": "pw-9"}]}]}}},
    }
    listed = json.dumps({"kind": "List", "items": [ds, {"kind": "Secret", "data": {"k": "c2VjcmV0"}}]}).encode()
    for body in (ds, listed):
        text = _traced_body(body)
        assert "pw-9" not in text and "c2VjcmV0" not in text and '"name": "DB"' in text
    kubeconfig = "users:\n- user:\n    client-key-data: LS0tS1\n    token: abc.def\n    password: hunter2\n"
    shown = redact_credentials(kubeconfig + "-----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY-----")
    for secret in ("LS0tS1", "abc.def", "hunter2", "MIIE"):
        assert secret not in shown
    assert "client-key-data: <redacted>" in shown and "Authorization: <redacted>" == redact_credentials(
        "Authorization: Bearer xyz"
    )


# -- KEYBUZZ_FIX_* variables, the user's config file, shell completion -------------------------------


def test_env_variables_give_option_defaults_and_the_command_line_wins():
    path = str(SERVERS / "realistic-40.tsv")
    result = runner.invoke(app, ["inventory", path], env={"KEYBUZZ_FIX_ENV": "staging", "KEYBUZZ_FIX_OUTPUT": "json"})
    assert result.exit_code == 0, result.output
    assert [h["env"] for h in json.loads(result.stdout)] == ["staging"]
    result = runner.invoke(app, ["inventory", path, "--env", "prod"], env={"KEYBUZZ_FIX_ENV": "staging"})
    assert "ENV=prod" in result.stdout
    limited = runner.invoke(app, ["inventory", path, "-o", "json"], env={"KEYBUZZ_FIX_LIMIT": "k8s-worker-02"})
    assert [h["hostname"] for h in json.loads(limited.stdout)] == ["k8s-worker-02"]


@pytest.mark.parametrize(
    ("variable", "value", "option"),
    [
        ("KEYBUZZ_FIX_TIMEOUT", "abc", "--timeout"),  # refused by the option's type (click)
        ("KEYBUZZ_FIX_TIMEOUT", "-1", "--timeout"),  # refused by the tool's own check
        ("KEYBUZZ_FIX_CONCURRENCY", "0", "--concurrency"),
    ],
)
def test_a_bad_value_from_the_environment_names_its_variable(variable, value, option):
    argv = ["ufw", str(SERVERS / "realistic-40.tsv"), "--dry-run"]
    result = runner.invoke(app, argv, env={variable: value})
    assert result.exit_code == 2, result.output
    (line,) = result.stderr.splitlines()
    assert option in line and line.endswith(f"(set by {variable} in the environment)"), line
    given = runner.invoke(app, [*argv, option, value], env={variable: value})  # on the line: the line is to blame
    assert given.exit_code == 2 and "in the environment" not in given.stderr, given.stderr


def test_env_verbose_and_no_safety_option_from_the_environment():
    from keybuzz_fix.cli import option_defaults

    group = app_group()
    defaults = option_defaults(group, {"KEYBUZZ_FIX_VERBOSE": "2", "KEYBUZZ_FIX_YES": "1", "KEYBUZZ_FIX_INSECURE": "1"})
    assert defaults["verbose"] == "2"
    assert "yes" not in defaults["ufw"] and "insecure" not in defaults["validate"]
    result = runner.invoke(
        app, ["ingress", "--dry-run", "--kubeconfig", str(UNREACHABLE)], env={"KEYBUZZ_FIX_VERBOSE": "1"}
    )
    assert "keybuzz-fix: trace: api GET" in result.stderr


def app_group():
    import typer.main

    return typer.main.get_command(app)


def test_user_config_file_is_used_when_config_is_absent(tmp_path):
    folder = tmp_path / "keybuzz-fix"
    folder.mkdir()
    (folder / "config.yaml").write_text("namespace: [not, a, name]\n")
    env = {"XDG_CONFIG_HOME": str(tmp_path)}
    state = str(CONVERT / "01-kubectl-list" / "state.yaml")
    result = runner.invoke(app, ["convert", "--from-file", state], env=env)
    assert result.exit_code == 2
    assert result.stderr.startswith(f"keybuzz-fix: error: {folder / 'config.yaml'}")
    explicit = ROOT / "manifests" / "defaults.yaml"
    assert runner.invoke(app, ["convert", "--from-file", state, "--config", str(explicit)], env=env).exit_code == 0
    (folder / "config.yaml").unlink()
    assert runner.invoke(app, ["convert", "--from-file", state], env=env).exit_code == 0


def test_shell_completion():
    import os
    import subprocess
    import sys

    assert "--install-completion" in runner.invoke(app, ["--help"]).stdout
    env = {
        **os.environ,
        "_KEYBUZZ_FIX_COMPLETE": "complete_bash",
        "COMP_WORDS": "keybuzz-fix ufw x --li",
        "COMP_CWORD": "3",
    }
    out = subprocess.run(
        [sys.executable, "-m", "keybuzz_fix"], env=env, capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout
    assert out.split() == ["--limit"]


# -- --kubeconfig-from-master as a flag ------------------------------------------------------------


def test_bare_kubeconfig_from_master_means_the_commands_servers_tsv():
    from keybuzz_fix.cli import _bare_from_master
    from keybuzz_fix.cli.options import FROM_COMMAND_SERVERS

    bare = f"--kubeconfig-from-master={FROM_COMMAND_SERVERS}"
    assert _bare_from_master(["all", "s.tsv", "--kubeconfig-from-master"]) == ["all", "s.tsv", bare]
    assert _bare_from_master(["all", "s.tsv", "--kubeconfig-from-master", "--yes"]) == ["all", "s.tsv", bare, "--yes"]
    kept = ["all", "s.tsv", "--kubeconfig-from-master", "other.tsv"]  # a path is still a path
    assert _bare_from_master(kept) == kept


def test_bare_kubeconfig_from_master_without_servers_is_a_usage_error():
    result = runner.invoke(app, ["convert", "--dry-run", "--kubeconfig-from-master"])
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        "keybuzz-fix: error: --kubeconfig-from-master: this command has no servers.tsv of its own; "
        "name one: --kubeconfig-from-master servers.tsv"
    )


# -- grouped --help ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "sections"),
    [
        ("ufw", ["Options:", "Safety options:", "SSH options:", "Cluster options:"]),
        ("validate", ["Options:", "URL checks options:", "Cluster options:", "SSH options:"]),
        ("convert", ["Options:", "Safety options:", "Cluster options:", "SSH options:"]),
    ],
)
def test_help_shows_the_option_groups(command, sections):
    out = runner.invoke(app, [command, "--help"]).stdout
    assert all(s in out for s in sections), out
    assert out.index("SSH options:") < out.index("\n  --known-hosts ")  # each option under its group
    if "Safety options:" in sections:
        assert out.index("Safety options:") < out.index("\n  --dry-run ") < out.index("Cluster options:")
