"""Real S3-compatible storage behind the sandbox: the planes' blob-store interface over a bucket.

``SandboxConfig(storage_url="s3://BUCKET[/PREFIX]?endpoint_url=http://127.0.0.1:9000")`` (or
``upload-engine sandbox serve --storage s3://...``) keeps the sandbox's blobs in a real
S3-compatible server (MinIO, moto, AWS) instead of its own :class:`BlobStore`. Both control
planes run unchanged: :class:`S3BlobStore` offers the methods they call (``create_multipart``,
``presign_part``, ``presign_put``, ``list_parts``, ``complete_multipart(_async)``, ``head``,
``object_path``) with the same meaning.

Rules this module keeps:

* **The bytes never pass through the sandbox.** Upload URLs are real SigV4 presigned URLs made
  by botocore (``generate_presigned_url``; query signing, path-style addressing), pointing at the
  S3 server: the client PUTs straight to it and S3 computes the ETags. Headers a plane requires
  (``part_headers``, ``additional_header``) are added to the request before botocore signs it,
  so a server that checks signatures (MinIO, AWS) refuses a PUT without them. moto's server mode
  does not check signatures or expiry; the integration tests say so where it matters.
* **URL syntax.** ``s3://BUCKET[/PREFIX]`` with query parameters ``endpoint_url`` (where the
  sandbox reaches S3; default AWS), ``public_endpoint_url`` (the host put into presigned URLs, for
  when clients reach S3 by another name than the sandbox does, e.g. ``minio:9000`` inside
  docker compose and ``localhost:9000`` outside; default ``endpoint_url``) and ``region``
  (default ``us-east-1``). Plane keys become ``PREFIX/key``. Credentials never go in the URL
  (it is printed and may sit in argv): botocore's standard chain supplies them
  (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``, shared files).
* **S3's rules are S3's.** The part rules (5 MiB minimum but the last part, 5 GiB maximum,
  10,000 parts), ETags (quoted MD5; ``"md5(md5s)-N"`` for multipart), overwrite on re-send and
  expiry are enforced by the server, not here. Keys are still checked with
  :func:`~engine.sandbox.blobstore.validate_key` (no path traversal, no empty segments).
* **Fault injection does not apply**: there is no sandbox code on the data path to inject it.
  :class:`~engine.sandbox.server.SandboxConfig` refuses an active ``FaultPlan`` together with a
  ``storage_url``, and assigning one to :attr:`S3BlobStore.faults` raises. The control planes'
  own faults (Matterport ``internal_error_rate``, Speckle ``rate_limit_every``) still work.
* **Validation copies.** The planes check what was stored (E57 page CRCs, the IFC header) and
  report its MD5, which needs the bytes: completing a multipart upload downloads the object
  into ``cache_dir`` (streamed 1 MiB at a time, MD5 on the way) in the same worker thread, and
  :meth:`S3BlobStore.object_path` returns that copy, downloading it first when it is not cached
  (a single-PUT object, which the sandbox never sees arrive). ``discard=True`` keeps no copy:
  ``object_path`` is ``None`` and a multipart object's MD5 is ``""``, as in ``BlobStore``'s
  discard mode (content checks skipped).
* **Blocking.** botocore is blocking. :meth:`S3BlobStore.complete_multipart_async` runs the
  completion and the download in a worker thread; the other methods run on the caller's thread,
  which inside the server is the event loop: ``create_multipart``, ``list_parts`` and ``head``
  are one S3 round trip each (milliseconds on loopback or a LAN), presigning needs no network,
  and ``object_path`` of an uncached object downloads it there (the Speckle plane asks for it
  once per ingestion). A sandbox, not a production gateway.
* **Errors.** botocore failures become :class:`BlobError` with S3's code, message and status
  (``NoSuchUpload``, ``InvalidPart``, ``EntityTooSmall``, ...); an unreachable endpoint is
  ``ServiceUnavailable`` (503). Messages never carry credentials or URL signatures.
* **State.** Upload ids started here, completed objects and cached copies are remembered in
  memory under one lock (worker threads complete uploads while the loop reads). A retried
  completion of a completed upload with the same parts returns the same object, as
  ``BlobStore`` does.
"""

from __future__ import annotations

import hashlib
import math
import re
import secrets
import threading
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Final, TypeVar
from urllib.parse import parse_qsl, urlsplit

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
from engine.sandbox.faults import FaultPlan

__all__ = ["S3BlobStore", "S3Location"]

T = TypeVar("T")

_DOWNLOAD_CHUNK: Final = 1 * MiB
_MAX_EXPIRY: Final = 7 * 24 * 3600  # SigV4 presigned URLs live at most a week
_PARAMS: Final = frozenset({"endpoint_url", "public_endpoint_url", "region"})
_BUCKET_RE: Final = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_UNREACHABLE: Final = "ServiceUnavailable"


@dataclass(frozen=True, kw_only=True)
class S3Location:
    """Where the blobs go: a bucket, a key prefix and how to reach the server (see the module
    docstring for the URL syntax). Holds no credentials."""

    bucket: str
    prefix: str = ""
    endpoint_url: str | None = None
    public_endpoint_url: str | None = None
    region: str = "us-east-1"

    def __post_init__(self) -> None:
        if not _BUCKET_RE.match(self.bucket) or ".." in self.bucket:
            raise ValueError(f"not a valid S3 bucket name: {self.bucket!r}")
        if self.prefix:
            try:
                validate_key(self.prefix.rstrip("/"))
            except BlobError as exc:
                raise ValueError(f"bad key prefix {self.prefix!r}: {exc.message}") from None
        for name in ("endpoint_url", "public_endpoint_url"):
            value = getattr(self, name)
            if value is None:
                continue
            parts = urlsplit(value)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"{name} must be an http(s) URL, got {value!r}")
            if parts.username or parts.password or parts.query:
                raise ValueError(
                    f"{name} must not carry credentials or a query; credentials come from "
                    "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY"
                )
        if not self.region or not re.fullmatch(r"[a-z0-9-]+", self.region):
            raise ValueError(f"not a valid region: {self.region!r}")

    @classmethod
    def parse(cls, url: str) -> S3Location:
        """``s3://bucket/prefix?endpoint_url=...&public_endpoint_url=...&region=...``."""
        parts = urlsplit(url)
        if parts.scheme != "s3" or not parts.netloc:
            raise ValueError(f"storage URL must look like s3://BUCKET[/PREFIX]?..., got {url!r}")
        if "@" in parts.netloc:
            raise ValueError(
                "the storage URL must not carry credentials; set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) instead"
            )
        params: dict[str, str] = {}
        for name, value in parse_qsl(parts.query, keep_blank_values=True, strict_parsing=False):
            if name not in _PARAMS:
                raise ValueError(
                    f"unknown storage URL parameter {name!r}; expected one of {sorted(_PARAMS)}"
                )
            if name in params:
                raise ValueError(f"storage URL parameter {name!r} given twice")
            params[name] = value
        prefix = parts.path.strip("/")
        return cls(
            bucket=parts.netloc,
            prefix=f"{prefix}/" if prefix else "",
            endpoint_url=params.get("endpoint_url") or None,
            public_endpoint_url=params.get("public_endpoint_url") or None,
            region=params.get("region") or "us-east-1",
        )

    def __str__(self) -> str:
        where = self.endpoint_url or "AWS"
        return f"s3://{self.bucket}/{self.prefix} at {where}"


@dataclass
class _Copy:
    """A downloaded copy of an object: where, and what S3 said it was."""

    path: Path
    etag: str
    size: int
    md5: str


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
        self._signer: Any = None  # botocore client presigning for public_endpoint_url
        self._lock = threading.Lock()  # guards everything below and serialises presigning
        self._upload_keys: dict[str, str] = {}  # upload id -> key, for uploads started here
        self._completing: set[str] = set()
        self._done: dict[str, tuple[tuple[tuple[int, str], ...], StoredObject]] = {}
        self._copies: dict[str, _Copy] = {}
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
        import botocore.session
        from botocore.config import Config

        session = botocore.session.get_session()
        if session.get_credentials() is None:
            raise BlobError(
                "NoCredentials",
                "no credentials for the S3 storage: set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)",
                500,
            )
        loc = self.location
        where = loc.endpoint_url or "AWS"
        config = Config(
            signature_version="s3v4",
            s3={"addressing_style": "path"},
            retries={"max_attempts": 3, "mode": "standard"},
            # S3's MD5 ETags are what the planes check; no checksum parameters in the URLs
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        self._api = session.create_client(
            "s3", region_name=loc.region, endpoint_url=loc.endpoint_url, config=config
        )
        self._signer = session.create_client(
            "s3",
            region_name=loc.region,
            endpoint_url=loc.public_endpoint_url or loc.endpoint_url,
            config=config,
        )
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
        if self.data_dir is not None and not self.discard:
            self._cache_root().mkdir(parents=True, exist_ok=True)

    def close(self) -> None:
        """Server shutdown: close the clients' connection pools."""
        super().close()
        for client in (self._api, self._signer):
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

    def presign_part(
        self,
        key: str,
        upload_id: str,
        part_number: int,
        *,
        expires_in: float = 3600,
        required_headers: Mapping[str, str] | None = None,
    ) -> str:
        """A SigV4 presigned ``UploadPart`` URL (S3 checks the upload and the part number)."""
        params = {
            "Bucket": self.location.bucket,
            "Key": self._s3_key(key),
            "UploadId": upload_id,
            "PartNumber": part_number,
        }
        return self._presign("upload_part", params, expires_in, required_headers)

    def presign_put(
        self,
        key: str,
        *,
        expires_in: float = 3600,
        required_headers: Mapping[str, str] | None = None,
    ) -> str:
        """A SigV4 presigned ``PutObject`` URL (S3 allows at most 5 GiB in one PUT)."""
        params = {"Bucket": self.location.bucket, "Key": self._s3_key(key)}
        return self._presign("put_object", params, expires_in, required_headers)

    def _presign(
        self,
        operation: str,
        params: dict[str, Any],
        expires_in: float,
        required_headers: Mapping[str, str] | None,
    ) -> str:
        signer = self._require(self._signer)
        headers: dict[str, str] = {}
        for name, value in (required_headers or {}).items():
            lowered = name.strip().lower()
            if not lowered or any(ch in lowered for ch in ";:\r\n ") or lowered == "host":
                raise ValueError(f"invalid header name {name!r}")
            if lowered in headers:
                raise ValueError(f"header {lowered!r} given twice")
            headers[lowered] = value.strip()
        expires = max(1, min(_MAX_EXPIRY, math.ceil(expires_in)))

        def sign_headers(request: Any, **_: Any) -> None:
            for name, value in headers.items():
                request.headers[name] = value

        event = f"before-sign.s3.{'UploadPart' if operation == 'upload_part' else 'PutObject'}"
        with self._lock:  # the handler is per call: one presign at a time
            if headers:
                signer.meta.events.register(event, sign_headers)
            try:
                url = signer.generate_presigned_url(operation, Params=params, ExpiresIn=expires)
            finally:
                if headers:
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
                        etag=_quoted(str(item["ETag"])),
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
        self,
        key: str,
        upload_id: str,
        parts: Sequence[tuple[int, str]],
        *,
        min_part_size: int | None = None,
    ) -> StoredObject:
        """``CompleteMultipartUpload`` with the listed ``(part_number, etag)`` parts, then a
        validation copy (see the module docstring). Blocking: from the server prefer
        :meth:`complete_multipart_async`. ``min_part_size`` is S3's to enforce, not ours."""
        validate_key(key)
        listed = tuple((int(number), _unquoted(etag)) for number, etag in parts)
        with self._lock:
            done = self._done.get(upload_id)
            if done is not None:
                if done[0] == listed and done[1].key == key:
                    return done[1]
                raise BlobError("NoSuchUpload", _NO_SUCH_UPLOAD)
            if self._upload_keys.get(upload_id) != key:
                raise BlobError("NoSuchUpload", _NO_SUCH_UPLOAD)
            if upload_id in self._completing:
                raise BlobError(
                    "OperationAborted",
                    "A conflicting conditional operation is currently in progress against "
                    "this resource. Please try again.",
                    409,
                )
            self._completing.add(upload_id)
        try:
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
            etag = _quoted(str(answer.get("ETag", "")))
            copy = None if self.discard else self._download(key, expect_etag=etag)
            if copy is None:
                head = self._head(key)
                size = head.size if head is not None else 0
                stored = StoredObject(key=key, size=size, etag=etag, md5="")
            else:
                stored = StoredObject(key=key, size=copy.size, etag=etag, md5=copy.md5)
            with self._lock:
                self._done[upload_id] = (listed, stored)
                self._upload_keys.pop(upload_id, None)
                self._completed_count += 1
            return stored
        finally:
            with self._lock:
                self._completing.discard(upload_id)

    async def complete_multipart_async(
        self,
        key: str,
        upload_id: str,
        parts: Sequence[tuple[int, str]],
        *,
        min_part_size: int | None = None,
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
            raise BlobError("NoSuchUpload", _NO_SUCH_UPLOAD)
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
            error = _translate(exc, self.location)
            with self._lock:
                self._s3_errors[error.code] += 1
            raise error from None

    def _head(self, key: str) -> StoredObject | None:
        s3_key = self._s3_key(key)
        try:
            meta = self._call(
                "HeadObject", lambda c: c.head_object(Bucket=self.location.bucket, Key=s3_key)
            )
        except BlobError as exc:
            if exc.status == 404:
                return None
            raise
        etag = _quoted(str(meta.get("ETag", "")))
        size = int(meta.get("ContentLength", 0))
        md5 = _unquoted(etag) if _is_md5(etag) else ""
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

    def _download(self, key: str, *, expect_etag: str | None) -> _Copy | None:
        """Stream ``key`` into the cache (MD5 on the way); ``None`` if S3 has no such object."""
        s3_key = self._s3_key(key)
        root = self._cache_root()
        name = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:40]
        final = root / name
        tmp = root / f".{name}.{secrets.token_hex(4)}"
        try:
            answer = self._call(
                "GetObject", lambda c: c.get_object(Bucket=self.location.bucket, Key=s3_key)
            )
        except BlobError as exc:
            if exc.status == 404:
                return None
            raise
        etag = _quoted(str(answer.get("ETag", "")))
        if expect_etag is not None and _unquoted(etag) != _unquoted(expect_etag):
            answer["Body"].close()
            raise BlobError(
                "InternalError",
                f"the object changed while it was completed (ETag {etag}, expected {expect_etag})",
                500,
            )
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
            raise _translate(exc, self.location) from None
        finally:
            body.close()
        expected = int(answer.get("ContentLength", size))
        if size != expected:
            final.unlink(missing_ok=True)
            raise BlobError(
                "IncompleteBody", f"downloaded {size} of {expected} bytes of {key}", 500
            )
        copy = _Copy(path=final, etag=etag, size=size, md5=md5.hexdigest())
        with self._lock:
            self._copies[key] = copy
            self._downloaded += 1
        return copy


_NO_SUCH_UPLOAD: Final = (
    "The specified upload does not exist. The upload ID may be invalid, or the upload may have "
    "been aborted or completed."
)


def _quoted(etag: str) -> str:
    value = _unquoted(etag)
    return f'"{value}"' if value else ""


def _unquoted(etag: str) -> str:
    value = etag.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1]
    return value


def _is_md5(etag: str) -> bool:
    return bool(re.fullmatch(r"[0-9a-f]{32}", _unquoted(etag).lower()))


def _translate(exc: BaseException, location: S3Location) -> BlobError:
    """A botocore failure as a ``BlobError`` (S3's code, message and status; one line)."""
    from botocore import exceptions as bx

    if isinstance(exc, BlobError):
        return exc
    if isinstance(exc, bx.ClientError):
        err = exc.response.get("Error", {})
        meta = exc.response.get("ResponseMetadata", {})
        status = int(meta.get("HTTPStatusCode", 0) or 0) or 500
        code = str(err.get("Code", "") or "") or str(status)
        if code == "404":
            code = "NoSuchKey"
        message = str(err.get("Message", "") or code).splitlines()[0]
        return BlobError(code, message, status)
    if isinstance(exc, bx.NoCredentialsError | bx.PartialCredentialsError):
        return BlobError(
            "NoCredentials",
            "no credentials for the S3 storage: set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)",
            500,
        )
    if isinstance(exc, bx.EndpointConnectionError | bx.ConnectionError):
        return BlobError(
            _UNREACHABLE, f"cannot reach the S3 storage at {location.endpoint_url or 'AWS'}", 503
        )
    if isinstance(exc, bx.BotoCoreError):
        text = str(exc).splitlines()[0] if str(exc) else ""
        return BlobError("InternalError", f"{type(exc).__name__}: {text}".rstrip(": "), 500)
    return BlobError("InternalError", f"{type(exc).__name__}", 500)
