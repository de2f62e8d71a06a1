"""Every hint names an option that exists on the command that prints it (issue 20, row 10).

The test walks every string literal of the package (not the docstrings, not ``cli/``, where the
options are declared) and finds each ``--option`` it names. For each command of the Typer app, the
modules it can run are its own lazy imports plus everything they import (the import graph);
every option named in their strings must be one of that command's options, unless

- the text is given to :func:`keybuzz_fix.report.hints.hint`, which asks the running command;
- it follows ``keybuzz-fix OTHER``: then it must be an option of OTHER;
- it opens the message of an error about that option's own value (``--resolve 'x': …``);
- it is another program's option (ufw, kubectl, k3s, iptables, an app's ``--port``), listed below
  and checked to be no option of keybuzz-fix.
"""

from __future__ import annotations

import ast
import inspect
import re
import textwrap
from functools import cache
from pathlib import Path

import click
import grimp
import pytest
import typer.main

from keybuzz_fix.cli import app
from keybuzz_fix.hints import hint, offered

PKG = Path(__file__).resolve().parent.parent.parent / "keybuzz_fix"
OPTION = re.compile(r"(?<![\w-])--[a-z][a-z-]*[a-z]")
OTHER_COMMAND = re.compile(r"keybuzz-fix ([a-z]+)((?: +[^ ;,)]+)*)")
FOREIGN = {
    "--force": "ufw --force enable",
    "--server-side": "kubectl apply --server-side",
    "--field-manager": "kubectl apply --field-manager",
    "--flannel-iface": "a k3s flag",
    "--node-ip": "a k3s flag",
    "--ignore-daemonsets": "kubectl drain",
    "--port": "an app's own flag (--port=3001)",
    "--set": "iptables -m recent",
    "--update": "iptables -m recent",
    "--seconds": "iptables -m recent",
    "--hitcount": "iptables -m recent",
    "--reject-with": "iptables",
    "--comment": "iptables -m comment (parsed from iptables-save)",
    "--dport": "iptables (parsed from iptables-save)",
    "--to-destination": "iptables DNAT (parsed from iptables-save)",
    "--state": "firewall-cmd --state",
    "--add-port": "firewall-cmd",
    "--add-source": "firewall-cmd",
    "--permanent": "firewall-cmd",
    "--reload": "firewall-cmd",
    "--zone": "firewall-cmd",
    "--list-all": "firewall-cmd",
    "--watch-ingress-without-class": "an ingress-nginx controller flag",
    "--resolv-conf": "a k3s / kubelet flag",
    "--connect-timeout": "curl, in the node collect script",
}
# report/ only reads the data classes of checks/, cluster/ and hosts/ (ARCHITECTURE.md): what they
# print was made by a flow, which imports the module that made it. So report/'s imports of them
# carry no text of theirs to the command.
_REPORT = "keybuzz_fix.report"
_BELOW_REPORT = ("keybuzz_fix.checks", "keybuzz_fix.cluster", "keybuzz_fix.hosts")
ERRORS = {"UsageError", "KubeconfigError", "InputError", "ClusterError"}


def commands() -> dict[str, set[str]]:
    """Each command's options (its own and the root's)."""
    group = typer.main.get_command(app)
    root = {o for p in group.params for o in (*p.opts, *p.secondary_opts)}
    return {
        name: root | {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)}
        for name, cmd in group.commands.items()  # type: ignore[attr-defined]
    }


@cache
def graph() -> grimp.ImportGraph:
    return grimp.build_graph("keybuzz_fix")


def reachable(name: str) -> set[str]:
    """The package modules the command ``name`` can run: its lazy imports, its module's, and all they import."""
    group = typer.main.get_command(app)
    function = inspect.unwrap(group.commands[name].callback)  # type: ignore[attr-defined]
    start = {function.__module__}
    for node in ast.walk(ast.parse(textwrap.dedent(inspect.getsource(function)))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("keybuzz_fix"):
            start.add(node.module)
    found, todo = set(start), list(start)
    while todo:
        module = todo.pop()
        for imported in graph().find_modules_directly_imported_by(module):
            if imported in found or (module.startswith(_REPORT) and imported.startswith(_BELOW_REPORT)):
                continue
            found.add(imported)
            todo.append(imported)
    return {m for m in found if not m.startswith("keybuzz_fix.cli")}


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                ids.add(id(first.value))
    return ids


def _name(func: ast.expr) -> str:
    return func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""


@cache
def named_options(module: str) -> list[tuple[int, str, str]]:
    """(line, option, the string) for every option a module's strings name that no rule above exempts."""
    path = PKG.joinpath(*module.split(".")[1:])
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    return scan(path.read_text(encoding="utf-8"))


def scan(source: str) -> list[tuple[int, str, str]]:
    """(line, option, the string) for every option named in ``source``'s strings that no rule exempts."""
    tree = ast.parse(source)
    skip = _docstrings(tree)
    hinted: set[int] = set()
    leading: set[int] = set()  # the first string of an error's message
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and _name(node.func) == "hint":
            hinted |= {id(n) for a in node.args for n in ast.walk(a)}
        if isinstance(node, ast.Call) and _name(node.func) in ERRORS and node.args:
            first = node.args[0]
            parts = first.values if isinstance(first, ast.JoinedStr) else [first]
            if parts and isinstance(parts[0], ast.Constant):
                leading.add(id(parts[0]))
    out = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Constant) and isinstance(node.value, str)) or id(node) in skip | hinted:
            continue
        text = node.value
        others = [(m.group(1), set(OPTION.findall(m.group(2)))) for m in OTHER_COMMAND.finditer(text)]
        elsewhere = {o for _, opts in others for o in opts}
        if text.strip() in OPTION.findall(text):  # the option itself, as a key or a label
            continue
        if id(node) in leading and OPTION.match(text):  # an error about values given to these options
            continue
        for match in OPTION.finditer(text):
            option = match.group(0)
            if option not in FOREIGN and option not in elsewhere:
                out.append((node.lineno, option, text))
    return out


def other_commands(module: str) -> list[tuple[int, str, str]]:
    """(line, command, option) for every ``keybuzz-fix COMMAND --option`` a module's strings name."""
    path = PKG.joinpath(*module.split(".")[1:])
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            for m in OTHER_COMMAND.finditer(node.value):
                out += [(node.lineno, m.group(1), o) for o in OPTION.findall(m.group(2))]
    return out


def hinted(module: str) -> set[str]:
    """The options named in a module's :func:`hint` calls (checked when they run, by ``hint`` itself)."""
    path = PKG.joinpath(*module.split(".")[1:])
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call) and _name(node.func) == "hint" and isinstance(node.args[0], ast.Constant):
            found.add(node.args[0].value)
    return found


def test_the_walk_finds_the_hints_it_checks():
    # The walk is not empty: it sees the hints the plan and the errors print, and the options of
    # `keybuzz-fix rollback --backup …` advice.
    every = {
        f"keybuzz_fix.{p.relative_to(PKG).with_suffix('').as_posix().replace('/', '.')}" for p in PKG.rglob("*.py")
    }
    every = {m.removesuffix(".__init__") for m in every}
    assert {"--keep-port", "--allow-managed", "--show-values", "--force-conflicts", "--yes"} <= set().union(
        *(hinted(m) for m in every)
    )
    assert ("rollback", "--backup") in {(c, o) for m in reachable("convert") for _, c, o in other_commands(m)}
    # What the walk flags, and what it lets through.
    assert [o for _, o, _ in scan('x = f"{a}; re-run with --force-conflicts"')] == ["--force-conflicts"]
    assert [o for _, o, _ in scan('raise Conflict("x; pass --keep-port or --yes")')] == ["--keep-port", "--yes"]
    assert scan('x = hint("--keep-port", f"{a}, or pass --keep-port")') == []
    assert scan('raise UsageError(f"--resolve {v!r}: bad")') == []
    assert scan('x = "ufw --force enable"') == []
    assert scan('def f():\n    """Pass --yes."""') == []


@pytest.mark.parametrize(
    ("command", "option", "shown"),
    [
        ("convert", "--show-values", True),
        ("all", "--show-values", False),
        ("rollback", "--show-values", False),
        ("all", "--keep-port", True),
        ("validate", "--force-conflicts", False),
        ("ingress", "--force-conflicts", True),
        ("diagnose", "--yes", False),
    ],
)
def test_a_hint_is_shown_only_by_a_command_with_its_option(command, option, shown):
    group = typer.main.get_command(app)
    with click.Context(group.commands[command]):  # type: ignore[attr-defined]
        assert offered(option) is shown
        assert hint(option, f"pass {option}", "other") == (f"pass {option}" if shown else "other")


def test_every_hint_names_an_option_of_the_command_that_prints_it():
    options = commands()
    wrong = []
    for name, own in sorted(options.items()):
        for module in sorted(reachable(name)):
            wrong += [
                f"{name}: {module}:{line}: {option} in {text!r}"
                for line, option, text in named_options(module)
                if option not in own
            ]
            wrong += [
                f"{module}:{line}: keybuzz-fix {other} has no {option}"
                for line, other, option in other_commands(module)
                if other not in options or option not in options[other]
            ]
    assert not sorted(set(wrong)), "\n".join(sorted(set(wrong)))


def test_foreign_options_are_no_options_of_keybuzz_fix():
    ours = set().union(*commands().values())
    assert not ours & set(FOREIGN)
