"""Offline convert (--from-file) against golden files: input state → the exact objects to apply.

Each folder of tests/data/convert/ holds a state.yaml and either expected.yaml + expected.json
(the objects convert would apply, with --show-values) or error.txt (the exit code, then strings
the one-line error must contain). An ``args`` file adds command-line arguments. To regenerate the
expected files after a deliberate change, run with KEYBUZZ_FIX_REGEN_GOLDEN=1 and review the diff.
"""

import json
import os
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from keybuzz_fix.cli import app

DATA = Path(__file__).parent.parent / "data" / "convert"
CASES = sorted(p.name for p in DATA.iterdir() if p.is_dir())
REGEN = os.environ.get("KEYBUZZ_FIX_REGEN_GOLDEN") == "1"
runner = CliRunner()


def _run(case: str, *extra: str):
    folder = DATA / case
    args = (folder / "args").read_text().split() if (folder / "args").exists() else []
    return runner.invoke(app, ["convert", "--from-file", str(folder / "state.yaml"), *args, *extra])


@pytest.mark.parametrize("case", [c for c in CASES if not (DATA / c / "error.txt").exists()])
def test_golden_objects(case):
    folder = DATA / case
    as_yaml = _run(case, "-o", "yaml", "--show-values")
    as_json = _run(case, "-o", "json", "--show-values")
    assert as_yaml.exit_code == 0, as_yaml.output
    assert as_json.exit_code == 0, as_json.output
    if REGEN:
        (folder / "expected.yaml").write_text(as_yaml.stdout)
        (folder / "expected.json").write_text(as_json.stdout)
    assert as_yaml.stdout == (folder / "expected.yaml").read_text()
    assert json.loads(as_json.stdout) == json.loads((folder / "expected.json").read_text())
    # The YAML stream and the JSON "apply" list are the same objects, DaemonSets first.
    objects = [d for d in yaml.safe_load_all(as_yaml.stdout) if d]
    assert objects == json.loads(as_json.stdout)["apply"]
    kinds = [o["kind"] for o in objects]
    assert kinds == sorted(kinds, key=lambda k: k != "DaemonSet")


@pytest.mark.parametrize("case", [c for c in CASES if (DATA / c / "error.txt").exists()])
def test_golden_refusals(case):
    code, *needles = (DATA / case / "error.txt").read_text().splitlines()
    result = _run(case, "-o", "json")
    assert result.exit_code == int(code), result.output
    line = result.stderr.strip()
    assert line.startswith("keybuzz-fix: error: ") and "\n" not in line
    assert str(DATA / case / "state.yaml") in line
    for needle in needles:
        assert needle in line
    if result.exit_code == 1:  # refused: one JSON document that applies nothing and says why
        report = json.loads(result.stdout)
        assert report["exit_code"] == 1 and report["apply"] == [] and report["delete"] == []
        assert report["refusals"] and report["error"] == line.removeprefix("keybuzz-fix: error: ")
    else:  # bad input: stopped before any plan
        assert result.stdout == ""
    assert "Traceback" not in result.output


SERVERS = (
    "ENV\tIP_PUBLIQUE\tHOSTNAME\tIP_PRIVEE\tFQDN\tUSER_SSH\tPOOL\tROLE\tSUBROLE\n"
    "prod\t203.0.113.1\tmaster-a\t10.0.0.1\tm.example\troot\tk3s\tk3s\tmaster\n"
    "prod\t203.0.113.2\t{worker}\t10.0.0.2\tw.example\troot\tk3s\tk3s\tworker\n"
)


@pytest.mark.parametrize("worker,refused", [("worker-a", True), ("worker-b", False)])
def test_servers_tsv_names_the_workers_to_reach(tmp_path, worker, refused):
    """19-refused-worker-left-out: keybuzz-front does not tolerate worker-a's taint; servers.tsv's workers count."""
    servers = tmp_path / "servers.tsv"
    servers.write_text(SERVERS.format(worker=worker))
    state = DATA / "19-refused-worker-left-out" / "state.yaml"
    result = runner.invoke(app, ["convert", str(servers), "--from-file", str(state), "-o", "json"])
    if refused:
        assert result.exit_code == 1
        assert (
            "keybuzz-front: its DaemonSet would leave out worker(s) worker-a (servers.tsv): taint "
            "dedicated=api:NoSchedule is not tolerated" in result.stderr
        )
    else:
        assert result.exit_code == 0, result.output
        assert not any("worker" in w for w in json.loads(result.stdout)["warnings"])


def test_allow_managed_is_documented():
    result = runner.invoke(app, ["convert", "--help"])
    assert "--allow-managed" in result.stdout and "[servers]" in result.stdout
    assert "--allow-managed" in runner.invoke(app, ["all", "--help"]).stdout
