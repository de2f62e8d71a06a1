"""The whole bad-input corpus through the real CLI: one line on stderr, the right exit code, no traceback.

Every case runs as ``python -m keybuzz_fix …`` in a subprocess, so the exit code and stderr are
what an operator sees. The corpus is the union of:

- tests/data/cli/CASES: command-line values and input files (kubeconfigs, states, backups);
- tests/data/servers/broken: malformed servers.tsv files (with their EXPECTED errors);
- tests/data/config: malformed --config files (with their EXPECTED errors);
- tests/data/convert/*/error.txt: --from-file states that are malformed or refused.

Each process gets an empty HOME (no ~/.ssh/known_hosts, no ~/.kube/config) and no KUBECONFIG,
so a case that got past its input checks could not reach any host or cluster: it would fail
with another message and exit code, never touch the network.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
DATA = ROOT / "tests" / "data"
CLI = DATA / "cli"
GOOD_STATE = DATA / "convert" / "01-kubectl-list" / "state.yaml"
PREFIX = "keybuzz-fix: error: "


@dataclass(frozen=True)
class Case:
    name: str
    code: int
    fragment: str
    args: tuple[str, ...]
    names: str = ""  # the input the line must name (a path), when not already in the fragment


def _table(path: Path) -> list[list[str]]:
    return [
        line.split("\t")
        for line in path.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]


def cli_cases(tmp: Path) -> list[Case]:
    places = {
        "data": str(DATA),
        "cli": str(CLI),
        "example": str(ROOT / "servers.tsv.example"),
        "state": str(GOOD_STATE),
        "kubeconfig": str(CLI / "kubeconfig-unreachable.yaml"),
        "missing": str(tmp / "does-not-exist"),
        "tmp": str(tmp / "{case}"),
    }
    cases = []
    for name, code, fragment, args in _table(CLI / "CASES"):
        fill = {k: v.replace("{case}", name) for k, v in places.items()}
        cases.append(Case(f"cli/{name}", int(code), fragment.format(**fill), tuple(shlex.split(args.format(**fill)))))
    return cases


def servers_cases() -> list[Case]:
    folder = DATA / "servers" / "broken"
    cases = []
    for name, line, fragment in _table(folder / "EXPECTED"):
        where = str(folder / name) + ("" if line == "-" else f":{line}")
        cases.append(Case(f"servers/{name}", 2, fragment, ("inventory", str(folder / name)), names=where))
    return cases


def config_cases() -> list[Case]:
    folder = DATA / "config"
    return [
        Case(
            f"config/{name}",
            2,
            fragment,
            ("convert", "--from-file", str(GOOD_STATE), "--config", str(folder / name)),
            names=str(folder / name),
        )
        for name, fragment in _table(folder / "EXPECTED")
    ]


def state_cases() -> list[Case]:
    cases = []
    for error in sorted((DATA / "convert").glob("*/error.txt")):
        code, *needles = error.read_text(encoding="utf-8").splitlines()
        state = error.parent / "state.yaml"
        cases.append(
            Case(
                f"state/{error.parent.name}",
                int(code),
                needles[0],
                ("convert", "--from-file", str(state)),
                names=str(state),
            )
        )
    return cases


def run(case: Case, tmp: Path) -> subprocess.CompletedProcess[str]:
    home = tmp / case.name.replace("/", "_")
    home.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KUBECONFIG", "KEYBUZZ_FIX_", "XDG_"))}
    env.update(
        HOME=str(home),
        KEYBUZZ_FIX_STATE_DIR=str(tmp / case.name.split("/", 1)[1] / "state"),
        PYTHONWARNINGS="default",
        COLUMNS="120",
    )
    return subprocess.run(
        [sys.executable, "-m", "keybuzz_fix", *case.args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        timeout=60,
    )


def problems(case: Case, result: subprocess.CompletedProcess[str]) -> list[str]:
    found = []
    lines = result.stderr.splitlines()
    if result.returncode != case.code:
        found.append(f"exit {result.returncode}, expected {case.code}")
    if "Traceback" in result.stdout + result.stderr:
        found.append("a traceback")
    if len(lines) != 1 or not lines[0].startswith(PREFIX):
        found.append(f"{len(lines)} line(s) on stderr, expected one '{PREFIX}…' line")
    elif case.fragment not in lines[0]:
        found.append(f"the line lacks {case.fragment!r}")
    elif case.names and case.names not in lines[0]:
        found.append(f"the line does not name {case.names}")
    if case.code == 2 and result.stdout.strip():  # bad input stops before any plan is shown
        found.append("output on stdout")
    return found


def test_every_bad_input_gives_one_line_the_right_exit_code_and_no_traceback(tmp_path: Path) -> None:
    cases = cli_cases(tmp_path) + servers_cases() + config_cases() + state_cases()
    assert len({c.name for c in cases}) == len(cases)
    assert len(cases) >= 100, len(cases)
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda c: run(c, tmp_path), cases))
    failures = []
    for case, result in zip(cases, results, strict=True):
        found = problems(case, result)
        if found:
            shown = (result.stderr.strip() or result.stdout.strip())[-600:]
            failures.append(f"{case.name} ({shlex.join(case.args)}): {'; '.join(found)}\n    {shown}")
    assert not failures, f"{len(failures)} of {len(cases)} cases:\n" + "\n".join(failures)


def test_the_cli_table_is_well_formed() -> None:
    rows = _table(CLI / "CASES")
    assert all(len(r) == 4 and r[1] in ("1", "2") for r in rows), [r for r in rows if len(r) != 4]
    assert len({r[0] for r in rows}) == len(rows)
