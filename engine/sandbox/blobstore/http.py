"""The blob store's HTTP side: which ``PUT /blob/{key}`` requests get in, and S3's answers.

Rules this module keeps:

* **A PUT is checked in a fixed order** before a byte is read: key syntax (400 ``InvalidKey``, no
  path traversal), signature present and valid, with every signed header present and equal (403
  ``SignatureDoesNotMatch``), expiry (403 ``AccessDenied`` / ``Request has expired``),
  ``Content-Length`` present and no chunked body (411 ``MissingContentLength``), ``partNumber`` in
  ``1..max_parts`` (400 ``InvalidArgument``), size at most ``max_part_size`` (single PUT:
  ``max_object_size``) (400 ``EntityTooLarge``), upload exists for that key (404 ``NoSuchUpload``),
  then the headers the storage mode needs (:meth:`.modes.StorageMode.check_headers`). The
  signature and expiry checks, and the size and length errors, are the mode's (``azure``: the
  SAS, 413 ``RequestBodyTooLarge``, 411 ``MissingContentLengthHeader``).
* **Every answer names its request** in ``x-amz-request-id`` (``azure``: ``x-ms-request-id``);
  errors are the mode's XML documents (``application/xml``) and are counted by status and by
  code.
* **A stall** stops reading for its time, or until the client hangs up or the store closes,
  polling every 50 ms; then the connection is dropped.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Final, NamedTuple

import anyio
from aiohttp import web

from engine.sandbox.blobstore.errors import BlobError, no_such_upload
from engine.sandbox.blobstore.keys import validate_key
from engine.sandbox.blobstore.records import PutTarget, Upload

if TYPE_CHECKING:
    from collections.abc import Callable

    from multidict import CIMultiDictProxy, MultiMapping

    from engine.sandbox.blobstore.modes import StorageMode

__all__ = ["PutLimits", "abort_connection", "authorize", "wait_stalled"]

_STALL_POLL: Final = 0.05


class PutLimits(NamedTuple):
    """The size rules a PUT is checked against (bytes)."""

    max_parts: int
    max_part_size: int
    max_object_size: int


def authorize(
    raw_key: str,
    query: MultiMapping[str],
    headers: CIMultiDictProxy[str],
    content_length: int | None,
    *,
    mode: StorageMode,
    limits: PutLimits,
    uploads: Mapping[str, Upload],
) -> PutTarget:
    """Check a PUT in the documented order; return what it will write or raise BlobError."""
    key = validate_key(raw_key)
    params = mode.verify(key, query, headers)
    transfer_encoding = headers.get("Transfer-Encoding", "")
    if content_length is None or "chunked" in transfer_encoding.lower():
        raise mode.missing_length()
    upload_id, part_number = _part_of(params, limits.max_parts)
    limit = limits.max_part_size if upload_id is not None else limits.max_object_size
    if content_length > limit:
        raise mode.too_large(limit)
    if upload_id is not None:
        upload = uploads.get(upload_id)
        if upload is None or upload.key != key or upload.completing:
            raise no_such_upload()
    target = PutTarget(
        key=key,
        upload_id=upload_id,
        part_number=part_number,
        size=content_length,
        content_md5=headers.get("Content-MD5"),
    )
    return mode.check_headers(target, headers, params)


def _part_of(params: Mapping[str, str], max_parts: int) -> tuple[str | None, int]:
    """``(uploadId, partNumber)`` of a part PUT, ``(None, 0)`` of a single PUT."""
    upload_id = params.get("uploadId")
    raw_part = params.get("partNumber")
    if (upload_id is None) != (raw_part is None):
        raise BlobError("InvalidArgument", "uploadId and partNumber must be given together.")
    if raw_part is None:
        return upload_id, 0
    try:
        part_number = int(raw_part)
    except ValueError:
        part_number = -1
    if not (1 <= part_number <= max_parts):
        raise BlobError(
            "InvalidArgument",
            f"Part number must be an integer between 1 and {max_parts}, inclusive.",
        )
    return upload_id, part_number


async def wait_stalled(request: web.Request, seconds: float, closing: Callable[[], bool]) -> None:
    """Stop reading for ``seconds``, or until the client hangs up or ``closing()`` is true."""
    deadline = anyio.current_time() + seconds
    while (remaining := deadline - anyio.current_time()) > 0:
        transport = request.transport
        if transport is None or transport.is_closing() or closing():
            return
        await anyio.sleep(min(_STALL_POLL, remaining))


def abort_connection(request: web.Request) -> None:
    """Drop the connection now, without an answer (a reset, as the client sees it)."""
    transport = request.transport
    if transport is not None:
        transport.abort()
