"""The ``keybuzz-fix`` command line: the Typer app, and the one place where a run becomes an exit code.

The commands (:mod:`.hosts`, :mod:`.cluster`) parse their options, build the connection options
once (:mod:`.options`) and call a flow, which returns a result object; their option groups are
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
import sys
from collections.abc import Callable, Sequence
from typing import Annotated, Any, TypeVar

import typer
from typer.core import TyperGroup

from keybuzz_fix import __version__
from keybuzz_fix.cli import cluster, hosts
from keybuzz_fix.cli.options import GROUPS
from keybuzz_fix.errors import ExitCode, KeybuzzFixError
from keybuzz_fix.report.output import end_now, error_line, new_console, print_line, silence_stdout


def raw_main(program: Callable[[], Any], *, debug: Callable[[], bool]) -> int:
    """Run ``program``; return the exit code of how it ended (``--debug`` lets errors through with their traceback)."""
    try:
        result = program()
    except typer.Exit as e:  # --help, --version
        return e.exit_code
    except KeybuzzFixError as e:
        if debug():
            raise
        error_line(str(e))
        return int(e.exit_code)
    except typer.TyperException as e:  # a bad command line: Typer's own usage errors
        if debug():
            raise
        error_line(e.format_message())
        return int(ExitCode.USAGE)
    except (KeyboardInterrupt, typer.Abort):
        if debug():
            raise
        error_line("interrupted (Ctrl-C)")
        return int(ExitCode.INTERRUPTED)
    except BrokenPipeError:  # the reader of stdout went away (`| head`): nothing more to say
        silence_stdout()
        return int(ExitCode.FAILURE)
    return int(ExitCode.of(result))


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
        argv = list(sys.argv[1:] if args is None else args)
        contexts: list[Any] = []

        def program() -> Any:
            with self.make_context(prog_name or "keybuzz-fix", argv, **extra) as ctx:
                contexts.append(ctx)
                return self.invoke(ctx)

        code = raw_main(program, debug=lambda: bool(contexts and contexts[0].params.get("debug")))
        if standalone_mode:
            sys.exit(code)
        return code


app = typer.Typer(
    cls=_Group,
    name="keybuzz-fix",
    help="Repair a K3s cluster whose ClusterIP Services and ingress time out (504) because Flannel's VXLAN "
    "traffic does not pass: open the ingress NodePorts in UFW, run the apps as hostNetwork DaemonSets, "
    "apply the ingress routes, and score the result.",
    no_args_is_help=True,
    add_completion=False,
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
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    ctx.obj = new_console()  # --debug is read by raw_main, from the parsed options


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
    ("validate", cluster.validate),
    ("all", cluster.all_steps),
    ("overlay", hosts.overlay),
    ("diagnose", hosts.diagnose),
):
    app.command(_name)(option_groups(_command))


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
