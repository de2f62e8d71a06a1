"""The ssh_config model against the real OpenSSH client: ``ssh -G`` prints what ssh resolved, and so does the model.

hypothesis writes ssh_config files — Host and Match blocks (patterns, negations, pattern lists,
``all``, ``canonical``, ``final``, ``exec``), Include (absolute paths, globs, nested, inside a
block), the options keybuzz-fix uses with good and bad values, ``=`` and quotes and comments,
keywords in any case, tokens (%h %p %r %u %d %n %k %l %L %i %C %% ${VAR}) — and host names to look
up; ``ssh -G -F FILE NAME`` (which never connects) and :class:`SshConfig` must agree on every
option below, or both refuse the file. ``KBF_SSH_G_EXAMPLES`` sets the number of files
(default 300, each looked up under several names).
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from keybuzz_fix.hosts.sshconfig.config import SshConfig
from keybuzz_fix.hosts.sshconfig.misc import SshConfigError
from keybuzz_fix.hosts.sshconfig.tokens import Local

SSH = shutil.which("ssh")
pytestmark = pytest.mark.skipif(SSH is None, reason="needs the OpenSSH client (apt-get install openssh-client)")
EXAMPLES = int(os.environ.get("KBF_SSH_G_EXAMPLES", "300"))
FIELDS = (
    "host",
    "user",
    "hostname",
    "port",
    "identityfile",
    "identitiesonly",
    "proxycommand",
    "proxyjump",
    "userknownhostsfile",
    "globalknownhostsfile",
    "stricthostkeychecking",
    "hostkeyalias",
    "hashknownhosts",
)
DEFAULT_IDS = (
    "~/.ssh/id_rsa",
    "~/.ssh/id_ecdsa",
    "~/.ssh/id_ecdsa_sk",
    "~/.ssh/id_ed25519",
    "~/.ssh/id_ed25519_sk",
    "~/.ssh/id_xmss",
    "~/.ssh/id_dsa",
)
STRICT = {"yes": "true", "no": "false", "ask": "ask", "accept-new": "accept-new"}
ENV_VAR = "KBF_SSH_TEST_VAR"

NAMES = ["web1", "Web1", "db-01", "k8s-worker-01", "k8s-worker-10", "10.0.0.5", "bastion", "a.example.com", "x"]
name = st.sampled_from(NAMES) | st.from_regex(r"[a-zA-Z0-9][a-zA-Z0-9._-]{0,10}", fullmatch=True)


@st.composite
def pattern(draw: st.DrawFn) -> str:
    base = draw(st.sampled_from([*NAMES, "*", "k8s-*", "*.example.com", "10.0.0.*", "?eb1", "web?", "*-0?"]))
    chars = list(base)
    for _ in range(draw(st.integers(0, 2))):
        if chars:
            chars[draw(st.integers(0, len(chars) - 1))] = draw(st.sampled_from("*?"))
    return ("!" if draw(st.integers(0, 4)) == 0 else "") + "".join(chars)


pattern_list = st.lists(pattern(), min_size=1, max_size=3).map(",".join)
VALUES = {
    "HostName": ["%h", "%h.example.com", "10.0.0.9", "Real-Host", "%%h", "host%%", "%h.%h", "%p", "0010.0.0.1"],
    "User": ["ops", "root", "alice", "%u", "ops-admin"],
    "Port": ["22", "2201", "ssh", "0", "65536", "+2202", "http", "nope"],
    "IdentityFile": ["~/.ssh/id_ops", "~/.ssh/%h_%r", "/keys/%C", "%d/k_%u_%p", "~/.ssh/id_ops", "/k/%x"],
    "IdentitiesOnly": ["yes", "no", "true", "false", "maybe"],
    "ProxyCommand": ["nc %h %p", "none", "ssh -W %h:%p jump", "ssh -W [%h]:%p j # comment", "NONE"],
    "ProxyJump": [
        "bastion",
        "ops@bastion:2222",
        "a,b",
        "none",
        "ssh://u@h:2200",
        "j1,ops@j2",
        "[10.0.0.1]:22",
        "10.0.0.1",
        "@x",
        "h:0",
        "none # c",
        "ssh://h/path",
        "j1,,j2",
    ],
    "UserKnownHostsFile": [
        "~/.ssh/kh",
        "~/.ssh/kh_%h %d/kh2",
        "none",
        "/tmp/kh_%p_%r_%n_%k_%L_%l_%i_%u",
        "/tmp/kh_%C",
        f"${{{ENV_VAR}}}/kh",
        "${KBF_SSH_UNSET_VAR}/kh",
        "none /tmp/x",
        "/tmp/%%x",
    ],
    "GlobalKnownHostsFile": ["/etc/kh", "none", "/etc/kh1 /etc/kh2"],
    "StrictHostKeyChecking": ["yes", "no", "ask", "accept-new", "off", "true", "false", "bogus"],
    "HostKeyAlias": ["Alias1", "alias.example.com"],
    "HashKnownHosts": ["yes", "no"],
    "CanonicalizeHostname": ["yes", "no", "always"],
    "Compression": ["yes"],
    "ServerAliveInterval": ["30"],
    "SendEnv": ["LANG LC_*"],
}


@st.composite
def option_line(draw: st.DrawFn) -> str:
    keyword = draw(st.sampled_from(sorted(VALUES)))
    value = draw(st.sampled_from(VALUES[keyword]))
    keyword = draw(st.sampled_from([keyword, keyword.lower(), keyword.upper()]))
    if draw(st.integers(0, 5)) == 0 and " " not in value and '"' not in value:
        value = f'"{value}"'
    sep = draw(st.sampled_from([" ", "\t", "=", " = ", "  "]))
    indent = draw(st.sampled_from(["", "  ", "\t"]))
    comment = " # note" if draw(st.integers(0, 6)) == 0 and keyword.lower() not in ("proxycommand",) else ""
    return f"{indent}{keyword}{sep}{value}{comment}"


@st.composite
def match_line(draw: st.DrawFn) -> str:
    if draw(st.integers(0, 6)) == 0:
        return draw(st.sampled_from(["Match all", "Match canonical all", "Match !all", "Match", "Match host"]))
    criteria = []
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["host", "originalhost", "user", "localuser", "canonical", "final", "exec"]))
        neg = "!" if draw(st.integers(0, 4)) == 0 else ""
        if kind in ("canonical", "final"):
            criteria.append(neg + kind)
        elif kind == "exec":
            criteria.append(
                neg + "exec " + draw(st.sampled_from(["true", "false", '"test %h = web1"', '"test %n = x"']))
            )
        elif kind in ("user", "localuser"):
            users = st.sampled_from(["ops", "root", "alice", "r*", "!root", "*"])
            criteria.append(neg + kind + " " + ",".join(draw(st.lists(users, min_size=1, max_size=2))))
        else:
            criteria.append(neg + kind + " " + draw(pattern_list))
    return "Match " + " ".join(criteria)


@st.composite
def host_line(draw: st.DrawFn) -> str:
    keyword = draw(st.sampled_from(["Host", "host", "HOST"]))
    sep = draw(st.sampled_from([" ", "=", " = "]))
    return keyword + sep + " ".join(draw(st.lists(pattern(), min_size=1, max_size=3)))


@dataclass(frozen=True)
class Files:
    main: list[str]
    included: list[list[str]]  # inc0.conf, inc1.conf, …: file i may include files after it


@st.composite
def config_files(draw: st.DrawFn) -> Files:
    n_inc = draw(st.integers(0, 2))

    def body(index: int, size: int) -> list[str]:
        lines: list[str] = []
        for _ in range(size):
            kind = draw(st.sampled_from(["option"] * 5 + ["host"] * 2 + ["match", "include", "blank"]))
            if kind == "option":
                lines.append(draw(option_line()))
            elif kind == "host":
                lines.append(draw(host_line()))
            elif kind == "match":
                lines.append(draw(match_line()))
            elif kind == "include":
                later = list(range(index + 1, n_inc))
                targets = [f"{{dir}}/inc{i}.conf" for i in later] + ["{dir}/inc*.conf" if index < 0 else "{dir}/none"]
                lines.append("Include " + draw(st.sampled_from(targets)))
            else:
                lines.append(draw(st.sampled_from(["", "# a comment", "   ", "\t# indented comment"])))
        return lines

    main = body(-1, draw(st.integers(1, 12)))
    included = [body(i, draw(st.integers(1, 6))) for i in range(n_inc)]
    return Files(main, included)


def local() -> Local:
    pw = pwd.getpwuid(os.getuid())
    return Local(pw.pw_name, pw.pw_dir, os.getuid(), socket.gethostname())


def ssh_g(config: Path, host: str) -> dict[str, list[str]] | None:
    """What ``ssh -G`` resolved (the fields compared), or None when ssh refuses the config."""
    done = subprocess.run(
        [str(SSH), "-G", "-F", str(config), host],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env={**os.environ, ENV_VAR: "/var/kbf", "HOME": local().home},
    )
    if done.returncode != 0:
        return None
    out: dict[str, list[str]] = {}
    for line in done.stdout.splitlines():
        key, _, value = line.partition(" ")
        if key in FIELDS:
            out.setdefault(key, []).append(value)
    return out


def model_g(config: Path, host: str) -> dict[str, list[str]] | None:
    """The same fields from the model, or None when it refuses the config."""
    os.environ[ENV_VAR] = "/var/kbf"
    cfg = SshConfig([(config, True)], local=local(), required=config)
    try:
        found = cfg.found(host)
        hop = cfg.hop(found)
    except SshConfigError:
        return None
    out = {
        "host": [host],
        "user": [hop.user],
        "hostname": [hop.hostname],
        "port": [str(hop.port)],
        "identityfile": list(hop.identity_files or DEFAULT_IDS),
        "identitiesonly": ["yes" if hop.identities_only else "no"],
        "userknownhostsfile": [" ".join(hop.user_known_hosts) or "none"],
        "globalknownhostsfile": [" ".join(hop.global_known_hosts) or "none"],
        "stricthostkeychecking": [STRICT[hop.strict_host_key_checking]],
        "hashknownhosts": ["yes" if hop.hash_known_hosts else "no"],
    }
    if found.jump is not None:
        out["proxyjump"] = [found.jump.spec()]
    elif found.proxy_command is not None:
        out["proxycommand"] = [found.proxy_command]
    if hop.host_key_alias is not None:
        out["hostkeyalias"] = [hop.host_key_alias]
    return out


def write(tmp: Path, files: Files) -> Path:
    for i, lines in enumerate(files.included):
        path = tmp / f"inc{i}.conf"
        path.write_text("\n".join(lines).replace("{dir}", str(tmp)) + "\n")
        path.chmod(0o600)
    main = tmp / "config"
    main.write_text("\n".join(files.main).replace("{dir}", str(tmp)) + "\n")
    main.chmod(0o600)
    return main


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(files=config_files(), names=st.lists(name, min_size=1, max_size=4, unique=True))
def test_the_model_resolves_as_ssh_dash_g_does(
    tmp_path_factory: pytest.TempPathFactory, files: Files, names: list[str]
) -> None:
    tmp = tmp_path_factory.mktemp("sshg")
    config = write(tmp, files)
    for host in names:
        expected = ssh_g(config, host)
        got = model_g(config, host)
        if expected is None or got is None:
            assert (expected is None) == (got is None), (host, config.read_text(), expected, got)
            event("both refuse the config")
            continue
        event(
            "both resolve: "
            + ("ProxyJump" if "proxyjump" in expected else "ProxyCommand" if "proxycommand" in expected else "direct")
        )
        for key in FIELDS:
            assert got.get(key) == expected.get(key), (key, host, config.read_text())


CASES = [
    # (config, host, field, what ssh -G prints)
    ("Host k8s-worker-*\n  User ops\n  Port 2201\n  ProxyJump bastion\n", "k8s-worker-01", "proxyjump", "bastion"),
    ("Host k8s-worker-*\n  User ops\n", "K8S-WORKER-01", "user", None),  # Host patterns are case-sensitive
    ("Match host k8s-worker-*\n  User ops\n", "K8S-WORKER-01", "user", "ops"),  # Match host is not
    ("Host *\n  User first\nHost web1\n  User second\n", "web1", "user", "first"),  # first obtained wins
    ("Host web1\n  HostName %h.example.com\n", "web1", "hostname", "web1.example.com"),
    ("Host web1\n  ProxyCommand nc %h %p\n  ProxyJump b\n", "web1", "proxycommand", "nc %h %p"),
    ("Host web1\n  ProxyJump a,ops@b:2222\n", "web1", "proxyjump", "a,ops@b:2222"),
    ("Host *\n  HostName real\nMatch final host real\n  User late\n", "web1", "user", "late"),
    ("Host !web1 *\n  User other\n", "web1", "user", None),
    ("Host web1\n  UserKnownHostsFile ~/.ssh/kh_%h_%p_%r\n  Port 2200\n  User u\n", "web1", "userknownhostsfile", None),
]


@pytest.mark.parametrize(("text", "host", "field", "value"), CASES)
def test_worked_examples(tmp_path: Path, text: str, host: str, field: str, value: str | None) -> None:
    config = tmp_path / "config"
    config.write_text(text)
    expected, got = ssh_g(config, host), model_g(config, host)
    assert expected is not None and got is not None
    assert got.get(field) == expected.get(field)
    if value is not None:
        assert expected[field] == [value]
