"""`overlay` and `diagnose` on the command line: help, and values refused before any SSH."""

from pathlib import Path

import pytest
from typer.testing import CliRunner

from keybuzz_fix.cli import app

ROOT = Path(__file__).parent.parent.parent
EXAMPLE = ROOT / "servers.tsv.example"
runner = CliRunner()


def test_help_lists_overlay_and_diagnose():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "overlay" in result.output and "diagnose" in result.output
    overlay = runner.invoke(app, ["overlay", "--help"])
    assert overlay.exit_code == 0 and "--checksum-offload-off" in overlay.output and "Examples" in overlay.output
    diagnose = runner.invoke(app, ["diagnose", "--help"])
    assert diagnose.exit_code == 0 and "--kubeconfig-from-master" in diagnose.output


@pytest.mark.parametrize(
    ("command", "extra", "fragment"),
    [
        ("overlay", ["--timeout", "-1"], "--timeout must be more than 0"),
        ("overlay", ["--concurrency", "0"], "--concurrency must be between"),
        ("overlay", ["--user", "$(touch /tmp/pwned)"], "is not a plain user name"),
        ("diagnose", ["--timeout", "0"], "--timeout must be more than 0"),
        ("diagnose", ["--kubeconfig", "k", "--kubeconfig-from-master", "s"], "exclude each other"),
        ("diagnose", ["--env", "nowhere"], "no K3s node found"),
    ],
)
@pytest.mark.usefixtures("state_dir")
def test_bad_values_are_usage_errors(command, extra, fragment, tmp_path):
    result = runner.invoke(app, [command, str(EXAMPLE), "--known-hosts", str(tmp_path / "kh"), *extra])
    assert result.exit_code == 2, result.output
    assert fragment in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("key", ["source", "pod_cidr", "service_cidr"])
@pytest.mark.usefixtures("state_dir")
def test_overlay_refuses_to_open_the_pod_network_to_anyone(key, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(f"overlay:\n  {key}: any\n")
    for command in ("overlay", "diagnose"):
        result = runner.invoke(app, [command, str(EXAMPLE), "--config", str(config)])
        assert result.exit_code == 2, result.output
        assert f"overlay.{key} is 'any'" in result.output


@pytest.mark.usefixtures("state_dir")
def test_overlay_bad_config_cidr(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("overlay:\n  pod_cidr: 198.19.0.1/16\n")
    result = runner.invoke(app, ["overlay", str(EXAMPLE), "--config", str(config), "--dry-run"])
    assert result.exit_code == 2 and "overlay.pod_cidr" in result.output
