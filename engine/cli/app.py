"""The ``upload-engine`` command line: the parser of every command, and ``main``, which owns the
event loop, the exit code and the last line printed.

Errors are one line on stderr, never a traceback (``UPLOAD_ENGINE_DEBUG=1`` re-raises a bug).
Credentials never come from arguments (``engine.cli.credentials``); other defaults come from
flags, the environment and the config file (``engine.cli.settings``). With ``--json`` the last
line on stdout is always one ``Result`` record (``engine.cli.output``), whatever happened.

A command's module is imported, and its parser built, only when that command runs or shows its
help (``DeferredParser``): ``upload-engine --help`` loads none of them, ``upload`` loads neither
``import`` nor the sandbox, and no parser loads the HTTP client, which its runner imports.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import os
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from engine import __version__
from engine.cli.output import (
    EXIT_AUTH,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    Outcome,
    escape,
    exit_code_of,
    json_line,
    one_line,
)
from engine.cli.settings import apply_settings
from engine.cli.verbosity import add_global_options, level_of
from engine.errors import UploadError
from engine.redact import redact

__all__ = ["COMMANDS", "DeferredParser", "build_parser", "main"]

Runner = Callable[[argparse.Namespace], Awaitable[Outcome]]

#: every command: its module in ``engine.cli`` (whose ``register`` adds its arguments and its
#: runner) and the line ``--help`` lists it with
COMMANDS = {
    "upload": ("upload", "upload files to one destination"),
    "import": ("import_", "upload every scan under a directory (resumable)"),
    "demo": ("demo", "upload a generated E57 scan into the in-process sandbox"),
    "sandbox": ("sandbox", "the local sandbox of both platforms and blob storage"),
    "config": ("config_cmd", "show the effective configuration"),
    "completion": ("completion", "print a shell completion script (bash, zsh, fish)"),
}


class DeferredParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose arguments ``setup`` adds on first use (parsing, help or
    usage), not when the whole command line is built. (Without ``setup``, a plain parser: the
    class of the subparsers below a deferred one, unless they say otherwise.)"""

    def __init__(
        self,
        *args: Any,
        setup: Callable[[argparse.ArgumentParser], None] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self._setup: Callable[[argparse.ArgumentParser], None] | None = setup

    def ready(self) -> None:
        """Add the arguments now (once; ``completion`` walks every parser)."""
        setup, self._setup = self._setup, None
        if setup is not None:
            setup(self)

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: Any = None
    ) -> tuple[Any, list[str]]:
        self.ready()
        return super().parse_known_args(args, namespace)

    def format_usage(self) -> str:
        self.ready()
        return super().format_usage()

    def format_help(self) -> str:
        self.ready()
        return super().format_help()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="upload-engine",
        description="Concurrent, resumable uploads of large scan files (E57, IFC).",
        epilog="Exit codes: 0 done, 1 a file failed remotely, 2 usage or local input error, "
        "3 authentication or permission, 130 interrupted.",
    )
    parser.add_argument("-V", "--version", action="version", version=f"upload-engine {__version__}")
    add_global_options(parser, sub=False)
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=DeferredParser
    )
    for name, (module, line) in COMMANDS.items():
        sub.add_parser(name, help=line, setup=functools.partial(_command, name, module))
    return parser


def _command(name: str, module: str, parser: argparse.ArgumentParser) -> None:
    """The arguments of command ``name``, from its module (imported now, on first use)."""
    importlib.import_module(f"engine.cli.{module}").register(parser)
    if name != "completion":
        _add_everywhere(parser)


def _add_everywhere(parser: argparse.ArgumentParser) -> None:
    """The global options on ``parser`` and on every parser below it (``config show``)."""
    add_global_options(parser, sub=True)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for nested in action.choices.values():
                _add_everywhere(nested)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    json_mode = bool(getattr(args, "json", False))
    started = time.monotonic()
    try:
        apply_settings(args)
        args.level = level_of(args)
        if getattr(args, "insecure", False):
            print("warning: TLS certificate verification is OFF (--insecure)", file=sys.stderr)
        outcome = _run_async(args.runner, args)
    except KeyboardInterrupt:
        print(
            "interrupted: parts stored so far are kept; rerun the same command to resume",
            file=sys.stderr,
        )
        if json_mode:
            json_line({"type": "Result", "ok": False, "exit_code": EXIT_INTERRUPTED})
        return EXIT_INTERRUPTED
    except Exception as exc:
        code = _say_error(exc)
        if code is None:
            raise
        if json_mode:
            json_line(_failed_record(exc, code, started))
        return code
    _finish(args, outcome, started, json_mode)
    return outcome.exit_code


def _finish(args: argparse.Namespace, outcome: Outcome, started: float, json_mode: bool) -> None:
    if json_mode:
        record: dict[str, Any] = {
            "type": "Result",
            "ok": outcome.exit_code == 0,
            "exit_code": outcome.exit_code,
            **outcome.record,
        }
        record.setdefault("seconds", round(time.monotonic() - started, 3))
        json_line(record)
    elif outcome.line:
        out = sys.stderr if getattr(args, "final_to_stderr", False) else sys.stdout
        print("\n".join(escape(redact(line)) for line in outcome.line.splitlines()), file=out)


def _failed_record(exc: Exception, code: int, started: float) -> dict[str, Any]:
    return {
        "type": "Result",
        "ok": False,
        "exit_code": code,
        "error": one_line(exc),
        "error_type": type(exc).__name__,
        "seconds": round(time.monotonic() - started, 3),
    }


def _run_async(runner: Runner, args: argparse.Namespace) -> Outcome:
    import anyio

    use_uvloop = getattr(args, "loop", "auto") == "uvloop"
    if use_uvloop:
        import importlib.util

        if importlib.util.find_spec("uvloop") is None:  # an extra: not installed by default
            from engine.errors import ConfigError

            raise ConfigError("--loop uvloop needs uvloop: pip install 'upload-engine[uvloop]'")
    return anyio.run(runner, args, backend_options={"use_uvloop": use_uvloop})


def _say_error(exc: Exception) -> int | None:
    """Print ``exc`` as the one last line and return the exit code (``output.exit_code_of``);
    ``None``: a bug to re-raise (``UPLOAD_ENGINE_DEBUG`` is set)."""
    if isinstance(exc, UploadError):
        code = exit_code_of(exc)
        unsent = getattr(exc, "code", "") in ("", "NoCredentials", "ProfileNotFound")
        local = code == EXIT_USAGE or (code == EXIT_AUTH and unsent)  # nothing asked yet
        word = "error" if local else "failed"  # "failed": the platform said no
        print(f"upload-engine: {word}: {redact(one_line(exc))}", file=sys.stderr)
        return code
    if isinstance(exc, OSError):  # the state directory, the report file: local, not the upload's
        where = f"{escape(str(exc.filename))}: " if exc.filename else ""
        print(f"upload-engine: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return EXIT_USAGE
    if os.environ.get("UPLOAD_ENGINE_DEBUG"):
        return None
    print(
        f"upload-engine: internal error: {type(exc).__name__}: {redact(one_line(exc))} "
        "(set UPLOAD_ENGINE_DEBUG=1 for the traceback)",
        file=sys.stderr,
    )
    return EXIT_FAILED
