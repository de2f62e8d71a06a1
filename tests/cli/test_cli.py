import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from keybuzz_fix.cli import app

ROOT = Path(__file__).parent.parent.parent
EXAMPLE = ROOT / "servers.tsv.example"
runner = CliRunner()


def test_help_lists_commands_with_summaries():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("inventory", "ufw"):
        assert command in result.output


def test_help_does_not_import_paramiko_or_kubernetes():
    code = (
        "import sys; from keybuzz_fix.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit as e:\n    assert e.code == 0, e.code\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('paramiko', 'kubernetes', 'yaml'))\n"
        "print('HEAVY', heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert "HEAVY []" in out


def test_python_dash_m_and_version():
    out = subprocess.run(
        [sys.executable, "-m", "keybuzz_fix", "--version"], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert out.stdout.startswith("keybuzz-fix ")


def test_inventory_json():
    result = runner.invoke(app, ["inventory", str(EXAMPLE), "-o", "json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert [h["hostname"] for h in data] == [f"k8s-worker-0{i}" for i in range(1, 6)]
    assert set(data[0]) == {"hostname", "private_ip", "public_ip", "user", "role", "subrole", "env"}


def test_inventory_masters_text():
    result = runner.invoke(app, ["inventory", str(EXAMPLE), "--role", "master"])
    assert result.exit_code == 0
    assert "k8s-master-03" in result.output and "k8s-worker-01" not in result.output


def test_error_is_one_line_and_exit_2(tmp_path):
    result = runner.invoke(app, ["inventory", str(tmp_path / "missing.tsv")])
    assert result.exit_code == 2
    assert result.output.strip() == f"keybuzz-fix: error: {tmp_path / 'missing.tsv'}: no such file"


def test_debug_shows_the_exception(tmp_path):
    result = runner.invoke(app, ["--debug", "inventory", str(tmp_path / "missing.tsv")])
    assert result.exit_code != 0
    assert type(result.exception).__name__ == "InputError"


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["ufw", str(EXAMPLE), "--ports", "abc"], "--ports: 'abc' is not a port number"),
        (["ufw", str(EXAMPLE), "--ports", "22/tcp"], "22 is SSH"),
        (["ufw", str(EXAMPLE), "--source", "10.0.0.300/16"], "--source"),
        (["ufw", str(EXAMPLE), "--timeout", "-1"], "--timeout must be more than 0"),
        (["ufw", str(EXAMPLE), "--concurrency", "0"], "--concurrency must be between 1 and 512"),
        (["ufw", str(EXAMPLE), "--user", "root;id"], "--user 'root;id' is not a plain user name"),
        (["inventory", str(EXAMPLE), "--role", "boss"], "--role"),
    ],
)
def test_bad_cli_values_are_usage_errors(args, fragment):
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert fragment in result.output
    assert "Traceback" not in result.output


def test_ufw_without_tty_or_yes_refuses_before_touching_anything(tmp_path):
    # stdin is not a terminal and there is no --yes: the run could never ask, so it stops before
    # reading any host or the cluster (tests/cli/test_outage.py proves that no connection is made).
    result = runner.invoke(app, ["ufw", str(EXAMPLE), "--known-hosts", str(tmp_path / "none"), "-o", "json"])
    assert result.exit_code == 2
    assert result.stdout == ""
    assert "ufw asks before it changes anything, but stdin is not a terminal: pass --yes" in result.stderr
