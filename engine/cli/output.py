"""What a command reports: its ``Outcome``, the exit codes, the JSON lines of ``--json``, and the
text of its last lines.

Exit codes, the same for every command and destination (the README's table is this one):

====  =====================================================================================
0     every file uploaded (or skipped: already uploaded by an earlier run)
1     a file failed remotely (the platform or the storage refused it or kept failing)
2     usage or local error: bad arguments or configuration, a file refused by the checks
      made before anything is sent (missing, unreadable, empty, wrong format, too large),
      the state directory unusable
3     authentication or permission: credentials missing, refused, or without access
130   interrupted (Ctrl-C / SIGTERM): rerun the same command to resume
====  =====================================================================================

When files of one run end differently the code is the first of 130, 3, 1, 2 that applies.

``--json``: stdout carries JSON lines only, each an object with ``type`` and ``ts`` (UTC,
ISO 8601), and always ends with exactly one ``{"type": "Result", "ok": ...}`` (also after a
failure or an interrupt, where ``ok`` is false). Everything for people goes to stderr. The
schema is ``docs/json-output.schema.json``.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from engine.errors import (
    AuthenticationError,
    ConfigError,
    InputError,
    InterruptedUpload,
    PermissionDeniedError,
    SourceChangedError,
    StateError,
)
from engine.redact import redact
from engine.units import human_bytes, human_rate

__all__ = [
    "EXIT_AUTH",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "Outcome",
    "escape",
    "exit_code_of",
    "json_line",
    "md5_of",
    "one_line",
    "plural",
    "rate",
    "remote_fields",
    "shown_path",
    "summary_line",
    "timestamp",
    "worst",
]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_AUTH = 3
EXIT_INTERRUPTED = 130
_PRECEDENCE = (EXIT_INTERRUPTED, EXIT_AUTH, EXIT_FAILED, EXIT_USAGE)

#: the ids a platform's result carries, in the order reports list them
RESULT_IDS = ("session_id", "project_id", "model_id", "version_id", "ingestion_id")


def exit_code_of(exc: BaseException) -> int:
    """The exit code of a run (or one file) that ended with ``exc``."""
    if isinstance(exc, KeyboardInterrupt | InterruptedUpload):
        return EXIT_INTERRUPTED
    if isinstance(exc, AuthenticationError | PermissionDeniedError):
        return EXIT_AUTH
    if isinstance(exc, SourceChangedError):  # found while sending: resumable, not the input's
        return EXIT_FAILED
    if isinstance(exc, ConfigError | InputError | StateError):
        return EXIT_USAGE
    return EXIT_FAILED


def worst(codes: Iterable[int]) -> int:
    """The one exit code of files that ended with ``codes``: the first of 130, 3, 1, 2 seen."""
    seen = set(codes)
    return next((code for code in _PRECEDENCE if code in seen), EXIT_OK)


@dataclass
class Outcome:
    """What a command reports at the end: a human line and a JSON object."""

    line: str
    record: dict[str, Any] = field(default_factory=dict)
    failed: bool = False
    code: int | None = None  # exit code when not 0/1 by ``failed`` (2, 3, 130)

    @property
    def exit_code(self) -> int:
        if self.code is not None:
            return self.code
        return EXIT_FAILED if self.failed else EXIT_OK


# ---- JSON lines ------------------------------------------------------------------------------


def timestamp() -> str:
    """Now, UTC, ISO 8601 with milliseconds (``2025-01-31T12:00:00.123Z``)."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def json_line(record: dict[str, Any], stream: IO[str] | None = None) -> None:
    """One ``--json`` record on stdout (or ``stream``): ``type`` first, ``ts`` added,
    redacted, flushed."""
    import orjson  # here: parsing the command line (``--help``) does without it

    line = {"type": record.get("type", "Result"), "ts": timestamp()}
    line.update((k, v) for k, v in record.items() if k not in ("type", "ts"))
    out = stream or sys.stdout
    out.write(redact(orjson.dumps(line, default=str).decode()) + "\n")
    out.flush()


# ---- text for people -------------------------------------------------------------------------

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def escape(text: str) -> str:
    """``text`` with control characters shown as escapes (a newline in a file name must not
    split a log line, an escape sequence must not reach the terminal)."""
    return _CONTROL.sub(lambda m: _NAMED.get(m.group(), f"\\x{ord(m.group()):02x}"), text)


def shown_path(path: Path, root: Path | None = None) -> str:
    """How a line names a file: relative to ``root`` (the import's directory) or else to the
    working directory when it lies below it, else in full; control characters escaped."""
    for base in (root, Path.cwd()):
        if base is None:
            continue
        try:
            return escape(path.relative_to(base).as_posix())
        except ValueError:
            continue
    return escape(str(path))


def plural(n: int, word: str, many: str | None = None) -> str:
    """``1 part``, ``2 parts``, ``1 retry``, ``3 retries`` (``many`` when not ``word + s``)."""
    return f"{n} {word if n == 1 else (many or word + 's')}"


def remote_fields(result: object) -> dict[str, object]:
    """Where a result's bytes went, as a flat mapping for summary lines, ``--json`` records
    and reports. The one place the CLI reads ``UploadResult.remote`` and a provider result's
    ids: an ``UploadResult`` gives its remote's record (a presigned upload's ``ids`` as they
    are); a provider result (``MatterportResult``, ``SpeckleResult``) its ids."""
    from engine.models import PresignedRemote, UploadResult

    if not isinstance(result, UploadResult):
        return {name: getattr(result, name) for name in RESULT_IDS if hasattr(result, name)}
    if isinstance(result.remote, PresignedRemote):
        return dict(result.remote.ids)
    return result.remote.to_record()


def md5_of(path: Path) -> str:
    """The hex MD5 of a file, read in chunks."""
    import hashlib

    with path.open("rb") as f:
        return hashlib.file_digest(f, lambda: hashlib.md5(usedforsecurity=False)).hexdigest()


def rate(size: int, seconds: float) -> float:
    """Bytes per second (0 for an instant run)."""
    return size / seconds if seconds > 0 else 0.0


def summary_line(what: str, size: int, seconds: float, sent: int | None = None) -> str:
    """``WHAT: SIZE in S s (RATE)``; the rate counts the bytes ``sent`` by this run (parts
    stored by an earlier run excluded), as the progress bar does."""
    moved = size if sent is None else sent
    stored = f", {human_bytes(size - moved)} already stored" if moved < size else ""
    return (
        f"{what}: {human_bytes(size)} in {seconds:.2f} s "
        f"({human_rate(rate(moved, seconds))}{stored})"
    )


def one_line(exc: BaseException) -> str:
    """An error as one line: its message's lines joined (notes and causes left out)."""
    return escape(" ".join(str(exc).split())) or type(exc).__name__
