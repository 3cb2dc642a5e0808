"""The typer app: global options, error handling, logging, and the command registrars.

Every command group is added by a `register(app)` function: the built-in ones below, the
optional ones in `OPTIONAL` (skipped when their module is absent), and any installed
package's "infer.cli" entry point. Adding a group is one line here or one entry point.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from importlib import metadata
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from .. import __version__
from ..errors import InferError

log = logging.getLogger("infer.cli")

EXIT_OK = 0
EXIT_CHECK_FAILED = 1  # a check the user asked for did not pass (compare), a bench row did not run
EXIT_USER_ERROR = 2  # bad arguments, unreadable model or input, no backend can run it
EXIT_INTERNAL = 3  # a bug: an exception infer did not expect
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, as shells report it

BUILTIN = (
    "infer.cli._devices",
    "infer.cli._inspect",
    "infer.cli._run",
    "infer.cli._bench",
    "infer.cli._compare",
    "infer.cli._build",
    "infer.cli._cache",
)
OPTIONAL = ("infer.serve.commands",)  # `serve` and `export` (issue 10)
ENTRY_POINTS = "infer.cli"

# Exceptions typer/click use for control flow: they pass through the error handler.
_CONTROL: tuple[type[BaseException], ...] = tuple(
    t for t in (typer.Exit, typer.Abort, getattr(typer, "TyperException", None)) if t is not None
)
try:  # typer < 0.20 runs on click itself
    import click

    _CONTROL += (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort)
except ImportError:
    pass

HELP = (
    "Run one model on any machine: inspect it, run it, benchmark and compare backends. "
    "MODEL may be `demo`, the built-in demo model.\n\n"
    "Examples:\n\n"
    "$ infer devices\n"
    "$ infer inspect model.onnx --nodes\n"
    "$ infer bench\n"
    "$ infer compare model.onnx --backends onnxruntime,reference\n\n"
    "Exit status: 0 ok, 1 a check failed (compare), 2 usage or input error, "
    "3 internal error."
)


class InferGroup(TyperGroup):
    """The root group: turns errors into one line on stderr and an exit status."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except _CONTROL:
            raise
        except InferError as e:
            _fail(ctx, e, EXIT_USER_ERROR)
        except BrokenPipeError:  # `infer ... | head` closed the pipe: stop quietly
            with contextlib.suppress(Exception):
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise typer.Exit(EXIT_BROKEN_PIPE) from None
        except OSError as e:  # a file the user named cannot be read or written
            _fail(ctx, e, EXIT_USER_ERROR)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except Exception as e:
            _fail(ctx, e, EXIT_INTERNAL)


def _fail(ctx: Any, error: BaseException, code: int) -> None:
    debug = bool((ctx.obj or {}).get("debug")) if isinstance(ctx.obj, dict) else False
    if debug:
        traceback.print_exception(type(error), error, error.__traceback__, file=sys.stderr)
    text = str(error).strip() or type(error).__name__
    if code == EXIT_INTERNAL:
        text = f"internal error: {type(error).__name__}: {text}"
        if not debug:
            text += "\n  (a bug in infer or a runtime; rerun with --debug for the traceback)"
    print(f"error: {text}", file=sys.stderr)
    raise typer.Exit(code)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time (test runners swap it)."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def _quiet_runtimes(record: logging.LogRecord) -> bool:
    """Drop the runtimes' own log lines (forwarded as "[ort ...]") unless -v was given: at the
    default level they only repeat the error infer reports in one line."""
    return _handler.level < logging.WARNING or not str(record.msg).startswith("[ort ")


_handler = _StderrHandler()
_handler.addFilter(_quiet_runtimes)


def configure_logging(verbose: int, debug: bool) -> None:
    """-v: info, -vv (or --debug): debug; default: warnings. Logs go to stderr."""
    level = logging.DEBUG if debug or verbose >= 2 else logging.INFO if verbose else logging.WARNING
    root = logging.getLogger("infer")
    if _handler not in root.handlers:
        root.addHandler(_handler)
    root.setLevel(level)
    _handler.setLevel(level)


def _version(value: bool) -> None:
    if value:
        print(f"infer {__version__}")
        raise typer.Exit()


def make_app(optional: Sequence[str] = OPTIONAL) -> typer.Typer:
    """A fresh `infer` app with the built-in commands, `optional` registrars and plugins."""
    app = typer.Typer(
        cls=InferGroup,
        name="infer",
        help=HELP,
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
        context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 80},
    )
    app.callback()(_root)
    register_all(app, optional)
    return app


def _root(
    ctx: typer.Context,
    verbose: Annotated[
        int, typer.Option("--verbose", "-v", count=True, help="More log output (-vv: debug).")
    ] = 0,
    debug: Annotated[
        bool, typer.Option("--debug", help="Show the traceback of an error, and debug logs.")
    ] = False,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    ctx.obj = {"debug": debug, "verbose": verbose}
    configure_logging(verbose, debug)


def register_all(target: typer.Typer, optional: Sequence[str] = OPTIONAL) -> list[str]:
    """Add every command group; returns the optional ones and plugins that were added."""
    for name in BUILTIN:
        importlib.import_module(name).register(target)
    added = []
    for name in optional:
        registrar = _optional(name)
        if registrar is not None and _call(registrar, target, name):
            added.append(name)
    try:
        points = metadata.entry_points(group=ENTRY_POINTS)
    except Exception:  # a broken distribution's metadata must not break the CLI
        points = ()
    for point in points:
        try:
            registrar = point.load()
        except Exception as e:
            log.warning("cannot load infer.cli plugin %s: %s", point.name, e)
            continue
        if _call(registrar, target, point.name):
            added.append(point.name)
    return added


def _optional(module: str) -> Callable[[typer.Typer], Any] | None:
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name and (module == e.name or module.startswith(e.name + ".")):
            return None  # not part of this install
        log.warning("cannot add the commands of %s: %s", module, e)
        return None
    except Exception as e:
        log.warning("cannot add the commands of %s: %s", module, e)
        return None
    return getattr(mod, "register", None)


def _call(registrar: Callable[[typer.Typer], Any], target: typer.Typer, name: str) -> bool:
    try:
        registrar(target)
    except Exception as e:
        log.warning("cannot add the commands of %s: %s", name, e)
        return False
    return True


app = make_app()


def run(argv: Sequence[str] | None = None) -> int:
    """Run the app on `argv` (default sys.argv[1:]) and return the exit status."""
    command = typer.main.get_command(app)
    try:
        command.main(
            args=list(argv) if argv is not None else None, prog_name="infer", standalone_mode=True
        )
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return EXIT_OK
