"""The ``upload-engine`` command line: the parser of every command, and ``main``, which owns the
event loop, the exit code and the last line printed.

Errors are one line on stderr, never a traceback (``UPLOAD_ENGINE_DEBUG=1`` re-raises a bug).
Credentials never come from arguments (``engine.cli.credentials``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Awaitable, Callable, Sequence

import anyio
import orjson

from engine import __version__
from engine.cli import demo, import_, sandbox, upload
from engine.cli.output import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    Outcome,
    one_line,
)
from engine.errors import ConfigError, InputError, SourceChangedError, StateError, UploadError
from engine.redact import redact

__all__ = ["build_parser", "main"]

Runner = Callable[[argparse.Namespace], Awaitable[Outcome]]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="upload-engine",
        description="Concurrent, resumable uploads of large scan files (E57, IFC).",
    )
    parser.add_argument("-V", "--version", action="version", version=f"upload-engine {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in (upload, demo, sandbox, import_):
        command.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "insecure", False):
        print("warning: TLS certificate verification is OFF (--insecure)", file=sys.stderr)
    started = time.monotonic()
    try:
        outcome = _run_async(args.runner, args)
    except KeyboardInterrupt:
        print(
            "interrupted: parts stored so far are kept; rerun the same command to resume",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    except Exception as exc:
        code = _say_error(exc)
        if code is None:
            raise
        return code
    if getattr(args, "json", False):
        record = {"ok": not outcome.failed, **outcome.record}
        record.setdefault("seconds", round(time.monotonic() - started, 3))
        sys.stdout.write(redact(orjson.dumps(record, default=str).decode()) + "\n")
    elif outcome.line:
        print(redact(outcome.line))
    return outcome.exit_code


def _run_async(runner: Runner, args: argparse.Namespace) -> Outcome:
    use_uvloop = getattr(args, "loop", "auto") == "uvloop"
    if use_uvloop:
        try:
            import uvloop  # noqa: F401
        except ImportError:
            use_uvloop = False
    return anyio.run(runner, args, backend_options={"use_uvloop": use_uvloop})


def _say_error(exc: Exception) -> int | None:
    """Print ``exc`` as the one last line and return the exit code; ``None``: a bug to re-raise
    (``UPLOAD_ENGINE_DEBUG`` is set)."""
    if isinstance(exc, ConfigError | StateError) or (
        isinstance(exc, InputError) and not isinstance(exc, SourceChangedError)
    ):  # a local problem: the state directory (full, locked, corrupted) counts as one
        print(f"upload-engine: error: {redact(one_line(exc))}", file=sys.stderr)
        return EXIT_USAGE
    if isinstance(exc, UploadError):  # a file changed while uploading fails it (resumable)
        print(f"upload-engine: failed: {redact(one_line(exc))}", file=sys.stderr)
        return EXIT_FAILED
    if isinstance(exc, OSError):  # the state directory, the report file: local, not the upload's
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"upload-engine: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return EXIT_FAILED
    if os.environ.get("UPLOAD_ENGINE_DEBUG"):
        return None
    print(
        f"upload-engine: internal error: {type(exc).__name__}: {redact(one_line(exc))} "
        "(set UPLOAD_ENGINE_DEBUG=1 for the traceback)",
        file=sys.stderr,
    )
    return EXIT_FAILED
