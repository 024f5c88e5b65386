"""Validation copies: local copies of S3 objects, for the planes' content checks.

Rules this module keeps:

* **Why.** The planes check what was stored (E57 page CRCs, the IFC header) and report its MD5,
  which needs the bytes: completing a multipart upload downloads the object into ``cache_dir``
  (``s3-cache/``) in the same worker thread, and ``object_path`` returns that copy, downloading it
  first when it is not cached (a single-PUT object, which the sandbox never sees arrive).
  ``discard=True`` keeps no copy: ``object_path`` is ``None`` and a multipart object's MD5 is
  ``""``, as in ``BlobStore``'s discard mode (content checks skipped).
* **How.** A copy is streamed 1 MiB at a time into a temp file beside its final name (MD5 on the
  way) and renamed into place only when complete; a failed or short download leaves nothing
  (``InternalError`` / ``IncompleteBody``, 500). The file name is 40 hex digits of the key's
  SHA-256, so any key fits.
* A copy remembers the ETag and size S3 gave it; one that no longer matches S3 is dropped.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from engine.sandbox.blobstore import BlobError, MiB
from engine.sandbox.s3store.errors import translate
from engine.sandbox.s3store.location import S3Location

__all__ = ["Copy", "keep_copy"]

_DOWNLOAD_CHUNK: Final = 1 * MiB


@dataclass
class Copy:
    """A downloaded copy of an object: where, and what S3 said it was."""

    path: Path
    etag: str
    size: int
    md5: str


def keep_copy(
    root: Path, key: str, etag: str, answer: Mapping[str, Any], location: S3Location
) -> Copy:
    """Stream a ``GetObject`` ``answer`` for ``key`` into ``root`` (MD5 on the way). Blocking."""
    name = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:40]
    final = root / name
    tmp = root / f".{name}.{secrets.token_hex(4)}"
    md5 = hashlib.md5(usedforsecurity=False)
    size = 0
    body = answer["Body"]
    try:
        with tmp.open("wb") as out:
            while chunk := body.read(_DOWNLOAD_CHUNK):
                md5.update(chunk)
                out.write(chunk)
                size += len(chunk)
        tmp.replace(final)
    except Exception as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise BlobError(
                "InternalError", f"cannot keep a copy of {key}: {exc.strerror or exc}", 500
            ) from None
        raise translate(exc, location) from None
    finally:
        body.close()
    expected = int(answer.get("ContentLength", size))
    if size != expected:
        final.unlink(missing_ok=True)
        raise BlobError("IncompleteBody", f"downloaded {size} of {expected} bytes of {key}", 500)
    return Copy(path=final, etag=etag, size=size, md5=md5.hexdigest())
