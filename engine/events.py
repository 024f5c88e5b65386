"""Progress as data: frozen records delivered to the caller's hook, in order, on the loop.

Byte progress may go backwards: a retried part first reports ``PartRetry.bytes_lost``
(bytes of the failed attempt no longer counted), then its new bytes again.
Rendering (bars, logs, JSON lines) belongs to the front ends.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.models import UploadResult

__all__ = [
    "BytesSent",
    "Concurrency",
    "Event",
    "EventHook",
    "FileEvent",
    "FileFailed",
    "FileFinished",
    "FileStarted",
    "PartDone",
    "PartRetry",
    "Phase",
    "event_to_dict",
]


@dataclass(frozen=True, slots=True)
class FileStarted:
    path: Path
    size: int
    parts: int  # parts planned
    parts_done: int  # of those, already stored (resume)
    bytes_done: int


@dataclass(frozen=True, slots=True)
class BytesSent:
    path: Path
    part: int
    bytes: int  # newly written to the socket in this step


@dataclass(frozen=True, slots=True)
class PartDone:
    path: Path
    part: int
    size: int
    etag: str
    attempts: int


@dataclass(frozen=True, slots=True)
class PartRetry:
    path: Path
    part: int
    attempt: int  # the attempt that failed (1-based)
    reason: str
    delay: float  # seconds until the next attempt
    bytes_lost: int  # bytes of the failed attempt to subtract from progress


@dataclass(frozen=True, slots=True)
class Phase:
    """A control-plane step of a file (session created, ingestion processing 40 %, ...)."""

    path: Path
    message: str
    progress: float | None = None  # 0..1 when the platform reports it


@dataclass(frozen=True, slots=True)
class FileFinished:
    path: Path
    result: UploadResult


@dataclass(frozen=True, slots=True)
class FileFailed:
    path: Path
    error: BaseException


@dataclass(frozen=True, slots=True)
class Concurrency:
    """The adaptive window changed: ``size`` PUTs may now be in flight across every file."""

    size: int
    in_flight: int  # PUTs in flight at the change (they finish when the window shrinks)
    why: str  # "goodput 412 MB/s", "pushed back: HTTP 503 SlowDown", ...


#: the events about one file (each has its ``path``)
FileEvent = FileStarted | BytesSent | PartDone | PartRetry | Phase | FileFinished | FileFailed
Event = FileEvent | Concurrency
EventHook = Callable[[Event], None]


def event_to_dict(event: Event) -> dict[str, Any]:
    """A JSON-ready view of an event (``type`` plus its fields)."""
    out: dict[str, Any] = {"type": type(event).__name__}
    for name in event.__slots__:
        value = getattr(event, name)
        if isinstance(value, Path):
            value = str(value)
        elif isinstance(value, UploadResult):
            value = {
                "size": value.size,
                "seconds": round(value.seconds, 3),
                "parts": len(value.parts),
                "retries": value.retries,
                "remote": value.remote.to_record(),
            }
        elif isinstance(value, BaseException):
            value = str(value)
        out[name] = value
    return out
