"""The legacy REST upload: ``POST /api/file/{fileType}/{projectId}[/{modelName}]`` (v2, legacy).

Rules this module keeps, each one the real server's unless marked
(``packages/server/modules/fileuploads/rest/router.ts`` and what it calls):

* **Order.** After the door (rate limit, then an invalid token's 403): the write pipeline
  (``streamWritePermissionsPipelineFactory`` in ``modules/shared/authz.ts``, answered by
  ``authMiddlewareCreator`` as ``{"error": message}``): no token → 403 "Your auth token does not
  have the required scope: streams:write."; a project that does not exist → 404 "Project ID is
  malformed and cannot be found, or the project does not exist"; one the token may not write →
  403 "You do not have access to the project". Then the model, found by name case-insensitively
  (``getStreamBranchByName``; default ``main``): none → 404 ``{"error": {"message": "Branch
  {branchName} was not found", "code": "BRANCH_NOT_FOUND"}}`` (the template is not filled in on
  this path: ``defaultErrorHandler`` sends ``e.message`` as is). Then the body.
* **The body** must be what busboy takes (``modules/blobstorage/rest/busboy.ts``): no
  Content-Type → 400 ``BAD_REQUEST_ERROR`` "Missing Content-Type"; not a media type → "Malformed
  content type"; multipart without a boundary → "Multipart: Boundary not found"; neither
  multipart/form-data nor urlencoded → "Unsupported content type: <header>". A urlencoded body
  holds no files. A multipart body that breaks off or does not parse → 400 with the body
  ``{ "error": "Upload request error. The server logs may have more details." }``, and every
  blob the request started fails ("Unexpected end of form").
* **Each file part** (a part with a filename; other fields are ignored) becomes a blob, streamed
  to the blob store through a temporary file (never held in memory: one chunk at a time), like
  the server's ``uploadFileStream`` into S3. Past ``size_limit`` bytes busboy truncates it: the
  rest is drained, nothing is stored, and its entry is ``uploadStatus`` 2 with ``uploadError``
  "File size limit reached" (``markUploadOverFileSizeLimitFactory``).
* **201** ``{"uploadResults": [...]}``, one entry per file in order: ``blobId``, ``uploadStatus``
  (1 stored, 2 error), ``fileSize`` (null on error), ``fileName``, ``formKey``, and
  ``uploadError`` on error (``processNewFileStreamFactory``). v2 adds the ``Warning`` header of
  the deprecation. Every entry becomes a file upload of the model (``saveFileUploads``); one of a
  type the server does not ingest, or whose bytes were not stored, ends with ``convertedStatus``
  3 (sandbox rule: on the server the first stays queued and the second fails in the importer).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import AsyncGenerator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import aiohttp
import anyio
import anyio.to_thread
from aiohttp import web
from aiohttp.helpers import parse_mimetype

from engine.sandbox.blobstore import MiB
from engine.sandbox.responses import json_response
from engine.sandbox.speckle.errors import BAD_REQUEST_ERROR, BRANCH_NOT_FOUND, rest_error_body
from engine.sandbox.speckle.fileuploads import UNSUPPORTED_MESSAGE
from engine.sandbox.speckle.records import BlobRecord, Caller, Verdict, now

__all__ = ["UPLOAD_REQUEST_ERROR", "handle_legacy_upload"]

if TYPE_CHECKING:  # the plane imports this module
    from engine.sandbox.speckle.plane import SpecklePlane

UPLOAD_REQUEST_ERROR: Final = (
    '{ "error": "Upload request error. The server logs may have more details." }'
)
_WARNING: Final = (
    "Deprecated API; use POST /graphql (mutation.fileUploadMutations.generateUploadUrl), then PUT "
    "(to the provided url), then POST /graphql (mutation.fileUploadMutations.startFileImport)"
)
_CHUNK: Final = 1 * MiB
_BROKEN: Final = "Unexpected end of form"  # busboy's error for a body that breaks off
_PUT_ATTEMPTS: Final = 3  # sandbox rule: the server's S3 client retries (aws-sdk: 3 attempts)


class _BadForm(Exception):
    """The multipart body does not parse."""


async def handle_legacy_upload(
    plane: SpecklePlane, request: web.Request, caller: Caller
) -> web.StreamResponse:
    """The route's handler, past the door (see the module docstring)."""
    plane.count("rest_uploads")
    project_id = request.match_info["projectId"]
    refused = _refuse_caller(plane, caller, project_id)
    if refused is not None:
        return refused
    model = plane.model_by_name(project_id, request.match_info.get("modelName") or "main")
    if model is None:
        body = rest_error_body(BRANCH_NOT_FOUND, "Branch {branchName} was not found")
        return json_response(body, status=404)
    kind = _form_kind(request.headers.get("Content-Type"))
    if kind not in ("multipart", "urlencoded"):
        return json_response(rest_error_body(BAD_REQUEST_ERROR, kind), status=400)
    results: list[dict[str, Any]] = []
    if kind == "multipart":
        try:
            results = await _receive(plane, request, caller, project_id)
        except _BadForm:
            return web.Response(
                status=400, text=UPLOAD_REQUEST_ERROR, content_type="application/json"
            )
    for result in results:
        _save_upload(plane, result, model.id)
    headers = {"Warning": _WARNING} if plane.config.api == "v2" else {}
    return json_response({"uploadResults": results}, status=201, headers=headers)


def _refuse_caller(plane: SpecklePlane, caller: Caller, project_id: str) -> web.Response | None:
    if caller.anonymous:
        message = "Your auth token does not have the required scope: streams:write."
        return json_response({"error": message}, status=403)
    if project_id not in plane._projects:
        message = "Project ID is malformed and cannot be found, or the project does not exist"
        return json_response({"error": message}, status=404)
    if project_id not in caller.projects:
        return json_response({"error": "You do not have access to the project"}, status=403)
    return None


def _form_kind(header: str | None) -> str:
    """``multipart`` or ``urlencoded``, else busboy's refusal."""
    if header is None:
        return "Missing Content-Type"
    mime = parse_mimetype(header)
    if not mime.type or not mime.subtype:
        return "Malformed content type"
    if (mime.type, mime.subtype) == ("multipart", "form-data"):
        return "multipart" if mime.parameters.get("boundary") else "Multipart: Boundary not found"
    if (mime.type, mime.subtype) == ("application", "x-www-form-urlencoded"):
        return "urlencoded"
    return f"Unsupported content type: {header}"


async def _receive(
    plane: SpecklePlane, request: web.Request, caller: Caller, project_id: str
) -> list[dict[str, Any]]:
    """Store every file part of the body; their upload results, in order. A body that breaks
    off marks every blob it started as failed (busboy's ``error``: ``markUploadError``)."""
    results: list[dict[str, Any]] = []
    before = set(plane._blobs)
    try:
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if not isinstance(part, aiohttp.BodyPartReader) or part.filename is None:
                await part.release()
                continue
            results.append(await _receive_file(plane, part, caller, project_id))
    except (ValueError, AssertionError, EOFError, aiohttp.ClientError, ConnectionError) as exc:
        for file_id in set(plane._blobs) - before:
            plane._blobs[file_id] = replace(
                plane._blobs[file_id], status="error", upload_error=_BROKEN
            )
        raise _BadForm from exc
    return results


async def _receive_file(
    plane: SpecklePlane, part: aiohttp.BodyPartReader, caller: Caller, project_id: str
) -> dict[str, Any]:
    file_name = part.filename or ""
    file_id = plane._new_id(plane._blobs)
    blob = BlobRecord(
        file_id=file_id,
        project_id=project_id,
        file_name=file_name,
        key=f"speckle/{project_id}/{file_id}",
        created_at=now(),
        user_id=caller.user_id or "",
    )
    plane._blobs[blob.file_id] = blob
    fd, name = tempfile.mkstemp(prefix="speckle-rest-")
    os.close(fd)
    spool = Path(name)
    try:
        size = await _spool(part, spool, plane.config.size_limit)
        error = (
            "File size limit reached" if size is None else await _store(plane, blob, spool, size)
        )
    finally:
        await anyio.Path(spool).unlink(missing_ok=True)
    return _result(plane, blob, file_name, part.name or "", size, error)


async def _spool(part: aiohttp.BodyPartReader, path: Path, limit: int) -> int | None:
    """Write the part to ``path``; its size, or ``None`` past ``limit`` (the rest drained)."""
    size = 0
    async with await anyio.open_file(path, "wb") as out:
        while chunk := await part.read_chunk(_CHUNK):
            size += len(chunk)
            if size <= limit:
                await out.write(chunk)
    return size if size <= limit else None


async def _store(plane: SpecklePlane, blob: BlobRecord, path: Path, size: int) -> str | None:
    """PUT the spooled file into the blob store; ``None``, or why it could not be stored."""
    required = dict(getattr(plane.store, "required_put_headers", None) or {})
    url = plane.store.presign_put(blob.key, expires_in=600, required_headers=required or None)
    headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size), **required}
    reason = "the blob storage did not answer"
    fd = await anyio.to_thread.run_sync(os.open, path, os.O_RDONLY)
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(_PUT_ATTEMPTS):
                try:
                    async with session.put(url, data=_chunks(fd, size), headers=headers) as answer:
                        await answer.read()
                        if answer.status == 200:
                            return None
                        reason = f"the blob storage answered HTTP {answer.status}"
                        if answer.status < 500 and answer.status != 429:
                            break
                except (aiohttp.ClientError, OSError) as exc:
                    reason = f"the blob storage could not be reached ({type(exc).__name__})"
    finally:
        os.close(fd)
    return reason


async def _chunks(fd: int, size: int) -> AsyncGenerator[bytes, None]:
    """The spooled file, a chunk at a time, by position (sent with its Content-Length, so not
    chunked; it owns no file object, so an unfinished send leaves nothing open)."""
    offset = 0
    while offset < size:
        data = await anyio.to_thread.run_sync(os.pread, fd, min(_CHUNK, size - offset), offset)
        if not data:
            return
        offset += len(data)
        yield data


def _result(
    plane: SpecklePlane,
    blob: BlobRecord,
    file_name: str,
    form_key: str,
    size: int | None,
    error: str | None,
) -> dict[str, Any]:
    """Record the blob's outcome; its entry of ``uploadResults``."""
    if error is None:
        stored = plane.store.head(blob.key)
        md5 = stored.md5 if stored is not None else None
        etag = stored.etag if stored is not None else None
        plane._blobs[blob.file_id] = replace(
            blob, status="completed", size=size, md5=md5, etag=etag
        )
        return {"blobId": blob.file_id, "uploadStatus": 1, "fileSize": size,
                "fileName": file_name, "formKey": form_key}  # fmt: skip
    plane._blobs[blob.file_id] = replace(blob, status="error", upload_error=error)
    return {"blobId": blob.file_id, "uploadStatus": 2, "uploadError": error,
            "fileName": file_name, "fileSize": None, "formKey": form_key}  # fmt: skip


def _save_upload(plane: SpecklePlane, result: dict[str, Any], model_id: str) -> None:
    """``saveFileUploads``: the entry's file upload of the model (see the module docstring)."""
    blob = plane._blobs[result["blobId"]]
    upload = plane._start_record(blob, model_id, kind="upload", size=result["fileSize"])
    if result["uploadStatus"] != 1:
        reason = f"The file was not stored: {result['uploadError']}"
        plane._settle(upload.id, Verdict("failed", reason))
    elif not plane._accepts(blob.file_name):
        plane._settle(upload.id, Verdict("failed", UNSUPPORTED_MESSAGE))
