"""Servers without the ingestion API: the v2 file import, and the legacy REST upload.

v2 (``FileImportFlow``; speckle-server ``assets/fileuploads/typedefs/fileuploads.graphql``,
``graph/resolvers/fileUploads.ts``): the blob is stored as for v3 (``generateUploadUrl``, one
PUT), then ``fileUploadMutations.startFileImport(projectId, modelId, fileId, etag)`` registers
it and queues the import; its ``FileUpload.id`` is the ``fileId``. The status is the model's
``uploads`` (sorted by last update, newest first: ``repositories/fileUploads.ts``), found by
that id: ``convertedStatus`` 0 queued, 1 processing, 2 success (``convertedVersionId``), 3 error
(``convertedMessage``). ``startFileImport`` refuses a second call for a blob as v3 does
(``ALREADY_REGISTERED_BLOB_ERROR``), and ``Model.uploads`` finds a lost start exactly.

REST (``RestFlow``; ``modules/fileuploads/rest/router.ts``, ``blobstorage/services/streams.ts``):
``POST /api/file/autodetect/{projectId}/{modelName}`` (the model must exist: 404
``BRANCH_NOT_FOUND`` otherwise), ``Authorization: Bearer``, ``multipart/form-data`` with one file
field; the server streams it to storage (busboy, limited to the server's file size) and answers
201 ``{"uploadResults": [{blobId, fileName, fileSize, uploadStatus, uploadError?}]}``; an
``uploadError`` is a failure ("File size limit reached" for a file above the limit). The
``blobId`` is the ``FileUpload.id``, followed as for v2.

Rules:
- the POST body is streamed from disk through the engine's positional reads (``RangeBody``:
  one chunk in memory at a time, as for a PUT), its ``Content-Length`` computed up front;
  the file's fingerprint is checked when it is opened and after it was sent;
- the POST is the start: it is journaled first like ``startFileImport`` (``ingestion``); an
  HTTP 429 (refused before anything ran) is sent again after its ``Retry-After``; any other
  failure of unknown outcome (5xx, a dropped connection) goes to the recovery, whose lookup is
  the model's uploads of this file name since the journaled request;
- HTTP errors of this route are translated here (``rest_outcome``), the one place.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final
from urllib.parse import quote

import aiohttp
import orjson

from engine.errors import (
    AuthenticationError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    RemoteError,
    ServiceError,
)
from engine.graphql import dig
from engine.journal import IngestionRequested
from engine.models import PartSpec
from engine.providers.speckle.documents import (
    MODEL_UPLOADS,
    PLATFORM,
    REST_UPLOAD_PATH,
    START_FILE_IMPORT,
    STREAM_FILE_UPLOAD,
    STREAM_FILE_UPLOADS,
)
from engine.providers.speckle.errors import SpeckleCredentials
from engine.providers.speckle.ingestion import Flow, parse_time, since
from engine.providers.speckle.status import IngestionStatus, read_upload
from engine.redact import redact
from engine.retry import RetryPolicy, parse_retry_after
from engine.source import FileSource
from engine.transport import RangeBody
from engine.wait import Attempts

__all__ = ["FileImportFlow", "RestFlow", "rest_form", "rest_outcome"]

_UPLOADS_LIMIT: Final = 25  # recent uploads of the model searched for ours
_REST: Final = "UploadFile"  # how messages name the legacy POST
_PROGRESS_STEP: Final = 0.05  # a Phase per 5 % of the POST body sent


class FileImportFlow(Flow):
    """v2: ``startFileImport`` and the model's ``uploads`` (before 2.25.8, where a server has
    no ``Model.uploads``: the project's deprecated ``stream.fileUpload(s)``)."""

    api = "v2"
    start_op = "StartFileImport"
    noun = "file import"

    async def send(self, etag: str) -> str:
        return await self.register(START_FILE_IMPORT, "startFileImport", etag)

    async def uploads(self) -> list[Any]:
        """The model's recent uploads, newest first ([] when the server cannot list them)."""
        if self.server.uploads:
            variables = {**self.blob.model, "limit": _UPLOADS_LIMIT}
            data = await self.ask(MODEL_UPLOADS, variables)
            items = dig(data, "project", "model", "uploads", "items")
        else:
            project = {"projectId": self.blob.project_id}
            data = await self.ask(STREAM_FILE_UPLOADS, project)
            every = dig(data, "stream", "fileUploads") or ()
            items = [u for u in every if dig(u, "modelId") in (None, self.blob.model_id)]
        return list(items) if isinstance(items, list) else []

    async def find(self) -> str:
        found = [u for u in await self.uploads() if dig(u, "id") == self.blob.file_id]
        return self.blob.file_id if found else ""

    async def poll(self, ingestion_id: str) -> IngestionStatus:
        if not self.server.uploads:
            by_id = {"projectId": self.blob.project_id, "uploadId": ingestion_id}
            data = await self.gql.execute(STREAM_FILE_UPLOAD, by_id)
            upload = dig(data, "stream", "fileUpload")
            if not isinstance(upload, dict):
                raise NotFoundError(
                    f"StreamFileUpload: file upload {ingestion_id} not found in project "
                    f"{self.blob.project_id}",
                    code="NOT_FOUND",
                )
            return read_upload(upload)
        variables = {**self.blob.model, "limit": _UPLOADS_LIMIT}
        data = await self.gql.execute(MODEL_UPLOADS, variables)
        for upload in dig(data, "project", "model", "uploads", "items") or ():
            if dig(upload, "id") == ingestion_id:
                return read_upload(upload)
        return IngestionStatus("queued", "FileUpload", "not listed by the model yet")


class RestFlow(FileImportFlow):
    """No presigned upload: the legacy multipart POST, then the model's ``uploads``."""

    api = "rest"
    start_op = _REST

    def __init__(
        self,
        *args: Any,
        model_name: str,
        server_url: str,
        credentials: SpeckleCredentials,
        policy: RetryPolicy,
    ) -> None:
        super().__init__(*args)
        self._policy = policy
        self.model_name = model_name
        self.url = server_url + REST_UPLOAD_PATH.format(
            project=quote(self.blob.project_id, safe=""), model=quote(model_name, safe="")
        )
        self._credentials = credentials

    async def find(self) -> str:
        requested = self.ctx.journal.state.get(IngestionRequested)
        when = parse_time(requested.requested_at) if requested is not None else None
        name = self.ctx.file.path.name
        for upload in await self.uploads():  # newest first
            if dig(upload, "fileName") == name and since(dig(upload, "uploadDate"), when):
                return str(dig(upload, "id") or "")
        return ""

    async def send(self, etag: str) -> str:
        ctx = self.ctx
        with FileSource(ctx.file) as source:
            async for attempt in Attempts(self._policy, ctx.services.clock):
                outcome = await self._post(source.fd)
                if isinstance(outcome, str):
                    source.check_unchanged(uploading=True)
                    return outcome
                if isinstance(outcome, RemoteError):
                    raise outcome
                attempt.retry_after = outcome  # 429: refused before anything ran
                if attempt.last:
                    raise ServiceError(f"{_REST}: rate limited on every attempt", code="HTTP 429")
        raise AssertionError("unreachable")  # pragma: no cover

    async def _post(self, fd: int) -> str | RemoteError | float:
        """One POST: the blob id, the error, or the wait a 429 asked for."""
        size = self.ctx.file.size
        sent = [0, 0.0]  # bytes sent, the fraction last shown

        def progress(n: int) -> None:  # n < 0: the body is sent again from its start
            sent[0] += n
            fraction = min(1.0, sent[0] / max(size, 1))
            if abs(fraction - sent[1]) >= _PROGRESS_STEP or (fraction == 1.0 != sent[1]):
                sent[1] = fraction
                self.ctx.phase("uploading through the legacy REST route", fraction)

        name, chunk = self.ctx.file.path.name, self.ctx.config.chunk_size
        form, body = rest_form(fd, name, size, chunk, progress)
        try:
            async with self.ctx.http.post(
                self.url, data=form, headers=self._credentials.headers()
            ) as r:
                raw = await r.read()
                wait = parse_retry_after(r.headers.get("Retry-After"))
                status = r.status
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            if body.error is not None:  # a source failure (the file shrank), unwrapped
                raise body.error from None
            return ServiceError(f"{_REST}: cannot reach {redact(self.url)}: {type(exc).__name__}")
        return rest_outcome(status, raw, wait)


def rest_form(
    fd: int, name: str, size: int, chunk_size: int, progress: Callable[[int], None]
) -> tuple[aiohttp.MultipartWriter, RangeBody]:
    """The POST body and its file part: one ``file`` field streamed from ``fd`` a chunk at a
    time (the engine's positional reads, no hashing, no sendfile); its ``size`` is known, so
    aiohttp sends a ``Content-Length`` instead of a chunked body."""
    body = RangeBody(
        fd,
        PartSpec(1, 0, size),
        chunk_size=chunk_size,
        on_progress=progress,
        md5=False,
        zero_copy=False,
    )
    body.set_content_disposition("form-data", name="file", filename=name)
    form = aiohttp.MultipartWriter("form-data")
    form.append_payload(body)
    return form, body


def _message(raw: bytes) -> tuple[str, str]:
    """(message, code) of an error body: ``{"error": {"message", "code"}}`` (the server's
    ``defaultErrorHandler``), ``{"error": "..."}`` or text."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw[:200].decode("utf-8", "replace").strip(), ""
    error = dig(body, "error")
    if isinstance(error, dict):
        return str(error.get("message") or ""), str(error.get("code") or "")
    return str(error or body), ""


def rest_outcome(status: int, raw: bytes, wait: float | None) -> str | RemoteError | float:
    """What an answer of the legacy upload route means: the blob id (201), the error to
    raise, or (HTTP 429) the seconds to wait before sending it again. Pure."""
    if status in (200, 201):
        try:
            results = dig(orjson.loads(raw), "uploadResults")
        except orjson.JSONDecodeError:
            results = None
        first = results[0] if isinstance(results, list) and results else None
        error = dig(first, "uploadError")
        if error:
            return InvalidRequestError(f"{_REST}: the server refused the file: {error}")
        blob = dig(first, "blobId")
        if not isinstance(blob, str) or not blob:
            return ServiceError(f"{_REST}: malformed answer from {PLATFORM} (no uploadResults)")
        return blob
    if status == 429:
        return wait if wait is not None else 1.0
    message, code = _message(raw)
    detail = redact(f"{message} ({code})" if code else message) or f"HTTP {status}"
    if status == 401:
        return AuthenticationError(f"{_REST}: SPECKLE_TOKEN is not valid: {detail}", code=code)
    if status == 403:
        return PermissionDeniedError(f"{_REST}: permission denied: {detail}", code=code)
    if status == 404:
        return NotFoundError(f"{_REST}: not found: {detail}", code=code or "HTTP 404")
    if 400 <= status < 500:
        return InvalidRequestError(f"{_REST}: request rejected: {detail}", code=code)
    return ServiceError(f"{_REST}: HTTP {status}: {detail}", code=code)
