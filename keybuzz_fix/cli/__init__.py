"""The ``keybuzz-fix`` command line: the Typer app, and the one place where a run becomes an exit code.

The commands (:mod:`.hosts`, :mod:`.cluster`, :mod:`.remediate`) parse their options, build the connection
options once (:mod:`.connections`) and call a flow, which returns a result object; their option groups are
expanded here as they are registered (:func:`option_groups`). :func:`raw_main` runs the
program and maps how it ended — that result, one of the tool's errors, a bad command line, Ctrl-C
— to an :class:`~keybuzz_fix.errors.ExitCode` (HTTPie's ``raw_main``/``program`` split); the
program itself handles no error. Heavy modules (paramiko, the kubernetes client) are imported
inside the commands that need them, so ``keybuzz-fix --help`` stays fast.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from typer.core import TyperCommand, TyperGroup

from keybuzz_fix import __version__
from keybuzz_fix.cli import cluster, hosts, remediate
from keybuzz_fix.cli.options import FROM_COMMAND_SERVERS, GROUPS
from keybuzz_fix.cli.parse import ENV_PREFIX, from_environment
from keybuzz_fix.errors import DETAILED_ERROR, ExitCode, Interrupted, KeybuzzFixError, UsageError
from keybuzz_fix.report.output import end_now, error_line, new_console, print_line, silence_stdout, start_trace


def raw_main(
    program: Callable[[], Any],
    *,
    debug: Callable[[], bool],
    detailed: bool = False,
    explain: Callable[[str], str] = str,
) -> int:
    """Run ``program``; return the exit code of how it ended (``--debug`` lets errors through with their traceback).

    ``detailed`` (``--exit-code``): 0 nothing to do, 2 changes pending, 1 any error (Ctrl-C stays 130).
    ``explain`` adds to a usage error where a bad value came from (an environment variable).
    """
    try:
        result = program()
    except typer.Exit as e:  # --help, --version
        return e.exit_code
    except KeybuzzFixError as e:
        if debug():
            raise
        error_line(explain(str(e)) if isinstance(e, UsageError) else str(e))
        if isinstance(e, Interrupted):
            return int(e.exit_code)
        return DETAILED_ERROR if detailed else int(e.exit_code)
    except typer.TyperException as e:  # a bad command line: Typer's own usage errors
        if debug():
            raise
        error_line(explain(e.format_message()))
        return DETAILED_ERROR if detailed else int(ExitCode.USAGE)
    except (KeyboardInterrupt, typer.Abort):
        if debug():
            raise
        error_line("interrupted (Ctrl-C)")
        return int(ExitCode.INTERRUPTED)
    except BrokenPipeError:  # the reader of stdout went away (`| head`): nothing more to say
        silence_stdout()
        return int(ExitCode.FAILURE)
    return ExitCode.detailed(result) if detailed else int(ExitCode.of(result))


class _Command(TyperCommand):
    """A command whose plain help shows its options in their groups (SSH, Cluster, Safety, URL checks).

    Click's own formatter, not rich's: the panels declared on the options, at plain help's speed.
    """

    def format_options(self, ctx: Any, formatter: Any) -> None:
        """Write the arguments, the ungrouped options, then one section per option group."""
        args: list[tuple[str, str]] = []
        panels: dict[str, list[tuple[str, str]]] = {"Options": []}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is None:
                continue
            if param.param_type_name == "argument":
                args.append(record)
            else:
                panels.setdefault(getattr(param, "rich_help_panel", None) or "Options", []).append(record)
        if args:
            with formatter.section("Arguments"):
                formatter.write_dl(args)
        for title, records in panels.items():
            if records:
                with formatter.section(f"{title} options" if title != "Options" else title):
                    formatter.write_dl(records)


class _Group(TyperGroup):
    """The root command group: every invocation (the script's, the tests') runs through :func:`raw_main`."""

    def main(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        self._main_shell_completion(extra, prog_name or "keybuzz-fix", complete_var)  # exits when completing
        argv = _bare_from_master(_verbosity_first(list(sys.argv[1:] if args is None else args)))
        extra.setdefault("default_map", option_defaults(self, os.environ))
        contexts: list[Any] = []

        def program() -> Any:
            with self.make_context(prog_name or "keybuzz-fix", argv, **extra) as ctx:
                contexts.append(ctx)
                return self.invoke(ctx)

        options = argv[: argv.index("--")] if "--" in argv else argv
        code = raw_main(
            program,
            debug=lambda: bool(contexts and contexts[0].params.get("debug")),
            detailed="--exit-code" in options and self._has_exit_code(options),
            explain=lambda message: from_environment(message, argv, os.environ),
        )
        if standalone_mode:
            sys.exit(code)
        return code

    def _has_exit_code(self, options: Sequence[str]) -> bool:
        """Whether the command named on the line has ``--exit-code`` (elsewhere it is a bad option: exit 2)."""
        name = next((word for word in options if word in self.commands), None)
        command = self.commands.get(name) if name else None
        return command is not None and any("--exit-code" in getattr(p, "opts", ()) for p in command.params)


# Options an environment variable must not set behind the operator's back: each one loosens a safety.
_NOT_FROM_ENV = {"yes", "force_conflicts", "allow_managed", "enable", "insecure", "accept_new_host_keys", "show_values"}


def option_defaults(group: Any, environ: Mapping[str, str]) -> dict[str, Any]:
    """Return Click's ``default_map``: ``KEYBUZZ_FIX_<OPTION>`` variables, and the user's config file.

    ``--known-hosts`` is ``KEYBUZZ_FIX_KNOWN_HOSTS``, ``-v`` is ``KEYBUZZ_FIX_VERBOSE``; a
    command-line option wins. Without ``--config`` (or ``KEYBUZZ_FIX_CONFIG``),
    ``$XDG_CONFIG_HOME/keybuzz-fix/config.yaml`` (``~/.config/…``) is used when it exists.
    """

    def of(command: Any) -> dict[str, Any]:
        found: dict[str, Any] = {}
        for p in command.params:
            if p.param_type_name != "option" or p.name in _NOT_FROM_ENV or p.name is None:
                continue
            long = next((o for o in p.opts if o.startswith("--")), None)
            if long is None:
                continue
            value = environ.get(ENV_PREFIX + long[2:].upper().replace("-", "_"))
            if value is not None and value != "":
                found[p.name] = value.split() if p.multiple else value
        if "config" not in found and any(p.name == "config" for p in command.params):
            home = environ.get("XDG_CONFIG_HOME") or str(Path(environ.get("HOME", "~")).expanduser() / ".config")
            user_config = Path(home) / "keybuzz-fix" / "config.yaml"
            if user_config.is_file():
                found["config"] = str(user_config)
        return found

    defaults = of(group)
    for name, command in group.commands.items():
        defaults[name] = of(command)
    return defaults


def _bare_from_master(argv: list[str]) -> list[str]:
    """Read a bare ``--kubeconfig-from-master`` (last, or before another option) as "the command's servers.tsv"."""
    out = list(argv)
    end = out.index("--") if "--" in out else len(out)
    for i, arg in enumerate(out[:end]):
        if arg == "--kubeconfig-from-master" and (i + 1 >= end or out[i + 1].startswith("-")):
            out[i] = f"--kubeconfig-from-master={FROM_COMMAND_SERVERS}"
    return out


_VERBOSE = re.compile(r"^-v+$")


def _verbosity_first(argv: list[str]) -> list[str]:
    """Move ``-v``/``-vv``/``--verbose`` given after the command name to the front (``kubectl … -v`` habit)."""
    end = argv.index("--") if "--" in argv else len(argv)
    flags = [a for a in argv[:end] if _VERBOSE.match(a) or a == "--verbose"]
    if not flags:
        return argv
    rest = [a for a in argv[:end] if not (_VERBOSE.match(a) or a == "--verbose")]
    return flags + rest + argv[end:]


app = typer.Typer(
    cls=_Group,
    name="keybuzz-fix",
    help="Repair a K3s cluster whose ClusterIP Services and ingress time out (504) because Flannel's VXLAN "
    "traffic does not pass: open the ingress NodePorts in UFW, run the apps as hostNetwork DaemonSets, "
    "apply the ingress routes, and score the result.",
    no_args_is_help=True,
    add_completion=True,  # --install-completion, --show-completion
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help: rich's help renderer would triple the start-up time of --help
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        print_line(f"keybuzz-fix {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks of errors.")] = False,
    verbose: Annotated[
        int,
        typer.Option(
            "--verbose",
            "-v",
            count=True,
            help="-v: each remote command and API request on one line on stderr; -vv: with their output and "
            "bodies (credentials and env values redacted). Also after the command name.",
        ),
    ] = 0,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    ctx.obj = new_console()  # --debug is read by raw_main, from the parsed options
    start_trace(verbose)


R = TypeVar("R")


def option_groups(command: Callable[..., R]) -> Callable[..., R]:
    """Give Typer each field of a command's option groups (``ssh: SshArgs``) as an option of its own.

    The groups are declared once (:mod:`.options`); the command receives them built from the options.
    """
    params: list[inspect.Parameter] = []
    groups: dict[str, Any] = {}
    for p in inspect.signature(command).parameters.values():
        if p.annotation in GROUPS:
            groups[p.name] = p.annotation
            params += [
                inspect.Parameter(f.name, p.kind, default=f.default, annotation=f.type)
                for f in dataclasses.fields(p.annotation)
            ]
        else:
            params.append(p)

    @functools.wraps(command)
    def with_groups(**kwargs: Any) -> R:
        for name, group in groups.items():
            kwargs[name] = group(**{f.name: kwargs.pop(f.name) for f in dataclasses.fields(group)})
        return command(**kwargs)

    with_groups.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    with_groups.__annotations__ = {p.name: p.annotation for p in params}
    return with_groups


for _name, _command in (
    ("inventory", hosts.inventory),
    ("ufw", hosts.ufw),
    ("convert", cluster.convert),
    ("rollback", cluster.rollback),
    ("ingress", cluster.ingress),
    ("validate", remediate.validate),
    ("all", remediate.all_steps),
    ("overlay", hosts.overlay),
    ("diagnose", hosts.diagnose),
):
    app.command(_name, cls=_Command)(option_groups(_command))


def main(argv: list[str] | None = None) -> None:
    """Run the CLI (the ``keybuzz-fix`` script and ``python -m keybuzz_fix``).

    After Ctrl-C the process ends as soon as the one line is printed: threads still waiting on a
    host, a URL or the API server that does not answer are read-only work (the flows wait for
    any change in flight before they raise), so nothing joins them at exit.
    """
    try:
        app(args=sys.argv[1:] if argv is None else argv, prog_name="keybuzz-fix")
    except SystemExit as e:
        if e.code == ExitCode.INTERRUPTED:
            end_now(int(ExitCode.INTERRUPTED))
        raise
