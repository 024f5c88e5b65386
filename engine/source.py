"""Positional reads of a local file: the only place that touches the file's bytes.

Rules: reads are ``os.pread`` at explicit offsets (no shared file position, so parts read
concurrently from one descriptor); each read returns a fresh ``bytes`` object that is never
reused, so a transport that keeps a reference after ``write()`` (Python >= 3.12, uvloop) can
never see it change; reads run in worker threads; a short read means the file shrank while
uploading and fails the file; the fingerprint (size, mtime, ctime, inode) is checked when the
file is opened, after every part is sent (before it counts as stored) and before completion, so
a file rewritten under a part fails as changed instead of being committed mixed. ``OSError``
is translated here.
"""

from __future__ import annotations

import hashlib
import os
from types import TracebackType
from typing import Self

from engine.errors import SourceChangedError, SourceError, source_error
from engine.models import FileInfo

__all__ = ["FileSource", "read_chunk", "read_into"]


class FileSource:
    """An open file checked against its planned fingerprint. Use as a context manager."""

    def __init__(self, info: FileInfo) -> None:
        self.info = info
        self.fd = -1

    def __repr__(self) -> str:
        state = "open" if self.fd >= 0 else "closed"
        return f"<FileSource {self.info.path} {self.info.size} bytes {state}>"

    def __enter__(self) -> Self:
        try:
            self.fd = os.open(self.info.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError as exc:
            raise source_error(self.info.path, exc, "open") from exc
        try:
            self.check_unchanged()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def check_unchanged(self, *, uploading: bool = False) -> None:
        """Raise ``SourceChangedError`` if the file's fingerprint differs from the plan."""
        try:
            st = self.info.path.stat()  # by path: a file replaced by rename shows too
        except OSError:
            st = os.fstat(self.fd)
        changes = self.info.differences(st)
        if changes:
            when = "while uploading" if uploading else "since it was planned"
            raise SourceChangedError(
                f"{self.info.path} changed {when} ({', '.join(changes)}); "
                "rerun to upload the new contents"
            )


def read_into(fd: int, view: memoryview, offset: int, md5: hashlib._Hash | None) -> None:
    """Fill ``view`` from ``offset`` and feed it to ``md5``, as ``read_chunk`` does, into a
    buffer the caller reuses: only for a sender whose write has copied the bytes out when it
    returns (a blocking ``sendall``), never for an asyncio transport. Blocking."""
    try:
        n = os.preadv(fd, [view], offset)
    except OSError as exc:
        raise SourceError(f"read failed at offset {offset}: {exc.strerror}") from exc
    if n != len(view):
        raise SourceChangedError(
            f"file is shorter than planned (read {n} of {len(view)} bytes at offset "
            f"{offset}); it changed while uploading — rerun to upload the new contents"
        )
    if md5 is not None:
        md5.update(view)


def read_chunk(fd: int, size: int, offset: int, md5: hashlib._Hash | None) -> bytes:
    """Read exactly ``size`` bytes at ``offset`` and feed them to ``md5``. Blocking: call it
    in a worker thread (``hashlib`` releases the GIL on large buffers, so hashing overlaps)."""
    try:
        data = os.pread(fd, size, offset)
    except OSError as exc:
        raise SourceError(f"read failed at offset {offset}: {exc.strerror}") from exc
    if len(data) != size:
        raise SourceChangedError(
            f"file is shorter than planned (read {len(data)} of {size} bytes at offset "
            f"{offset}); it changed while uploading — rerun to upload the new contents"
        )
    if md5 is not None:
        md5.update(data)
    return data
