"""Object keys: which keys are safe, and the flat file name each one is stored under.

Rules this module keeps:

* **Keys are checked before anything else** (400 ``InvalidKey``): refused are empty keys, more
  than 1024 UTF-8 bytes, NUL or other control characters, backslashes, a leading ``/`` and any
  empty, ``.`` or ``..`` segment (stricter than S3, which would take ``a//b``; nothing here may
  name a path outside the store).
* **One flat file per object.** ``objects/<quoted key>``: the key percent-encoded into one file
  name, so ``a`` and ``a/b`` can coexist; names longer than 200 characters are cut and end in
  ``~`` plus 32 hex digits of the key's SHA-256, so distinct keys keep distinct files.
"""

from __future__ import annotations

import hashlib
from typing import Final
from urllib.parse import quote

from engine.sandbox.blobstore.errors import BlobError

__all__ = ["MAX_KEY_BYTES", "object_filename", "validate_key"]

MAX_KEY_BYTES: Final = 1024
_MAX_FILENAME: Final = 200


def validate_key(key: str) -> str:
    """Return ``key`` if it is a safe object key, else raise ``BlobError("InvalidKey")``.

    Refused: empty keys, more than 1024 UTF-8 bytes, NUL or other control characters, backslashes,
    a leading ``/`` and any empty, ``.`` or ``..`` segment (stricter than S3, which would take
    ``a//b``; nothing here may name a path outside the store).
    """
    if not key:
        raise BlobError("InvalidKey", "The object key must not be empty.")
    if len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        raise BlobError("InvalidKey", f"The object key is longer than {MAX_KEY_BYTES} bytes.")
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in key):
        raise BlobError("InvalidKey", "The object key contains a control character.")
    if "\\" in key:
        raise BlobError("InvalidKey", "The object key contains a backslash.")
    if key.startswith("/"):
        raise BlobError("InvalidKey", "The object key must not be an absolute path.")
    if any(segment in ("", ".", "..") for segment in key.split("/")):
        raise BlobError("InvalidKey", "The object key has an empty, '.' or '..' segment.")
    return key


def object_filename(key: str) -> str:
    """The one file name (no ``/``) that the object ``key`` is stored under."""
    name = quote(key, safe="")
    if len(name) <= _MAX_FILENAME:
        return name
    digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    return f"{name[: _MAX_FILENAME - 34]}~{digest}"
