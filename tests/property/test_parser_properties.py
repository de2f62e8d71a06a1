"""Every reader of outside text, fed anything: it yields a result or the tool's own error, nothing else.

The inputs are grown from real samples (captured ``ufw``, ``ip``, ``ethtool``, ``ping`` output, a
kubectl state file, the shipped config) by hypothesis: words replaced with odd ones (non-ASCII
digits, quotes, shell metacharacters, section marks), lines dropped, duplicated or cut short, values
swapped for values of another type. test_inventory_properties.py and test_firewall_properties.py feed
random bytes and word soup to the servers.tsv and ``ufw show added`` parsers; this adds grammar-aware
``ufw status verbose`` and ``show added`` text, the node probes, the apply transcript, the
--from-file / backup reader with the whole offline convert behind it, the config and kubeconfig
loaders, and the command-line value parsers.
"""

from __future__ import annotations

import copy
import io
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from rich.console import Console

from keybuzz_fix import config
from keybuzz_fix.checks import http as probe
from keybuzz_fix.checks.diagnose import Cause, ClusterView, NodeView, find_causes
from keybuzz_fix.cli.parse import parse_ports, parse_source
from keybuzz_fix.cluster.connect import from_kubeconfig
from keybuzz_fix.errors import KeybuzzFixError
from keybuzz_fix.flows.convert import run_offline
from keybuzz_fix.hosts.flannel import capture
from keybuzz_fix.hosts.flannel import facts as nodefacts
from keybuzz_fix.hosts.flannel import plan as overlay
from keybuzz_fix.hosts.sections import MARK
from keybuzz_fix.hosts.ufw.apply import APPLY_MARK, parse_apply
from keybuzz_fix.hosts.ufw.facts import parse_show_added, parse_status, parse_ufw_facts
from keybuzz_fix.hosts.ufw.plan import plan_rules
from keybuzz_fix.hosts.ufw.rules import ParseError, UfwRule, parse_rule_command
from keybuzz_fix.report.output import PlanOutput

DATA = Path(__file__).parent.parent / "data"
DIAGNOSE = DATA / "diagnose"
STATUS = (DATA / "ufw" / "status-verbose-mixed.txt").read_text()
ADDED = (DATA / "ufw" / "show-added-mixed.txt").read_text()
STATE = (DATA / "convert" / "01-kubectl-list" / "state.yaml").read_text()
SAMPLES = {str(p.relative_to(DIAGNOSE)): p.read_text() for p in sorted(DIAGNOSE.glob("**/*.txt"))}
FAST = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Words that break naive parsers: non-ASCII digits (str.isdigit() is True, int() refuses some),
# quotes, shell metacharacters, the probe's own section marks, huge and negative numbers.
ODD = st.sampled_from(
    [
        "²",
        "٣",
        "１２",
        "-1",
        "0",
        "99999999999999999999",
        "nan",
        "'",
        '"',
        "`id`",
        "$(id)",
        ";",
        "\\",
        "\t",
        "",
        " ",
        "#",
        ":",
        "/",
        "%",
        "mtu",
        "id",
        "dev",
        "local",
        "dstport",
        "via",
        "src",
        "Status:",
        "Default:",
        "(v6)",
        MARK,
        f"{MARK} end",
        APPLY_MARK,
        f"{APPLY_MARK} 0",
        f"{APPLY_MARK} x y z",
        "ALLOW",
        "IN",
        "Anywhere",
        "on",
        "off",
        "[fixed]",
        "comment",
        "fe80::1%eth0",
        "10.0.0.300",
        "::",
        "rc=0",
        "Name:",
        "Address:",
    ]
)
TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=30)
WORD = st.one_of(ODD, TEXT)


@st.composite
def mutated(draw: st.DrawFn, sample: str) -> str:
    """Return ``sample`` with words replaced, lines dropped or duplicated, and maybe cut short."""
    lines = sample.splitlines()
    for _ in range(draw(st.integers(0, 6))):
        if not lines:
            break
        i = draw(st.integers(0, len(lines) - 1))
        action = draw(st.sampled_from(["word", "word", "word", "drop", "dup", "insert"]))
        words = lines[i].split(" ")
        if action == "word":
            words[draw(st.integers(0, len(words) - 1))] = draw(WORD)
            lines[i] = " ".join(words)
        elif action == "drop":
            del lines[i]
        elif action == "dup":
            lines.insert(i, lines[i])
        else:
            lines.insert(i, " ".join(draw(st.lists(WORD, max_size=5))))
    text = "\n".join(lines)
    if draw(st.booleans()):
        text = text[: draw(st.integers(0, len(text)))]
    return text


# -- ufw status verbose, ufw show added, the probe and the apply transcript --------------------


def _status(draw: st.DrawFn) -> tuple[str, bool]:
    active = draw(st.booleans())
    comment = "\n".join(
        draw(
            st.lists(
                st.one_of(
                    ODD, st.sampled_from(["Status: active", "Status: inactive", "Default: allow (incoming)"]), TEXT
                ),
                max_size=4,
            )
        )
    )
    rule = f"31695/tcp                  ALLOW IN    10.0.0.0/16                # {comment}"
    text = (
        f"Status: {'active' if active else 'inactive'}\nLogging: on (low)\n"
        f"Default: {draw(st.sampled_from(['deny', 'allow', 'reject']))} (incoming), allow (outgoing), "
        f"disabled (routed)\nNew profiles: skip\n\nTo                         Action      From\n"
        f"--                         ------      ----\n{rule}\n"
    )
    return text, active


@FAST
@given(st.data())
def test_status_verbose_parser_reads_the_header_whatever_the_rule_comments_say(data: st.DataObject) -> None:
    text, active = data.draw(st.composite(_status)())
    assert parse_status(text)[0] is active


@FAST
@given(mutated(STATUS))
def test_status_verbose_parser_on_mutated_output(text: str) -> None:
    try:
        active, default = parse_status(text)
    except ParseError:
        return
    assert isinstance(active, bool) and (default is None or isinstance(default, str))


COMMENT = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="'"), max_size=40)


@FAST
@given(st.lists(st.tuples(st.integers(1, 65535), st.sampled_from(["tcp", "udp"]), COMMENT), max_size=6))
def test_show_added_reads_back_every_comment_ufw_accepts(rules: list[tuple[int, str, str]]) -> None:
    """ufw prints a comment raw between single quotes (it refuses a quote inside), newlines included."""
    wanted = [UfwRule(port=str(p), proto=proto, source="10.0.0.0/16", comment=c) for p, proto, c in rules]
    lines = ["Added user rules (see 'ufw status' for running firewall):", "ufw allow 22/tcp"]
    for r in wanted:
        plain = r.command().split(" comment ", 1)[0]
        lines.append(plain + (f" comment '{r.comment}'" if r.comment else ""))
    parsed = parse_show_added("\n".join(lines))
    assert list(parsed[1:]) == wanted
    assert [r.comment for r in parsed[1:]] == [r.comment for r in wanted]


@FAST
@given(mutated(ADDED))
def test_show_added_parser_on_mutated_output(text: str) -> None:
    try:
        rules = parse_show_added(text)
    except ParseError:
        return
    for rule in rules:
        rule.ports()  # a parsed rule is usable
        parse_rule_command(rule.command())


@FAST
@given(
    mutated(
        f"{MARK} ssh\n198.18.0.1 40000 198.18.0.11 22\n{MARK} status\n{STATUS}\n{MARK} added\n{ADDED}\n{MARK} end\n"
    )
)
def test_ufw_probe_parser_on_mutated_output(text: str) -> None:
    try:
        facts = parse_ufw_facts(text)
    except ParseError:
        return
    plan_rules([UfwRule(port="31695", proto="tcp", source="10.0.0.0/16")], facts, enable=True)


TRANSCRIPT = (
    f"{APPLY_MARK} 0 0\nRule added\nRule added (v6)\n{APPLY_MARK} 1 1\nERROR: Bad port\n"
    f"{MARK} ssh\n198.18.0.1 40000 198.18.0.11 22\n"
)


@FAST
@given(mutated(TRANSCRIPT))
def test_apply_transcript_parser_on_mutated_output(text: str) -> None:
    commands = ["ufw allow 1/tcp", "ufw allow 2/tcp", "ufw allow 3/tcp"]
    ran, failure = parse_apply(text, commands)
    assert set(ran) <= set(commands)
    assert failure is None or failure[0] in commands
    assert ran == commands[: len(ran)]  # only ever a prefix: the script stops at the first failure


# -- node probes ---------------------------------------------------------------------------------


@FAST
@given(st.sampled_from(sorted(SAMPLES)), st.data())
def test_node_fact_parsers_never_raise(name: str, data: st.DataObject) -> None:
    text = data.draw(mutated(SAMPLES[name]))
    c = capture.parse_capture(text)
    for p in c.probes:
        assert p.result in ("ok", "fail", "wrong-source", "notool")
    nodefacts.parse_features(text)
    overlay.plan_offload(text)


@FAST
@given(st.sampled_from(sorted(SAMPLES)), st.data())
def test_the_diagnosis_of_mutated_captures_never_raises(name: str, data: st.DataObject) -> None:
    """Any capture an operator brings back (cut, garbled) gives findings, not a traceback."""
    nodes = [NodeView(f"n{i}", None, capture.parse_capture(data.draw(mutated(SAMPLES[name])))) for i in range(2)]
    findings, paths = find_causes(nodes, ClusterView())
    assert {f.cause for f in findings} == set(Cause)


# -- --from-file states and backups, through the whole offline convert ------------------------


def _paths(obj: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _paths(v, (*prefix, i))
    return out


BASE = yaml.safe_load(STATE)
PATHS = _paths(BASE)[1:]
VALUE = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-2, 70000), st.floats(allow_nan=True), TEXT, ODD),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.one_of(TEXT, ODD), inner, max_size=3)),
    max_leaves=6,
)


@st.composite
def damaged_state(draw: st.DrawFn) -> str:
    """The kubectl List of tests/data/convert/01, with a few values swapped for anything."""
    state = copy.deepcopy(BASE)
    for _ in range(draw(st.integers(1, 4))):
        path = draw(st.sampled_from(PATHS))
        target = state
        try:
            for key in path[:-1]:
                target = target[key]
            target[path[-1]] = draw(VALUE)
        except (KeyError, IndexError, TypeError):
            continue  # an earlier change removed that branch
    return yaml.safe_dump(state)


@FAST
@given(st.one_of(damaged_state(), mutated(STATE)), st.sampled_from(["text", "json", "yaml"]))
def test_offline_convert_on_damaged_states(tmp_path_factory: pytest.TempPathFactory, text: str, output: str) -> None:
    path = tmp_path_factory.mktemp("state") / "state.yaml"
    path.write_text(text)
    try:
        run_offline(Console(file=io.StringIO(), width=120), path, config.load_config(), output=PlanOutput(output))
    except KeybuzzFixError:
        pass


@FAST
@given(st.one_of(damaged_state(), mutated(STATE)))
def test_backup_reader_on_damaged_files(tmp_path_factory: pytest.TempPathFactory, text: str) -> None:
    from keybuzz_fix.cluster import backup

    path = tmp_path_factory.mktemp("backup") / "convert-20250101T000000.000000Z.yaml"
    path.write_text("# keybuzz-fix convert backup\n# server: https://127.0.0.1:1\n" + text)
    try:
        backup.read_backup(path)
    except KeybuzzFixError:
        pass


# -- config and kubeconfig files ---------------------------------------------------------------


DEFAULTS = yaml.safe_load((config.manifests_dir() / "defaults.yaml").read_text())
CONFIG_PATHS = _paths(DEFAULTS)[1:]


@st.composite
def damaged(draw: st.DrawFn, base: Any, paths: list[tuple[Any, ...]]) -> Any:
    """``base`` with one to three of its values (at ``paths``) replaced by arbitrary ones."""
    data = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(paths))
        target = data
        try:
            for key in path[:-1]:
                target = target[key]
            target[path[-1]] = draw(VALUE)
        except (KeyError, IndexError, TypeError):
            continue
    return data


@FAST
@given(st.one_of(damaged(DEFAULTS, CONFIG_PATHS), VALUE))
def test_config_loader_on_damaged_configs(tmp_path_factory: pytest.TempPathFactory, data: Any) -> None:
    path = tmp_path_factory.mktemp("config") / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    try:
        cfg = config.load_config(path)
    except KeybuzzFixError:
        return
    for rule in cfg.firewall.ports:  # what reaches a remote shell is one printable, quotable line
        command = UfwRule(
            port=str(rule.port), proto=rule.proto, source=cfg.firewall.source, comment=rule.comment
        ).command()
        assert "\n" not in command
        assert parse_show_added(command) == (parse_rule_command(command),)


KUBECONFIG = {
    "apiVersion": "v1",
    "kind": "Config",
    "current-context": "x",
    "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:1", "insecure-skip-tls-verify": True}}],
    "users": [{"name": "u", "user": {"token": "property-token"}}],
    "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
}
KUBECONFIG_PATHS = _paths(KUBECONFIG)[1:]


@FAST
@given(damaged(KUBECONFIG, KUBECONFIG_PATHS))
def test_kubeconfig_loader_on_damaged_files(tmp_path_factory: pytest.TempPathFactory, data: Any) -> None:
    path = tmp_path_factory.mktemp("kubeconfig") / "config"
    path.write_text(yaml.safe_dump(data))
    try:
        k = from_kubeconfig(path)
    except KeybuzzFixError as e:
        assert "property-token" not in str(e)
        return
    assert k.endpoint.server.startswith(("https://", "http://"))


# -- command-line values ------------------------------------------------------------------------


@FAST
@given(st.lists(WORD, max_size=4).map(",".join))
def test_ports_values(value: str) -> None:
    try:
        ports = parse_ports(value)
    except KeybuzzFixError:
        return
    assert all(1 <= p <= 65535 and p != 22 and proto in ("tcp", "udp") for p, proto in ports)


@FAST
@given(st.one_of(WORD, st.lists(WORD, max_size=3).map("/".join), st.lists(WORD, max_size=3).map(".".join)))
def test_source_values(value: str) -> None:
    try:
        source = parse_source(value)
    except KeybuzzFixError:
        return
    assert source == "any" or all(ch in "0123456789abcdef.:/" for ch in source)


@FAST
@given(st.lists(st.lists(WORD, max_size=4).map(":".join), max_size=3))
def test_resolve_values(values: list[str]) -> None:
    try:
        mapping = probe.parse_resolve(values)
    except KeybuzzFixError:
        return
    json.dumps({f"{h}:{p}": a for (h, p), a in mapping.items()})
    assume(mapping)
    assert all(1 <= p <= 65535 for _, p in mapping)


def test_show_added_with_ufw_warnings_and_a_two_line_comment() -> None:
    """ufw warns on stderr about the owner and mode of its files; the probe merges stderr into the output."""
    rules = parse_show_added((DATA / "ufw" / "show-added-warn.txt").read_text())
    assert [r.port for r in rules] == ["22", "8443", "31695"]
    assert rules[1].comment == "ops note\nsecond line"
