"""What a command reports: its ``Outcome``, the exit codes, and the text of its last lines.

Exit codes: 0 all uploaded; 1 a file failed; 2 usage error (bad arguments, bad input found
before any upload); 130 interrupted (rerun the same command to resume).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.models import PresignedRemote, UploadResult
from engine.units import human_bytes, human_rate

__all__ = [
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "Outcome",
    "md5_of",
    "one_line",
    "rate",
    "remote_fields",
    "summary_line",
]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

#: the ids a platform's result carries, in the order reports list them
RESULT_IDS = ("session_id", "project_id", "model_id", "version_id", "ingestion_id")


@dataclass
class Outcome:
    """What a command reports at the end: a human line and a JSON object."""

    line: str
    record: dict[str, Any] = field(default_factory=dict)
    failed: bool = False
    code: int | None = None  # exit code when not 0/1 by ``failed`` (130: interrupted)

    @property
    def exit_code(self) -> int:
        if self.code is not None:
            return self.code
        return EXIT_FAILED if self.failed else EXIT_OK


def remote_fields(result: object) -> dict[str, object]:
    """Where a result's bytes went, as a flat mapping for summary lines, ``--json`` records
    and reports. The one place the CLI reads ``UploadResult.remote`` and a provider result's
    ids: an ``UploadResult`` gives its remote's record (a presigned upload's ``ids`` as they
    are); a provider result (``MatterportResult``, ``SpeckleResult``) its ids."""
    if not isinstance(result, UploadResult):
        return {name: getattr(result, name) for name in RESULT_IDS if hasattr(result, name)}
    if isinstance(result.remote, PresignedRemote):
        return dict(result.remote.ids)
    return result.remote.to_record()


def md5_of(path: Path) -> str:
    """The hex MD5 of a file, read in chunks."""
    with path.open("rb") as f:
        return hashlib.file_digest(f, lambda: hashlib.md5(usedforsecurity=False)).hexdigest()


def rate(size: int, seconds: float) -> float:
    """Bytes per second (0 for an instant run)."""
    return size / seconds if seconds > 0 else 0.0


def summary_line(what: str, size: int, seconds: float) -> str:
    return f"{what}: {human_bytes(size)} in {seconds:.2f} s ({human_rate(rate(size, seconds))})"


def one_line(exc: BaseException) -> str:
    """An error as one line: its message's lines joined (notes and causes left out)."""
    return " ".join(str(exc).split()) or type(exc).__name__
