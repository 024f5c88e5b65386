"""Completing multipart uploads: which completions S3 accepts, and assembling the object.

Rules this module keeps:

* **A completion is checked in S3's order:** an upload already being assembled answers
  ``OperationAborted``; an empty part list ``MalformedXML``; part numbers must ascend
  (``InvalidPartOrder``); every listed part must exist with that ETag, quotes optional
  (``InvalidPart``); every part but the last must be at least the minimum size
  (``EntityTooSmall``). Parts not listed are dropped, as in S3.
* **A retried completion is answered, not refused.** Completing an already completed upload
  again with the same key and parts returns the same object (S3 tolerates a retried completion);
  anything else on a finished upload is ``NoSuchUpload``. The blob store remembers its last 4096
  completions for this.
* **Nothing partial is ever visible.** :meth:`Assembly.run` streams the part files into a temp
  file (1 MiB at a time, MD5 on the way); the store makes it the object by ``os.replace`` only
  once it is complete. In discard mode there is nothing to assemble and the MD5 is ``""``.
"""

from __future__ import annotations

import hashlib
import itertools
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, TypeAlias

from engine.sandbox.blobstore.errors import OPERATION_ABORTED, BlobError, no_such_upload
from engine.sandbox.blobstore.records import MiB, Part, StoredObject, Upload, unquoted

__all__ = ["Assembly", "CompletedUploads", "Listed", "choose_parts", "listed_parts"]

Listed: TypeAlias = tuple[tuple[int, str], ...]
"""A completion's ``(part_number, etag)`` list, ETags unquoted."""

_COPY_BUFFER: Final = 1 * MiB


def listed_parts(parts: Sequence[tuple[int, str]]) -> Listed:
    return tuple((int(number), unquoted(etag)) for number, etag in parts)


def choose_parts(upload: Upload, listed: Listed, minimum: int) -> list[Part]:
    """The stored parts a completion of ``upload`` with ``listed`` assembles, in order."""
    if upload.completing:
        raise BlobError("OperationAborted", OPERATION_ABORTED)
    if not listed:
        raise BlobError(
            "MalformedXML",
            "The XML you provided was not well-formed or did not validate against our "
            "published schema.",
        )
    for (previous, _), (number, _) in itertools.pairwise(listed):
        if number <= previous:
            raise BlobError(
                "InvalidPartOrder",
                "The list of parts was not in ascending order. The parts list must be "
                "specified in order by part number.",
            )
    chosen = [_listed_part(upload, number, etag) for number, etag in listed]
    if any(part.size < minimum for part in chosen[:-1]):
        raise BlobError(
            "EntityTooSmall",
            "Your proposed upload is smaller than the minimum allowed object size.",
        )
    return chosen


def _listed_part(upload: Upload, number: int, etag: str) -> Part:
    part = upload.parts.get(number)
    if part is None or part.etag_hex != etag:
        raise BlobError(
            "InvalidPart",
            "One or more of the specified parts could not be found. The part may not "
            "have been uploaded, or the specified entity tag may not have matched the "
            "part's entity tag.",
        )
    return part


class CompletedUploads:
    """Completed uploads, by upload id, for answering retried completions (the newest ``limit``;
    ``None``: all). Not thread-safe: the caller serialises access."""

    def __init__(self, limit: int | None) -> None:
        self._limit = limit
        self._done: OrderedDict[str, tuple[str, Listed, StoredObject]] = OrderedDict()

    def replay(self, upload_id: str, key: str, listed: Listed) -> StoredObject | None:
        """The object an identical earlier completion made; ``None`` if the upload was never
        completed; ``NoSuchUpload`` if it was, with another key or other parts."""
        done = self._done.get(upload_id)
        if done is None:
            return None
        done_key, done_listed, done_object = done
        if done_key == key and done_listed == listed:
            return done_object
        raise no_such_upload()

    def remember(self, upload_id: str, listed: Listed, stored: StoredObject) -> None:
        self._done[upload_id] = (stored.key, listed, stored)
        while self._limit is not None and len(self._done) > self._limit:
            self._done.popitem(last=False)


@dataclass
class Assembly:
    """A validated completion: concatenate the part files into ``output`` and MD5 the result."""

    key: str
    upload_id: str
    listed: Listed
    part_paths: list[Path] | None  # None in discard mode
    output: Path | None
    size: int
    etag: str

    def run(self) -> str:
        """Blocking: stream the parts into the output file; return the whole-object MD5 hex."""
        if self.part_paths is None or self.output is None:
            return ""
        md5 = hashlib.md5(usedforsecurity=False)
        buffer = bytearray(_COPY_BUFFER)
        view = memoryview(buffer)
        with self.output.open("wb") as out:
            for path in self.part_paths:
                with path.open("rb") as src:
                    while n := src.readinto(buffer):
                        md5.update(view[:n])
                        out.write(view[:n])
        return md5.hexdigest()
