"""The blob store: S3-style multipart and single-PUT storage behind presigned URLs.

Rules this module keeps (each one is something real S3 does, and the client must cope with):

* **Nothing partial is ever visible.** A part or object becomes visible only by ``os.replace`` of a
  complete temp file (done on the event loop, together with the metadata update); a body shorter
  than ``Content-Length`` (client gone, reset) stores nothing; a re-PUT replaces the old part whole.
* **Discard mode** (``discard=True``, for benchmarks): bodies are hashed and counted but never
  written; parts and objects keep size/ETag metadata only. A multipart object's whole-object MD5 is
  then unknown and reported as ``""``; a single-PUT object's MD5 is known and reported.
* **State.** Metadata lives in memory and belongs to the event loop thread; worker threads only
  hash, write temp files and assemble objects. A store opened on an existing ``data_dir`` starts
  empty (left-over temp files are removed). The public ``def`` methods never touch the network;
  only ``complete_multipart`` (which assembles the object on disk) can block for long: inside a
  running server prefer ``await complete_multipart_async(...)``, which assembles in a thread.
* **Modes.** ``mode`` picks which real store it answers as: ``s3`` (default), ``kms``, ``sse-c``
  or ``azure`` (:mod:`.modes`, :mod:`.azure`): URL signing, the headers a PUT needs, ETags,
  answers and error documents. Whatever the mode, ``StoredObject.md5`` is the true MD5.
* **Faults** come from a :class:`~engine.sandbox.faults.FaultPlan`, decided per
  ``(key, part_number, attempt_index)``, where the attempt index counts the requests for that part
  that passed the checks (single PUT: part 0). Status faults answer once the body is read; ``reset``
  and ``stall`` read half the body, then drop the connection (``stall`` after waiting);
  ``bad_etag`` stores the body but answers a wrong ETag; ``latency`` delays every request.

Layout under ``data_dir``: ``uploads/<upload_id>/<part_number>``, ``objects/<quoted key>`` (the key
percent-encoded into one flat file name, so ``a`` and ``a/b`` can coexist), ``tmp/``.
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final, TypeAlias

import anyio
import anyio.to_thread
from aiohttp import web

from engine.sandbox.blobstore.body import BodyReader, ClientGoneError
from engine.sandbox.blobstore.errors import BlobError, no_such_upload
from engine.sandbox.blobstore.http import PutLimits, abort_connection, authorize, wait_stalled
from engine.sandbox.blobstore.keys import object_filename, validate_key
from engine.sandbox.blobstore.modes import StorageMode, make_mode
from engine.sandbox.blobstore.multipart import (
    Assembly,
    CompletedUploads,
    choose_parts,
    listed_parts,
)
from engine.sandbox.blobstore.records import (
    GiB,
    MiB,
    Part,
    PutTarget,
    StoredObject,
    StoredPart,
    Upload,
    unquoted,
    wrong_etag,
)
from engine.sandbox.blobstore.signing import BLOB_PREFIX, Headers, signed_headers
from engine.sandbox.blobstore.stats import Counters
from engine.sandbox.faults import BAD_ETAG, RESET, STALL, STATUS_FAULTS, THROTTLE, FaultPlan

__all__ = ["BlobStore", "PartList"]

PartList: TypeAlias = Sequence[tuple[int, str]]
"""The ``(part_number, etag)`` pairs a completion lists."""

_COMPLETED_MEMORY: Final = 4096  # completed uploads remembered for idempotent re-completion


class BlobStore:
    """S3-style multipart and single-PUT storage behind HMAC-presigned URLs (see the package
    docstring).

    Sizes are in bytes, ``expires_in`` in seconds. ``base_url`` is set by the server once bound.
    ``faults`` may be replaced at any time; :meth:`reset_attempts` restarts the attempt counters.
    """

    base_url: str

    def __init__(
        self,
        data_dir: Path | None,
        *,
        secret: bytes,
        discard: bool = False,
        faults: FaultPlan | None = None,
        min_part_size: int = 5 * MiB,
        max_part_size: int = 5 * GiB,
        max_parts: int = 10_000,
        max_object_size: int | None = None,
        mode: str | StorageMode = "s3",
    ) -> None:
        if not secret:
            raise ValueError("secret must not be empty")
        if data_dir is None and not discard:
            raise ValueError("data_dir is required unless discard=True")
        self._mode = make_mode(mode, secret) if isinstance(mode, str) else mode
        if max_object_size is None:
            max_object_size = self._mode.max_single_put  # S3: 5 GiB; Azure's Put Blob: 5000 MiB
        if not (0 <= min_part_size <= max_part_size) or max_parts < 1 or max_object_size < 0:
            raise ValueError("need 0 <= min_part_size <= max_part_size, max_parts >= 1")
        self.data_dir = data_dir
        self.discard = discard
        self.min_part_size = min_part_size
        self.max_part_size = max_part_size
        self.max_parts = max_parts
        self.max_object_size = max_object_size
        self.base_url = ""
        self._faults = faults if faults is not None else FaultPlan()
        self._uploads: dict[str, Upload] = {}
        self._objects: dict[str, StoredObject] = {}
        self._completed = CompletedUploads(_COMPLETED_MEMORY)
        self._attempts: Counter[tuple[str, int]] = Counter()
        self._counters = Counters()
        self._request_seq = 0
        self._tmp_seq = 0
        self._closing = False
        if not discard and data_dir is not None:
            for sub in ("uploads", "objects"):
                (data_dir / sub).mkdir(parents=True, exist_ok=True)
            shutil.rmtree(data_dir / "tmp", ignore_errors=True)
            (data_dir / "tmp").mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        where = "discard" if self.discard else str(self.data_dir)
        return (
            f"BlobStore({where}, uploads={len(self._uploads)}, objects={len(self._objects)}, "
            f"requests={self._counters.requests}, faults={self._faults!r})"
        )

    @property
    def mode(self) -> StorageMode:
        """The storage mode this store answers as (:mod:`.modes`)."""
        return self._mode

    @property
    def required_put_headers(self) -> dict[str, str]:
        """Headers every PUT must carry in this mode, for a control plane to hand its clients:
        ``azure``: ``x-ms-blob-type: BlockBlob``; ``sse-c``: the customer key's three headers."""
        return self._mode.client_headers()

    # ---- faults ----------------------------------------------------------------------------------

    @property
    def faults(self) -> FaultPlan:
        """The fault plan in force; assign a new :class:`FaultPlan` to change it at runtime."""
        return self._faults

    @faults.setter
    def faults(self, plan: FaultPlan) -> None:
        if not isinstance(plan, FaultPlan):
            raise TypeError(f"faults must be a FaultPlan, not {type(plan).__name__}")
        self._faults = plan

    def close(self) -> None:
        """Server shutdown: stalled requests stop stalling and drop their connection now."""
        self._closing = True

    def reset_attempts(self) -> None:
        """Restart every per-part attempt index at 0 (the fault plan is unchanged)."""
        self._attempts.clear()

    def reset_stats(self) -> None:
        """Zero the counters reported by :meth:`stats` (stored data is unchanged)."""
        self._counters.reset()

    # ---- presigning ------------------------------------------------------------------------------

    def presign_part(
        self,
        key: str,
        upload_id: str,
        part_number: int,
        *,
        expires_in: float = 3600,
        required_headers: Mapping[str, str] | None = None,
    ) -> str:
        """An absolute URL for ``PUT`` of one part. Like S3, it does not check that the upload
        exists or that the part number is in range: the PUT does."""
        return self._presign(key, (upload_id, part_number), expires_in, required_headers)

    def presign_put(
        self,
        key: str,
        *,
        expires_in: float = 3600,
        required_headers: Mapping[str, str] | None = None,
    ) -> str:
        """An absolute URL for a single-object ``PUT`` (at most ``max_object_size`` bytes)."""
        return self._presign(key, None, expires_in, required_headers)

    def _presign(
        self, key: str, part: tuple[str, int] | None, expires_in: float, headers: Headers | None
    ) -> str:
        """The URL for :meth:`presign_part` (``part``: upload id and part number) or
        :meth:`presign_put` (``part`` None); the one method a store signing otherwise overrides."""
        validate_key(key)
        if not self.base_url:
            raise RuntimeError("BlobStore.base_url is not set: start the sandbox server first")
        signed = signed_headers(headers)
        params = {} if part is None else {"uploadId": part[0], "partNumber": str(part[1])}
        return self._mode.presign(self.base_url, key, params, expires_in, signed)

    # ---- multipart API ---------------------------------------------------------------------------

    def create_multipart(self, key: str) -> str:
        """Start a multipart upload of ``key``; return its upload id."""
        validate_key(key)
        if not self._mode.multipart:
            raise BlobError(
                "NotImplemented", f"{self._mode.name} mode stores one PUT per blob: no multipart"
            )
        upload_id = secrets.token_hex(16)
        if not self.discard:
            self._upload_dir(upload_id).mkdir(parents=True)
        self._uploads[upload_id] = Upload(key=key, upload_id=upload_id)
        return upload_id

    def list_parts(self, upload_id: str) -> list[StoredPart]:
        """The parts stored so far, by ascending part number. Raises ``NoSuchUpload``."""
        upload = self._require_upload(upload_id)
        return [
            StoredPart(number=p.number, size=p.size, etag=p.etag)
            for _, p in sorted(upload.parts.items())
        ]

    def complete_multipart(
        self, key: str, upload_id: str, parts: PartList, *, min_part_size: int | None = None
    ) -> StoredObject:
        """Assemble the listed ``(part_number, etag)`` parts into ``key``, as S3 does.

        Blocking (streams every part file into the object): from a running server prefer
        :meth:`complete_multipart_async`. Completing an already completed upload again with the
        same parts returns the same object (S3 tolerates a retried completion); anything else on a
        finished upload raises ``NoSuchUpload``.
        """
        job = self._begin_completion(key, upload_id, parts, min_part_size)
        if isinstance(job, StoredObject):
            return job
        try:
            md5 = job.run()
        except BaseException as exc:
            self._fail_completion(job, exc)
            raise
        return self._finish_completion(job, md5)

    async def complete_multipart_async(
        self, key: str, upload_id: str, parts: PartList, *, min_part_size: int | None = None
    ) -> StoredObject:
        """:meth:`complete_multipart`, assembling the object in a worker thread.

        Validation and the final commit run on the event loop; while the object is assembled,
        part PUTs to this upload answer ``NoSuchUpload``, a second completion ``OperationAborted``.
        """
        job = self._begin_completion(key, upload_id, parts, min_part_size)
        if isinstance(job, StoredObject):
            return job
        try:
            md5 = await anyio.to_thread.run_sync(job.run)
        except BaseException as exc:
            self._fail_completion(job, exc)
            raise
        return self._finish_completion(job, md5)

    def abort_multipart(self, upload_id: str) -> None:
        """Drop an upload and its parts. Raises ``NoSuchUpload`` if there is no such upload."""
        upload = self._require_upload(upload_id)
        del self._uploads[upload.upload_id]
        if not self.discard:
            shutil.rmtree(self._upload_dir(upload_id), ignore_errors=True)

    def head(self, key: str) -> StoredObject | None:
        """The stored object ``key``, or ``None``."""
        return self._objects.get(key)

    def object_path(self, key: str) -> Path | None:
        """Where the bytes of ``key`` live on disk; ``None`` if absent or in discard mode."""
        if self.discard or key not in self._objects:
            return None
        return self._object_file(key)

    def stats(self) -> dict[str, Any]:
        """Counters since start (or :meth:`reset_stats`), JSON-serialisable; the keys are
        described in :mod:`.stats`."""
        return {
            **self._counters.report(),
            "uploads_open": len(self._uploads),
            "uploads_completed": self._counters.completed,
            "parts_stored": sum(len(u.parts) for u in self._uploads.values()),
            "objects": len(self._objects),
            "discard": self.discard,
            **self._mode.describe(),
        }

    # ---- completion internals --------------------------------------------------------------------

    def _begin_completion(
        self, key: str, upload_id: str, parts: PartList, min_part_size: int | None
    ) -> Assembly | StoredObject:
        validate_key(key)
        listed = listed_parts(parts)
        done = self._completed.replay(upload_id, key, listed)
        if done is not None:
            return done
        upload = self._uploads.get(upload_id)
        if upload is None or upload.key != key:
            raise no_such_upload()
        minimum = self.min_part_size if min_part_size is None else min_part_size
        chosen = choose_parts(upload, listed, minimum)
        upload.completing = True
        return Assembly(
            key=key,
            upload_id=upload_id,
            listed=listed,
            part_paths=None
            if self.discard
            else [self._part_file(upload_id, p.number) for p in chosen],
            output=None if self.discard else self._new_tmp_path(),
            size=sum(part.size for part in chosen),
            etag=self._mode.composite([part.etag_hex for part in chosen]),
        )

    def _fail_completion(self, job: Assembly, exc: BaseException) -> None:
        if job.output is not None:
            job.output.unlink(missing_ok=True)
        upload = self._uploads.get(job.upload_id)
        if upload is not None:
            upload.completing = False
        elif isinstance(exc, OSError):
            # Aborted while we were assembling: the part files vanished under us.
            raise no_such_upload() from exc

    def _finish_completion(self, job: Assembly, md5: str) -> StoredObject:
        upload = self._uploads.get(job.upload_id)
        if upload is None:  # aborted while assembling
            if job.output is not None:
                job.output.unlink(missing_ok=True)
            raise no_such_upload()
        if job.output is not None:
            job.output.replace(self._object_file(job.key))
        stored = StoredObject(key=job.key, size=job.size, etag=job.etag, md5=md5)
        self._objects[job.key] = stored
        del self._uploads[job.upload_id]
        if not self.discard:
            shutil.rmtree(self._upload_dir(job.upload_id), ignore_errors=True)
        self._completed.remember(job.upload_id, job.listed, stored)
        self._counters.completed += 1
        return stored

    # ---- paths -----------------------------------------------------------------------------------

    def _root(self) -> Path:
        assert self.data_dir is not None  # only called when not discarding
        return self.data_dir

    def _upload_dir(self, upload_id: str) -> Path:
        return self._root() / "uploads" / upload_id

    def _part_file(self, upload_id: str, number: int) -> Path:
        return self._upload_dir(upload_id) / str(number)

    def _object_file(self, key: str) -> Path:
        return self._root() / "objects" / object_filename(key)

    def _new_tmp_path(self) -> Path:
        self._tmp_seq += 1
        return self._root() / "tmp" / f"{self._tmp_seq}-{secrets.token_hex(4)}"

    def _require_upload(self, upload_id: str) -> Upload:
        upload = self._uploads.get(upload_id)
        if upload is None:
            raise no_such_upload()
        return upload

    # ---- HTTP ------------------------------------------------------------------------------------

    def register(self, app: web.Application) -> None:
        """Serve ``PUT /blob/{key}`` from this store on ``app``."""
        app.router.add_put(BLOB_PREFIX + "{key:.+}", self.handle_put)

    async def handle_put(self, request: web.Request) -> web.StreamResponse:
        """The aiohttp handler for ``PUT /blob/{key}`` (see :mod:`.http` for the rules)."""
        counters = self._counters
        counters.requests += 1
        self._request_seq += 1
        mode = self._mode
        request_id = mode.request_id(self._request_seq)
        plan = self._faults
        if plan.latency > 0.0:
            await anyio.sleep(plan.latency)
        limits = PutLimits(self.max_parts, self.max_part_size, self.max_object_size)
        try:
            target = authorize(
                request.match_info["key"],
                request.query,
                request.headers,
                request.content_length,
                mode=mode,
                limits=limits,
                uploads=self._uploads,
            )
        except BlobError as exc:
            return mode.error_response(exc, request_id, counters)
        fault = self._decide_fault(target, plan)
        counters.put_started()
        try:
            try:
                response = await self._serve(request, target, fault, plan, request_id)
            except BlobError as exc:
                response = mode.error_response(exc, request_id, counters)
            # In flight until the answer is written (or the connection is found gone).
            with contextlib.suppress(ConnectionError):
                await response.prepare(request)
                await response.write_eof()
            return response
        except ClientGoneError:
            # Nobody is listening: aiohttp drops this response quietly on the closed transport.
            counters.disconnects += 1
            return web.Response(status=400, headers={mode.request_id_header: request_id})
        finally:
            counters.put_finished()

    def _decide_fault(self, target: PutTarget, plan: FaultPlan) -> str | None:
        """Count this attempt at the target's part and draw its fault (if any)."""
        slot = (target.key, target.part_number)
        attempt = self._attempts[slot]
        self._attempts[slot] += 1
        self._counters.puts[slot] += 1
        fault = plan.decide(target.key, target.part_number, attempt)
        if fault is not None:
            self._counters.faults[fault] += 1
        return fault

    async def _serve(
        self,
        request: web.Request,
        target: PutTarget,
        fault: str | None,
        plan: FaultPlan,
        request_id: str,
    ) -> web.StreamResponse:
        reader = BodyReader(request.content, self._counters)
        status_fault = STATUS_FAULTS.get(fault) if fault is not None else None
        if status_fault is not None:
            await reader.drain(target.size)
            extra = {"Retry-After": f"{plan.retry_after:g}"} if fault == THROTTLE else {}
            error = BlobError(status_fault.code, status_fault.message, status_fault.status)
            return self._mode.error_response(error, request_id, self._counters, extra)
        if fault in (RESET, STALL):
            await reader.drain(target.size // 2)
            if fault == STALL:
                await wait_stalled(request, plan.stall_seconds, lambda: self._closing)
            abort_connection(request)
            raise ClientGoneError
        tmp = None if self.discard else self._new_tmp_path()
        checksum = self._mode.body_checksum()
        digest = await reader.receive(target, tmp, checksum)
        etag = self._commit(target, digest, tmp)
        if fault == BAD_ETAG:
            etag = wrong_etag(digest)
        status, headers = self._mode.answer(target, digest, etag, checksum)
        self._counters.responses[status] += 1
        headers[self._mode.request_id_header] = request_id
        return web.Response(status=status, headers=headers)

    def _commit(self, target: PutTarget, digest: bytes, tmp: Path | None) -> str:
        """Make a fully received body visible (atomically); return its quoted ETag."""
        etag = self._mode.etag(digest, target)
        if target.upload_id is not None:
            upload = self._uploads.get(target.upload_id)
            if upload is None or upload.completing:  # aborted or completed meanwhile
                if tmp is not None:
                    tmp.unlink(missing_ok=True)
                raise no_such_upload()
            if tmp is not None:
                tmp.replace(self._part_file(target.upload_id, target.part_number))
            part = Part(target.part_number, target.size, digest, unquoted(etag))
            upload.parts[target.part_number] = part
        else:
            if tmp is not None:
                tmp.replace(self._object_file(target.key))
            self._objects[target.key] = StoredObject(
                key=target.key, size=target.size, etag=etag, md5=digest.hex()
            )
        self._counters.bytes_stored += target.size
        return etag
