"""The planes' blob-store interface over an S3 bucket: :class:`S3BlobStore`.

Rules this module keeps:

* **The bytes never pass through the sandbox.** Upload URLs are real SigV4 presigned URLs
  (:mod:`.clients`) pointing at the S3 server: the client PUTs straight to it and S3 computes the
  ETags. Headers a plane requires (``part_headers``, ``additional_header``) are added to the
  request before botocore signs it, so a server that checks signatures (MinIO, AWS) refuses a PUT
  without them. moto's server mode does not check signatures or expiry; the integration tests say
  so where it matters. A URL lives at least 1 second and at most a week (SigV4's limit).
* **S3's rules are S3's.** The part rules (5 MiB minimum but the last part, 5 GiB maximum,
  10,000 parts), ETags (quoted MD5; ``"md5(md5s)-N"`` for multipart), overwrite on re-send and
  expiry are enforced by the server, not here. Keys are still checked with
  :func:`~engine.sandbox.blobstore.validate_key` (no path traversal, no empty segments).
* **Fault injection does not apply**: there is no sandbox code on the data path to inject it.
  :class:`~engine.sandbox.server.SandboxConfig` refuses an active ``FaultPlan`` together with a
  ``storage_url``, and assigning one to :attr:`S3BlobStore.faults` raises. The control planes'
  own faults (Matterport ``internal_error_rate``, Speckle ``rate_limit_every``) still work.
* **Blocking.** botocore is blocking. :meth:`S3BlobStore.complete_multipart_async` runs the
  completion and the download in a worker thread; the other methods run on the caller's thread,
  which inside the server is the event loop: ``create_multipart``, ``list_parts`` and ``head``
  are one S3 round trip each (milliseconds on loopback or a LAN), presigning needs no network,
  and ``object_path`` of an uncached object downloads it there (the Speckle plane asks for it
  once per ingestion). A sandbox, not a production gateway.
* **State.** Upload ids started here, completed objects and cached copies are remembered in
  memory under one lock (worker threads complete uploads while the loop reads). A retried
  completion of a completed upload with the same parts returns the same object, as
  ``BlobStore`` does.
"""

from __future__ import annotations

import math
import threading
from collections import Counter
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, Final, TypeVar

import anyio.to_thread
from aiohttp import web

from engine.sandbox.blobstore import (
    BlobError,
    BlobStore,
    GiB,
    MiB,
    StoredObject,
    StoredPart,
    validate_key,
)
from engine.sandbox.blobstore.errors import OPERATION_ABORTED, no_such_upload
from engine.sandbox.blobstore.multipart import CompletedUploads, Listed
from engine.sandbox.blobstore.signing import Headers, signed_headers
from engine.sandbox.blobstore.store import PartList
from engine.sandbox.faults import FaultPlan
from engine.sandbox.s3store.clients import make_clients
from engine.sandbox.s3store.copies import Copy, keep_copy
from engine.sandbox.s3store.errors import is_md5, quoted, translate, unquoted
from engine.sandbox.s3store.location import S3Location

__all__ = ["S3BlobStore"]

T = TypeVar("T")

_MAX_EXPIRY: Final = 7 * 24 * 3600  # SigV4 presigned URLs live at most a week


class S3BlobStore(BlobStore):
    """The planes' blob-store interface over an S3 bucket (see the module docstring).

    A :class:`BlobStore` subclass so the planes, typed against ``BlobStore``, take it unchanged;
    it overrides every public method that touches storage, and serves no HTTP route of its own
    (clients PUT to S3). Call :meth:`open` (blocking: it makes the botocore clients and checks
    the bucket) before use. ``cache_dir`` holds validation copies (required unless ``discard``).
    """

    def __init__(
        self, location: S3Location, *, cache_dir: Path | None, discard: bool = False
    ) -> None:
        if cache_dir is None and not discard:
            raise ValueError("cache_dir is required unless discard=True")
        # The base class's own storage stays unused (discard mode, no directory).
        super().__init__(None, secret=b"unused: S3 signs the URLs", discard=True)
        self.location = location
        self.discard = discard
        self.data_dir = cache_dir
        self.min_part_size = 5 * MiB  # S3's rules, enforced by the server
        self.max_part_size = 5 * GiB
        self.max_object_size = 5 * GiB
        self._api: Any = None  # botocore client talking to endpoint_url
        self._signer_client: Any = None  # botocore client presigning for public_endpoint_url
        self._lock = threading.Lock()  # guards everything below and serialises presigning
        self._upload_keys: dict[str, str] = {}  # upload id -> key, for uploads started here
        self._completing: set[str] = set()
        self._done = CompletedUploads(None)
        self._copies: dict[str, Copy] = {}
        self._s3_calls: Counter[str] = Counter()
        self._s3_errors: Counter[str] = Counter()
        self._presigned = 0
        self._downloaded = 0
        self._completed_count = 0

    def __repr__(self) -> str:
        return (
            f"S3BlobStore({self.location}, uploads={len(self._upload_keys)}, "
            f"copies={len(self._copies)}, calls={sum(self._s3_calls.values())})"
        )

    # ---- life cycle ------------------------------------------------------------------------------

    def open(self) -> None:
        """Make the botocore clients and check that the bucket is there. Blocking."""
        self._api, self._signer_client = make_clients(self.location)
        self._check_bucket()
        if self.data_dir is not None and not self.discard:
            self._cache_root().mkdir(parents=True, exist_ok=True)

    def _check_bucket(self) -> None:
        loc = self.location
        where = loc.endpoint_url or "AWS"
        try:
            self._call("HeadBucket", lambda c: c.head_bucket(Bucket=loc.bucket))
        except BlobError as exc:
            if exc.status == 404:  # HEAD answers have no body, so no S3 code
                raise BlobError(
                    "NoSuchBucket", f"bucket {loc.bucket!r} does not exist at {where}", 404
                ) from None
            if exc.status == 403:
                raise BlobError(
                    "AccessDenied", f"the credentials may not use bucket {loc.bucket!r}", 403
                ) from None
            raise

    def close(self) -> None:
        """Server shutdown: close the clients' connection pools."""
        super().close()
        for client in (self._api, self._signer_client):
            if client is not None:
                client.close()

    def register(self, app: web.Application) -> None:
        """Nothing to serve: clients PUT straight to the S3 server."""

    @property
    def faults(self) -> FaultPlan:
        """Always the empty plan: faults cannot be injected into external storage."""
        return FaultPlan()

    @faults.setter
    def faults(self, plan: FaultPlan) -> None:
        if plan.active:
            raise ValueError(
                "fault injection applies to the sandbox's own blob store, not to S3 storage"
            )

    # ---- presigning (no network) -----------------------------------------------------------------

    def _presign(
        self, key: str, part: tuple[str, int] | None, expires_in: float, headers: Headers | None
    ) -> str:
        """A SigV4 presigned ``UploadPart`` URL (``part``: S3 checks the upload and the part
        number) or ``PutObject`` URL (``part`` None: S3 allows at most 5 GiB in one PUT)."""
        params: dict[str, Any] = {"Bucket": self.location.bucket, "Key": self._s3_key(key)}
        operation = "put_object"
        if part is not None:
            operation = "upload_part"
            params["UploadId"], params["PartNumber"] = part
        signer = self._require(self._signer_client)
        signed = signed_headers(headers, forbidden=";:\r\n ", reserved=("host",))
        expires = max(1, min(_MAX_EXPIRY, math.ceil(expires_in)))

        def sign_headers(request: Any, **_: Any) -> None:
            for name, value in signed.items():
                request.headers[name] = value

        event = f"before-sign.s3.{'UploadPart' if operation == 'upload_part' else 'PutObject'}"
        with self._lock:  # the handler is per call: one presign at a time
            if signed:
                signer.meta.events.register(event, sign_headers)
            try:
                url = signer.generate_presigned_url(operation, Params=params, ExpiresIn=expires)
            finally:
                if signed:
                    signer.meta.events.unregister(event, sign_headers)
            self._presigned += 1
        return str(url)

    # ---- multipart API ---------------------------------------------------------------------------

    def create_multipart(self, key: str) -> str:
        """``CreateMultipartUpload``; return S3's upload id. One S3 round trip."""
        s3_key = self._s3_key(key)
        created = self._call(
            "CreateMultipartUpload",
            lambda c: c.create_multipart_upload(
                Bucket=self.location.bucket, Key=s3_key, ContentType="application/octet-stream"
            ),
        )
        upload_id = str(created["UploadId"])
        with self._lock:
            self._upload_keys[upload_id] = key
        return upload_id

    def list_parts(self, upload_id: str) -> list[StoredPart]:
        """``ListParts`` (every page), by ascending part number; ETags quoted as S3 lists them.
        Raises ``NoSuchUpload`` for an upload not started by this store or gone from S3."""
        key = self._key_of(upload_id)
        s3_key = self._s3_key(key)
        parts: list[StoredPart] = []
        marker = 0
        while True:
            page = self._call("ListParts", partial(self._list_page, s3_key, upload_id, marker))
            for item in page.get("Parts", []):
                parts.append(
                    StoredPart(
                        number=int(item["PartNumber"]),
                        size=int(item["Size"]),
                        etag=quoted(str(item["ETag"])),
                    )
                )
            if not page.get("IsTruncated"):
                break
            marker = int(page["NextPartNumberMarker"])
        parts.sort(key=lambda p: p.number)
        return parts

    def _list_page(self, s3_key: str, upload_id: str, marker: int, client: Any) -> Any:
        return client.list_parts(
            Bucket=self.location.bucket, Key=s3_key, UploadId=upload_id, PartNumberMarker=marker
        )

    def complete_multipart(
        self, key: str, upload_id: str, parts: PartList, *, min_part_size: int | None = None
    ) -> StoredObject:
        """``CompleteMultipartUpload`` with the listed ``(part_number, etag)`` parts, then a
        validation copy (see :mod:`.copies`). Blocking: from the server prefer
        :meth:`complete_multipart_async`. ``min_part_size`` is S3's to enforce, not ours."""
        validate_key(key)
        listed = tuple((int(number), unquoted(etag)) for number, etag in parts)
        done = self._reserve_completion(key, upload_id, listed)
        if done is not None:
            return done
        try:
            stored = self._complete_on_s3(key, upload_id, listed)
            with self._lock:
                self._done.remember(upload_id, listed, stored)
                self._upload_keys.pop(upload_id, None)
                self._completed_count += 1
            return stored
        finally:
            with self._lock:
                self._completing.discard(upload_id)

    def _reserve_completion(self, key: str, upload_id: str, listed: Listed) -> StoredObject | None:
        """The object of an identical earlier completion, or ``None`` once this thread may
        complete the upload (until it discards it from ``_completing``)."""
        with self._lock:
            done = self._done.replay(upload_id, key, listed)
            if done is not None:
                return done
            if self._upload_keys.get(upload_id) != key:
                raise no_such_upload()
            if upload_id in self._completing:
                raise BlobError("OperationAborted", OPERATION_ABORTED, 409)
            self._completing.add(upload_id)
        return None

    def _complete_on_s3(self, key: str, upload_id: str, listed: Listed) -> StoredObject:
        s3_key = self._s3_key(key)
        answer = self._call(
            "CompleteMultipartUpload",
            lambda c: c.complete_multipart_upload(
                Bucket=self.location.bucket,
                Key=s3_key,
                UploadId=upload_id,
                MultipartUpload={
                    "Parts": [{"PartNumber": n, "ETag": f'"{etag}"'} for n, etag in listed]
                },
            ),
        )
        etag = quoted(str(answer.get("ETag", "")))
        copy = None if self.discard else self._download(key, expect_etag=etag)
        if copy is None:
            head = self._head(key)
            size = head.size if head is not None else 0
            return StoredObject(key=key, size=size, etag=etag, md5="")
        return StoredObject(key=key, size=copy.size, etag=etag, md5=copy.md5)

    async def complete_multipart_async(
        self, key: str, upload_id: str, parts: PartList, *, min_part_size: int | None = None
    ) -> StoredObject:
        """:meth:`complete_multipart` in a worker thread (completion and download)."""
        return await anyio.to_thread.run_sync(
            lambda: self.complete_multipart(key, upload_id, parts, min_part_size=min_part_size)
        )

    def abort_multipart(self, upload_id: str) -> None:
        """``AbortMultipartUpload``. Raises ``NoSuchUpload`` for an unknown upload."""
        key = self._key_of(upload_id)
        s3_key = self._s3_key(key)
        self._call(
            "AbortMultipartUpload",
            lambda c: c.abort_multipart_upload(
                Bucket=self.location.bucket, Key=s3_key, UploadId=upload_id
            ),
        )
        with self._lock:
            self._upload_keys.pop(upload_id, None)

    # ---- objects ---------------------------------------------------------------------------------

    def head(self, key: str) -> StoredObject | None:
        """``HeadObject``: the object as S3 has it now, or ``None``. ``md5`` is known for a
        single-PUT object (its ETag) and for one with a validation copy; else ``""``."""
        return self._head(key)

    def object_path(self, key: str) -> Path | None:
        """A local copy of ``key`` for content checks (downloaded now if not cached; blocking);
        ``None`` if the object is absent or in discard mode."""
        if self.discard:
            return None
        with self._lock:
            copy = self._copies.get(key)
        if copy is not None and copy.path.exists():
            return copy.path
        fetched = self._download(key, expect_etag=None)
        return None if fetched is None else fetched.path

    def stats(self) -> dict[str, Any]:
        """Counters since start (or :meth:`reset_stats`), JSON-serialisable.

        Data-path counters of ``BlobStore`` (requests, bytes, faults, PUTs by part, PUTs in
        flight) are not known here: the PUTs go to the S3 server. ``s3_calls`` / ``s3_errors``
        count the sandbox's own API calls by operation / error code.
        """
        with self._lock:
            return {
                "backend": "s3",
                "bucket": self.location.bucket,
                "prefix": self.location.prefix,
                "endpoint": self.location.endpoint_url or "AWS",
                "s3_calls": dict(sorted(self._s3_calls.items())),
                "s3_errors": dict(sorted(self._s3_errors.items())),
                "presigned": self._presigned,
                "downloads": self._downloaded,
                "requests": 0,
                "faults": {},
                "puts_by_part": {},
                "uploads_open": len(self._upload_keys),
                "uploads_completed": self._completed_count,
                "objects": len(self._copies),
                "discard": self.discard,
            }

    def reset_stats(self) -> None:
        with self._lock:
            self._s3_calls.clear()
            self._s3_errors.clear()
            self._presigned = 0
            self._downloaded = 0
            self._completed_count = 0

    # ---- internals -------------------------------------------------------------------------------

    @staticmethod
    def _require(client: Any) -> Any:
        if client is None:
            raise RuntimeError("S3BlobStore.open() has not been called")
        return client

    def _s3_key(self, key: str) -> str:
        return self.location.prefix + validate_key(key)

    def _key_of(self, upload_id: str) -> str:
        with self._lock:
            key = self._upload_keys.get(upload_id)
        if key is None:
            raise no_such_upload()
        return key

    def _cache_root(self) -> Path:
        assert self.data_dir is not None  # checked in __init__ unless discarding
        return self.data_dir / "s3-cache"

    def _call(self, operation: str, fn: Callable[[Any], T]) -> T:
        """One botocore call, its failure translated to ``BlobError``; counted."""
        client = self._require(self._api)
        with self._lock:
            self._s3_calls[operation] += 1
        try:
            return fn(client)
        except Exception as exc:
            error = translate(exc, self.location)
            with self._lock:
                self._s3_errors[error.code] += 1
            raise error from None

    def _call_or_none(self, operation: str, fn: Callable[[Any], T]) -> T | None:
        """:meth:`_call`, or ``None`` where S3 answers 404 (no such object)."""
        try:
            return self._call(operation, fn)
        except BlobError as exc:
            if exc.status == 404:
                return None
            raise

    def _head(self, key: str) -> StoredObject | None:
        s3_key = self._s3_key(key)
        meta = self._call_or_none(
            "HeadObject", lambda c: c.head_object(Bucket=self.location.bucket, Key=s3_key)
        )
        if meta is None:
            return None
        etag = quoted(str(meta.get("ETag", "")))
        size = int(meta.get("ContentLength", 0))
        md5 = unquoted(etag) if is_md5(etag) else ""
        with self._lock:
            copy = self._copies.get(key)
        if copy is not None:
            if copy.etag == etag and copy.size == size:
                md5 = copy.md5
            else:  # replaced since we copied it
                with self._lock:
                    self._copies.pop(key, None)
                copy.path.unlink(missing_ok=True)
        return StoredObject(key=key, size=size, etag=etag, md5=md5)

    def _download(self, key: str, *, expect_etag: str | None) -> Copy | None:
        """Stream ``key`` into the cache (MD5 on the way); ``None`` if S3 has no such object."""
        s3_key = self._s3_key(key)
        root = self._cache_root()
        answer = self._call_or_none(
            "GetObject", lambda c: c.get_object(Bucket=self.location.bucket, Key=s3_key)
        )
        if answer is None:
            return None
        etag = quoted(str(answer.get("ETag", "")))
        if expect_etag is not None and unquoted(etag) != unquoted(expect_etag):
            answer["Body"].close()
            raise BlobError(
                "InternalError",
                f"the object changed while it was completed (ETag {etag}, expected {expect_etag})",
                500,
            )
        copy = keep_copy(root, key, etag, answer, self.location)
        with self._lock:
            self._copies[key] = copy
            self._downloaded += 1
        return copy
