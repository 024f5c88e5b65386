"""Records that cross layers. All frozen; sizes in bytes, part numbers 1-based."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Final, Self

from engine.errors import SourceError

__all__ = [
    "MAX_PUT_SIZE",
    "FileInfo",
    "PartLimits",
    "PartRequest",
    "PartResult",
    "PartSpec",
    "PresignedRemote",
    "Remote",
    "Skipped",
    "UploadResult",
]


@dataclass(frozen=True, slots=True)
class PartSpec:
    """Byte range ``[offset, offset + size)`` of a file, sent as part ``number`` (1-based)."""

    number: int
    offset: int
    size: int

    @property
    def end(self) -> int:
        return self.offset + self.size


@dataclass(frozen=True, slots=True)
class PartResult:
    """A stored part. ``etag`` is exactly what the storage returned, quotes included."""

    number: int
    etag: str
    size: int


@dataclass(frozen=True, slots=True)
class PartRequest:
    """How to send one part: the presigned URL, the method and the headers it requires."""

    url: str
    method: str = "PUT"
    headers: tuple[tuple[str, str], ...] = ()


#: S3's ceiling for one PUT (a whole object or one part), and so for every store behind it.
MAX_PUT_SIZE: Final = 5 * 1024**3


@dataclass(frozen=True, slots=True)
class PartLimits:
    """What the target accepts. Every part but the last is at least ``min_size``."""

    min_size: int = 5 * 1024**2
    max_size: int = MAX_PUT_SIZE
    max_parts: int = 10_000
    single: bool = False  # the whole file in one PUT


@dataclass(frozen=True, slots=True)
class FileInfo:
    """A local file as it was when planned; its fingerprint detects later changes.

    ``path`` is resolved (symbolic links followed), so one file reached through two paths is
    one file. ``ctime_ns`` and ``inode`` are in the fingerprint because ``touch`` can restore
    an mtime but not a ctime: a file rewritten in place with its mtime put back still differs.
    """

    path: Path
    size: int
    mtime_ns: int
    ctime_ns: int = 0
    device: int = 0
    inode: int = 0

    @classmethod
    def of(cls, path: str | os.PathLike[str]) -> FileInfo:
        given = Path(path)
        try:
            p = given.resolve()
            st = p.stat()
        except FileNotFoundError:
            raise SourceError(f"{given.absolute()}: no such file") from None
        except PermissionError:
            raise SourceError(f"{given.absolute()}: permission denied") from None
        except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop on 3.11/3.12
            reason = exc.strerror if isinstance(exc, OSError) else os.strerror(errno.ELOOP)
            raise SourceError(f"{given.absolute()}: cannot read ({reason})") from exc
        if not stat.S_ISREG(st.st_mode):
            raise SourceError(f"{p}: not a regular file")
        return cls.from_stat(p, st)

    @classmethod
    def from_stat(cls, path: Path, st: os.stat_result) -> FileInfo:
        return cls(path, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_dev, st.st_ino)

    @property
    def key(self) -> str:
        """Stable identity of the file in journals and reports."""
        return str(self.path)

    @property
    def fingerprint(self) -> dict[str, object]:
        return {
            "path": str(self.path),
            "size": self.size,
            "mtime_ns": self.mtime_ns,
            "ctime_ns": self.ctime_ns,
            "device": self.device,
            "inode": self.inode,
        }

    def differences(self, st: os.stat_result) -> list[str]:
        """What differs between this fingerprint and ``st`` (``[]``: unchanged), in words."""
        now = FileInfo.from_stat(self.path, st)
        out = []
        if now.size != self.size:
            out.append(f"size {self.size} -> {now.size}")
        if now.mtime_ns != self.mtime_ns:
            out.append("modification time")
        if now.ctime_ns != self.ctime_ns and now.mtime_ns == self.mtime_ns:
            out.append("status-change time (rewritten with its mtime restored?)")
        if (now.device, now.inode) != (self.device, self.inode):
            out.append("replaced by another file")
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class Remote:
    """Where a file landed on its platform: each platform's subclass names its ids."""

    def to_record(self) -> dict[str, Any]:
        """The ids as a JSON-ready mapping (for the journal, reports and ``--json``)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Self:
        """Rebuild from ``to_record``'s output (a journaled ``done``); missing ids are ""."""
        return cls(**{f.name: record.get(f.name, "") for f in fields(cls)})


@dataclass(frozen=True, slots=True, kw_only=True)
class PresignedRemote(Remote):
    """Whatever a ``PresignedMultipart`` caller's ``complete`` returned."""

    ids: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Self:
        ids = record.get("ids")
        return cls(ids={str(k): str(v) for k, v in ids.items()} if isinstance(ids, dict) else {})


@dataclass(frozen=True, slots=True)
class Skipped:
    """Why a file was not sent at all: ``reason`` ("already uploaded": the journal said done
    and the destination confirmed it), and ``since``, when that upload finished (ISO 8601,
    UTC; "" when the journal does not say)."""

    reason: str
    since: str = ""


@dataclass(frozen=True, slots=True)
class UploadResult:
    """One file's upload: what went where, and what it cost. ``skipped`` is set when nothing
    was sent because the destination already holds the file (``bytes_sent`` 0, ``seconds``
    0)."""

    path: Path
    size: int
    parts: tuple[PartResult, ...]
    seconds: float
    bytes_sent: int
    retries: int
    remote: Remote = field(default_factory=PresignedRemote)
    skipped: Skipped | None = None

    @property
    def throughput(self) -> float:
        """Bytes per second of the file's wall time (0 for an instant upload)."""
        return self.size / self.seconds if self.seconds > 0 else 0.0
