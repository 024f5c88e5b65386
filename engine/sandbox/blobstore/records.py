"""What the blob store holds: parts, uploads and objects, and the ETags S3 gives them.

Rules this module keeps:

* **ETags are S3's.** A part or single-PUT object has the quoted MD5 hex of its bytes (in the
  default mode; see :mod:`.modes` for the others); a multipart object has
  ``"md5(etag(p1)‖…‖etag(pN))-N"`` over the parts' ETags as binary, which is
  ``"md5(md5(p1)‖…‖md5(pN))-N"`` when each part's ETag is its MD5. Comparisons take ETags with
  or without quotes.
* **Records are values.** :class:`StoredPart` and :class:`StoredObject` (what callers see) and
  :class:`Part` are frozen; an :class:`Upload` is the one mutable record, owned by the event loop
  thread (its parts and its ``completing`` flag).
* Sizes are bytes; ``KiB``/``MiB``/``GiB`` are the binary units.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

__all__ = [
    "GiB",
    "KiB",
    "MiB",
    "Part",
    "PutTarget",
    "StoredObject",
    "StoredPart",
    "Upload",
    "composite_etag",
    "quoted",
    "unquoted",
    "wrong_etag",
]

KiB: Final = 1024
MiB: Final = 1024 * KiB
GiB: Final = 1024 * MiB


@dataclass(frozen=True)
class StoredPart:
    """One stored part. ``size`` in bytes; ``etag`` is the quoted MD5 hex of its bytes."""

    number: int
    size: int
    etag: str


@dataclass(frozen=True)
class StoredObject:
    """One stored object. ``size`` in bytes; ``etag`` quoted (``"<hex>-N"`` for multipart);
    ``md5`` the hex MD5 of the whole object (``""`` for a multipart object in discard mode)."""

    key: str
    size: int
    etag: str
    md5: str


def quoted(hexdigest: str) -> str:
    return f'"{hexdigest}"'


def unquoted(etag: str) -> str:
    if len(etag) >= 2 and etag.startswith('"') and etag.endswith('"'):
        return etag[1:-1]
    return etag


def composite_etag(part_etags: Sequence[str]) -> str:
    """The ETag of a multipart object made of parts with these (unquoted, 32 hex) ETags, in
    order: ``md5`` of their binary concatenation, ``-N``."""
    joined = b"".join(bytes.fromhex(etag) for etag in part_etags)
    return quoted(f"{hashlib.md5(joined, usedforsecurity=False).hexdigest()}-{len(part_etags)}")


def wrong_etag(digest: bytes) -> str:
    """A well-formed quoted MD5 ETag that is certainly not the MD5 of the stored bytes."""
    return quoted(hashlib.md5(b"bad-etag:" + digest, usedforsecurity=False).hexdigest())


@dataclass(frozen=True)
class Part:
    """A stored part as the store keeps it: its MD5 ``digest`` and the ETag it was answered with
    (``etag_hex``, unquoted; the MD5 hex in the default mode)."""

    number: int
    size: int
    digest: bytes
    etag_hex: str

    @property
    def etag(self) -> str:
        return quoted(self.etag_hex)


@dataclass
class Upload:
    """A multipart upload in progress; ``completing`` while its object is being assembled."""

    key: str
    upload_id: str
    parts: dict[int, Part] = field(default_factory=dict)
    completing: bool = False


@dataclass(frozen=True)
class PutTarget:
    """What an authorised PUT will write (single PUT: ``part_number`` 0, ``upload_id`` None).

    ``encrypted``: the PUT carried a customer key (SSE-C); ``answer_headers``: headers the mode
    settled before the body that its answer repeats (the customer key's MD5, the API version)."""

    key: str
    upload_id: str | None
    part_number: int
    size: int
    content_md5: str | None
    encrypted: bool = False
    answer_headers: tuple[tuple[str, str], ...] = ()
