"""Hostile input: shell-injection payloads never run, on any lab host or on this machine.

Every payload tries to create a marker file (/tmp/kbf-pwned-<token>, or kbf-pwned-<token> in the
remote user's home for payloads that cannot hold a '/'). They go into every servers.tsv column,
every command-line value and every config value that can reach a remote command. The values the
tool checks (hostnames, users, addresses, networks, ports, ENV/ROLE/SUBROLE/FQDN) must be refused
before any connection; the free-text columns (POOL, DOCKER_STACK, CORE, NOTES) are never used in a
command; a UFW comment does reach `ufw … comment '…'` on the host and must arrive quoted, exactly
as written, also through `sudo -n` for a non-root user. After each test the marker is looked for
inside every lab host (host.run) and on this machine.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner, Result

from keybuzz_fix.cli import app
from tests.lab.hosts import SERVERS_TSV_COLUMNS, SUDO_NOPASSWD_USER, HostSpec, Lab

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parent.parent.parent
MARK = f"kbf-pwned-{secrets.token_hex(4)}"
PAYLOADS = (
    f"$(touch /tmp/{MARK})",
    f"`touch /tmp/{MARK}`",
    f";touch /tmp/{MARK}",
    f"; touch /tmp/{MARK};",
    f"&& touch /tmp/{MARK}",
    f"|touch /tmp/{MARK}",
    f"\ntouch /tmp/{MARK}",
    f"'; touch /tmp/{MARK}; '",
    f'"; touch /tmp/{MARK}; "',
    f"$(touch${{IFS}}{MARK})",
    f"`touch${{IFS}}{MARK}`",
    f">/tmp/{MARK}",
    f"\\$(touch /tmp/{MARK})",
)
# Values that look right but carry a payload: what a careless check would let through.
ADDRESS_PAYLOADS = (
    f"fe80::1%$(touch${{IFS}}{MARK})",
    f"fe80::1%`touch${{IFS}}{MARK}`",
    f"198.18.0.11;touch /tmp/{MARK}",
    f"198.18.0.11$(touch /tmp/{MARK})",
)
CHECKED_COLUMNS = ("ENV", "IP_PUBLIQUE", "HOSTNAME", "IP_PRIVEE", "FQDN", "USER_SSH", "ROLE", "SUBROLE")
FREE_COLUMNS = ("POOL", "DOCKER_STACK", "CORE", "NOTES")
runner = CliRunner()


@pytest.fixture(scope="module")
def lab(lab_factory: Callable[..., Lab]) -> Iterator[Lab]:
    """A master and two workers; the first worker also has the passwordless sudo user."""
    with lab_factory(
        [HostSpec("k8s-master-01"), HostSpec("k8s-worker-01", sudo_users=True), HostSpec("k8s-worker-02")]
    ) as lab:
        yield lab
        assert_no_marker(lab)


@pytest.fixture(autouse=True)
def _state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEYBUZZ_FIX_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-kubeconfig"))  # diagnose: the node side only


def assert_no_marker(lab: Lab) -> None:
    """No payload ran: no marker inside any host (its /tmp, root's home, the lab users' homes) nor here."""
    for h in lab.hosts:
        found = h.run(
            f"ls -d /tmp/{MARK}* /root/{MARK}* 2>/dev/null; find {lab.workdir} -name '{MARK}*'", check=False
        ).stdout.split()
        assert not found, f"{h.name}: a payload ran: {found}"
    here = [
        p
        for base in (Path("/tmp"), Path.home(), ROOT, lab.workdir)
        for p in base.glob(f"**/{MARK}*" if base == lab.workdir else f"{MARK}*")
    ]
    assert not here, f"a payload ran on this machine: {here}"


def rows(lab: Lab, **columns: Sequence[str]) -> list[dict[str, str]]:
    """The lab's servers.tsv rows; ``columns`` give per-row values (cycled) for some columns."""
    out = []
    for i, h in enumerate(lab.hosts):
        row = {c: "-" for c in SERVERS_TSV_COLUMNS}
        row.update(
            ENV="prod",
            HOSTNAME=h.name,
            IP_PRIVEE=h.ip,
            USER_SSH="root",
            ROLE="k3s",
            SUBROLE="master" if "master" in h.name else "worker",
        )
        for column, values in columns.items():
            row[column] = values[i % len(values)]
        out.append(row)
    return out


def write_tsv(path: Path, table: list[dict[str, str]]) -> Path:
    path.write_text(
        "\n".join(["\t".join(SERVERS_TSV_COLUMNS)] + ["\t".join(r[c] for c in SERVERS_TSV_COLUMNS) for r in table])
        + "\n"
    )
    return path


def cli(lab: Lab, command: str, servers: Path, *args: str) -> Result:
    ssh = ["--identity", str(lab.identity_file), "--known-hosts", str(lab.known_hosts_file), "--timeout", "5"]
    return runner.invoke(app, [command, str(servers), *ssh, *args])


def refused(result: Result, fragment: str = "") -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    (line,) = result.stderr.splitlines()
    assert line.startswith("keybuzz-fix: error: ") and fragment in line, line
    return line


def added(lab: Lab, name: str) -> list[str]:
    return lab.host(name).run("ufw show added").stdout.splitlines()[1:]


def test_payloads_in_checked_inventory_columns_are_refused_before_any_connection(lab: Lab, tmp_path: Path) -> None:
    cases = 0
    for column in CHECKED_COLUMNS:
        values = PAYLOADS + (ADDRESS_PAYLOADS if column.startswith("IP_") else ())
        for n, payload in enumerate(values):
            table = rows(lab)
            base = table[1][column] if table[1][column] != "-" and payload not in ADDRESS_PAYLOADS else ""
            table[1][column] = base + payload.replace("\n", "\t")  # a TSV field holds no line break
            servers = write_tsv(tmp_path / f"{column}-{n}.tsv", table)
            for command, extra in (("ufw", ["--yes"]), ("overlay", ["--yes"]), ("diagnose", [])):
                refused(cli(lab, command, servers, *extra), str(servers))
                cases += 1
    assert cases == 3 * (len(CHECKED_COLUMNS) * len(PAYLOADS) + 2 * len(ADDRESS_PAYLOADS))
    assert_no_marker(lab)


def test_payloads_in_free_text_columns_never_reach_a_command(lab: Lab, tmp_path: Path) -> None:
    columns = {c: [p.replace("\n", " ") for p in PAYLOADS[i :: len(FREE_COLUMNS)]] for i, c in enumerate(FREE_COLUMNS)}
    columns["NOTES"] = [" ".join(p.replace("\n", " ") for p in PAYLOADS)]  # and every payload in one note
    servers = write_tsv(tmp_path / "servers.tsv", rows(lab, **columns))
    for command, extra in (("ufw", ["--yes", "--source", "198.18.0.0/24"]), ("overlay", ["--yes"]), ("diagnose", [])):
        result = cli(lab, command, servers, *extra, "-o", "json")
        assert "Traceback" not in result.output
        data = json.loads(result.stdout)
        if command != "diagnose":
            assert result.exit_code == 0, result.output
            assert {h["status"] for h in data["hosts"]} <= {"changed", "unchanged"}
        else:
            assert {n["hostname"]: n["status"] for n in data["hosts"]} == dict.fromkeys(
                (h.name for h in lab.hosts), "probed"
            )
    assert_no_marker(lab)


def test_payloads_in_command_line_values_are_refused(lab: Lab, tmp_path: Path) -> None:
    servers = write_tsv(tmp_path / "servers.tsv", rows(lab))
    before = {h.name: added(lab, h.name) for h in lab.hosts}
    cases = 0
    for payload in PAYLOADS:
        for command in ("ufw", "overlay", "diagnose"):
            refused(cli(lab, command, servers, "--user", "root" + payload), "--user")
            refused(cli(lab, command, servers, "--env", "prod" + payload), "no K3s")
            cases += 2
        refused(cli(lab, "ufw", servers, "--yes", "--ports", "31695" + payload), "--ports")
        refused(cli(lab, "ufw", servers, "--yes", "--ports", payload), "--ports")
        refused(cli(lab, "ufw", servers, "--yes", "--source", "198.18.0.0/24" + payload), "--source")
        cases += 3
    for payload in ADDRESS_PAYLOADS:
        refused(cli(lab, "ufw", servers, "--yes", "--source", payload), "--source")
        cases += 1
    assert cases == 9 * len(PAYLOADS) + len(ADDRESS_PAYLOADS)
    assert {h.name: added(lab, h.name) for h in lab.hosts} == before  # nothing was applied
    assert_no_marker(lab)


def test_payloads_in_config_values_are_refused_or_reach_ufw_quoted(lab: Lab, tmp_path: Path) -> None:
    servers = write_tsv(tmp_path / "servers.tsv", rows(lab))
    worker = "k8s-worker-01"
    cases = 0
    for n, payload in enumerate(PAYLOADS + ADDRESS_PAYLOADS):
        for key, value in (
            ("firewall", {"source": payload}),
            ("firewall", {"source": "10.0.0.0/16" + payload}),
            ("firewall", {"ports": [{"port": 31695, "proto": "tcp" + payload}]}),
            ("firewall", {"ports": [{"port": payload}]}),
            ("overlay", {"source": payload}),
            ("overlay", {"pod_cidr": "10.42.0.0/16" + payload}),
            ("overlay", {"service_cidr": payload}),
        ):
            config = tmp_path / f"bad-{n}-{cases}.yaml"
            config.write_text(yaml.safe_dump({key: value}))
            refused(
                cli(lab, "overlay" if key == "overlay" else "ufw", servers, "--yes", "--config", str(config)),
                str(config),
            )
            cases += 1
    assert cases == 7 * (len(PAYLOADS) + len(ADDRESS_PAYLOADS))

    # A comment reaches the host inside `ufw … comment '…'`: every payload ufw can take arrives as written.
    comments = [p for p in PAYLOADS if "'" not in p and "\n" not in p]
    for p in PAYLOADS:
        if p not in comments:  # ufw refuses a quote in a comment, and a line break would split the rule
            config = tmp_path / f"comment-{PAYLOADS.index(p)}.yaml"
            config.write_text(yaml.safe_dump({"firewall": {"ports": [{"port": 31000, "comment": p}]}}))
            refused(cli(lab, "ufw", servers, "--yes", "--config", str(config)), "comment")
    ports = [{"port": 31000 + i, "proto": "tcp", "comment": c} for i, c in enumerate(comments)]
    config = tmp_path / "comments.yaml"
    config.write_text(yaml.safe_dump({"firewall": {"source": "198.18.0.0/24", "ports": ports}}))
    for user in ("root", SUDO_NOPASSWD_USER):
        only = write_tsv(tmp_path / f"{user}.tsv", [r for r in rows(lab) if r["HOSTNAME"] == worker])
        result = cli(lab, "ufw", only, "--yes", "--config", str(config), "--user", user, "-o", "json")
        assert result.exit_code == 0, result.output
    rules = added(lab, worker)
    for i, comment in enumerate(comments):
        line = f"ufw allow from 198.18.0.0/24 to any port {31000 + i} proto tcp comment '{comment}'"
        assert rules.count(line) == 1, (line, rules)  # once: the sudo run found it present
    assert_no_marker(lab)
