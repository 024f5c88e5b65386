"""The ``upload-engine`` command line.

Exit codes: 0 all uploaded; 1 a file failed; 2 usage error (bad arguments, bad input found
before any upload); 130 interrupted (rerun the same command to resume).
Errors are one line on stderr, never a traceback (``UPLOAD_ENGINE_DEBUG=1`` re-raises a bug).
Credentials never come from arguments: MATTERPORT_TOKEN_ID / MATTERPORT_TOKEN_SECRET and
SPECKLE_TOKEN from the environment or, for what the environment lacks, from the credentials
file (``credentials_env``); AWS credentials from the standard AWS chain.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import stat
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import orjson

from engine.config import MiB, UploadConfig
from engine.errors import ConfigError, InputError, SourceChangedError, UploadError
from engine.events import Event, FileFailed
from engine.progress import Mode, ProgressView, human_bytes, human_rate
from engine.redact import redact

__all__ = ["main"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def _size(text: str) -> int:
    """``64MiB``, ``8M``, ``1GiB``, ``1048576`` -> bytes."""
    t = text.strip().lower().removesuffix("b").removesuffix("i")
    mult = {"k": 1024, "m": MiB, "g": 1024 * MiB, "t": 1024 * 1024 * MiB}.get(t[-1:], 1)
    number = t[:-1] if t[-1:] in "kmgt" else t
    try:
        value = int(float(number) * mult)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (try 64MiB)") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"size must be positive: {text!r}")
    return value


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text!r}")
    return value


CREDENTIAL_KEYS = ("MATTERPORT_TOKEN_ID", "MATTERPORT_TOKEN_SECRET", "SPECKLE_TOKEN")
CREDENTIALS_FILE_VAR = "UPLOAD_ENGINE_CREDENTIALS_FILE"


def credentials_path(environ: Mapping[str, str]) -> Path:
    """``$UPLOAD_ENGINE_CREDENTIALS_FILE``, else ``$XDG_CONFIG_HOME/upload-engine/credentials``
    (``~/.config/upload-engine/credentials``)."""
    explicit = environ.get(CREDENTIALS_FILE_VAR)
    if explicit:
        return Path(explicit)
    base = environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "upload-engine" / "credentials"


def credentials_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment, completed from the credentials file (the environment wins).

    The file holds ``KEY=VALUE`` lines (``export`` and quotes allowed, ``#`` comments) for the
    keys in ``CREDENTIAL_KEYS``. It must be a regular file owned by the current user and not
    readable by group or others (``chmod 600``), else ``ConfigError``. A missing file is fine
    unless ``$UPLOAD_ENGINE_CREDENTIALS_FILE`` names it. No value is ever put in a message.
    """
    env = dict(os.environ if environ is None else environ)
    path = credentials_path(env)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        if env.get(CREDENTIALS_FILE_VAR):
            raise ConfigError(f"{CREDENTIALS_FILE_VAR}: {path}: no such file") from None
        return env
    except OSError as exc:
        raise ConfigError(f"credentials file {path}: {exc.strerror or exc}") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"credentials file {path}: not a regular file")
        if st.st_mode & 0o077:
            raise ConfigError(
                f"credentials file {path} is open to group or others (mode "
                f"{stat.S_IMODE(st.st_mode):04o}): run chmod 600 {path}"
            )
        if hasattr(os, "geteuid") and st.st_uid != os.geteuid():
            raise ConfigError(f"credentials file {path} belongs to another user")
        raw = f.read(64 * 1024)
    for key, value in _parse_credentials(raw, path).items():
        env.setdefault(key, value)
    return env


def _parse_credentials(raw: bytes, path: Path) -> dict[str, str]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"credentials file {path}: not UTF-8 text") from None
    found: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.removeprefix("export ").partition("=")
        key, value = key.strip(), value.strip()
        if not sep or key not in CREDENTIAL_KEYS:
            raise ConfigError(
                f"credentials file {path}, line {number}: expected KEY=VALUE with KEY one of "
                f"{', '.join(CREDENTIAL_KEYS)}"
            )
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        found[key] = value
    return found


def state_dir_default() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "upload-engine"


def add_engine_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("engine")
    g.add_argument("--concurrency", type=_positive, default=8, help="PUTs in flight (default 8)")
    g.add_argument("--part-size", type=_size, default=64 * MiB, help="preferred (default 64MiB)")
    g.add_argument("--chunk-size", type=_size, default=1 * MiB, help=argparse.SUPPRESS)
    g.add_argument("--max-attempts", type=_positive, default=8, help="per part (default 8)")
    g.add_argument("--stall-timeout", type=float, default=30.0, help="seconds (default 30)")
    g.add_argument("--no-verify-etag", action="store_true", help="skip the ETag/MD5 check")
    g.add_argument(
        "--insecure", action="store_true", help="do not verify TLS certificates (prints a warning)"
    )
    g.add_argument("--json", action="store_true", help="NDJSON events and a JSON result on stdout")
    g.add_argument(
        "--loop", choices=("auto", "asyncio", "uvloop"), default="auto", help=argparse.SUPPRESS
    )


def engine_config(args: argparse.Namespace) -> UploadConfig:
    return UploadConfig(
        concurrency=args.concurrency,
        part_size=args.part_size,
        chunk_size=args.chunk_size,
        max_attempts=args.max_attempts,
        stall_timeout=args.stall_timeout,
        verify_etag=not args.no_verify_etag,
        verify_tls=not args.insecure,
    )


def view_mode(args: argparse.Namespace) -> Mode:
    if args.json:
        return "json"
    return "tty" if sys.stderr.isatty() else "log"


@dataclass
class Outcome:
    """What a command reports at the end: a human line and a JSON object."""

    line: str
    record: dict[str, Any] = field(default_factory=dict)
    failed: bool = False
    code: int | None = None  # exit code when not 0/1 by ``failed`` (130: interrupted)


Runner = Callable[[argparse.Namespace], Awaitable[Outcome]]


def md5_of(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as f:
        while chunk := f.read(8 * MiB):
            h.update(chunk)
    return h.hexdigest()


def summary_line(what: str, size: int, seconds: float) -> str:
    rate = size / seconds if seconds > 0 else 0.0
    return f"{what}: {human_bytes(size)} in {seconds:.2f} s ({human_rate(rate)})"


def build_parser() -> argparse.ArgumentParser:
    from engine import commands

    parser = argparse.ArgumentParser(
        prog="upload-engine",
        description="Concurrent, resumable uploads of large scan files (E57, IFC).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.register(sub)
    return parser


def _run_async(runner: Runner, args: argparse.Namespace) -> Outcome:
    loop = getattr(args, "loop", "auto")
    use_uvloop = loop == "uvloop"
    if use_uvloop:
        try:
            import uvloop  # noqa: F401
        except ImportError:
            use_uvloop = False
    return anyio.run(runner, args, backend_options={"use_uvloop": use_uvloop})


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
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
    except ConfigError as exc:
        print(f"upload-engine: error: {redact(_one_line(exc))}", file=sys.stderr)
        return EXIT_USAGE
    except SourceChangedError as exc:  # found while uploading: the upload failed (resumable)
        print(f"upload-engine: failed: {redact(_one_line(exc))}", file=sys.stderr)
        return EXIT_FAILED
    except InputError as exc:
        print(f"upload-engine: error: {redact(_one_line(exc))}", file=sys.stderr)
        return EXIT_USAGE
    except UploadError as exc:
        print(f"upload-engine: failed: {redact(_one_line(exc))}", file=sys.stderr)
        return EXIT_FAILED
    except OSError as exc:  # the state directory, the report file: local, not the upload's
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"upload-engine: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return EXIT_FAILED
    except Exception as exc:  # a bug: one line, the traceback only on request
        if os.environ.get("UPLOAD_ENGINE_DEBUG"):
            raise
        print(
            f"upload-engine: internal error: {type(exc).__name__}: {redact(_one_line(exc))} "
            "(set UPLOAD_ENGINE_DEBUG=1 for the traceback)",
            file=sys.stderr,
        )
        return EXIT_FAILED
    if getattr(args, "json", False):
        record = {"ok": not outcome.failed, **outcome.record}
        record.setdefault("seconds", round(time.monotonic() - started, 3))
        sys.stdout.write(redact(orjson.dumps(record, default=str).decode()) + "\n")
    elif outcome.line:
        print(redact(outcome.line))
    if outcome.code is not None:
        return outcome.code
    return EXIT_FAILED if outcome.failed else EXIT_OK


class _OneFileView(ProgressView):
    """The view of a one-file command: its last line (``upload-engine: failed: ...``) says why
    the file failed, so the view does not say it a second time (JSON records still do)."""

    _quiet = False

    def __call__(self, event: Event) -> None:
        self._quiet = isinstance(event, FileFailed)
        try:
            super().__call__(event)
        finally:
            self._quiet = False

    def print(self, message: str) -> None:
        if not self._quiet:
            super().print(message)


def _one_line(exc: BaseException) -> str:
    """An error as one line: its message's lines joined (notes and causes left out)."""
    return " ".join(str(exc).split()) or type(exc).__name__


@contextlib.contextmanager
def progress_for(args: argparse.Namespace, *, files: int, total: int) -> Iterator[ProgressView]:
    kind = _OneFileView if files == 1 else ProgressView
    with kind(view_mode(args), total_files=files, total_bytes=total) as view:
        yield view


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
