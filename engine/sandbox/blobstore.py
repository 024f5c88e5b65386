"""An S3-faithful blob store behind presigned URLs: the storage side of the sandbox.

Rules this module keeps (each one is something real S3 does, and the client must cope with):

* **URLs are signed.** ``{base_url}/blob/{key}?[uploadId&partNumber&]X-Expires&[X-SignedHeaders&]
  X-Signature``. The signature is HMAC-SHA256(secret) over the method, ``/blob/`` + the *decoded*
  key, the canonical query (decoded pairs without ``X-Signature``, sorted, each side percent-encoded
  with only ``A-Za-z0-9-_.~`` left bare) and ``name:value`` of every signed header (names lowercase,
  sorted, values stripped; repeated headers joined by ``,``). Signing decoded values keeps the check
  indifferent to how a client library re-encodes the URL.
* **A PUT is checked in a fixed order** before a byte is read: key syntax (400 ``InvalidKey``, no
  path traversal), signature present and valid, with every signed header present and equal (403
  ``SignatureDoesNotMatch``), expiry (403 ``AccessDenied`` / ``Request has expired``),
  ``Content-Length`` present and no chunked body (411 ``MissingContentLength``), ``partNumber`` in
  ``1..max_parts`` (400 ``InvalidArgument``), size at most ``max_part_size`` (single PUT:
  ``max_object_size``) (400 ``EntityTooLarge``), upload exists for that key (404 ``NoSuchUpload``).
* **Bodies are streamed, never buffered whole.** Each body is read chunk by chunk, MD5-hashed and
  written to a temp file; batches of about 1 MiB are hashed and written in worker threads while the
  next batch is read, so memory per connection is a few MiB whatever the part size.
* **Nothing partial is ever visible.** A part or object becomes visible only by ``os.replace`` of a
  complete temp file (done on the event loop, together with the metadata update); a body shorter
  than ``Content-Length`` (client gone, reset) stores nothing; a re-PUT replaces the old part whole.
* **ETags are S3's.** A part or single-PUT object has the quoted MD5 hex of its bytes; a multipart
  object has ``"md5(md5(p1)‖…‖md5(pN))-N"``. ``complete_multipart`` enforces ascending part order
  (``InvalidPartOrder``), that every listed part exists with that ETag, quotes optional
  (``InvalidPart``), and that every part but the last is at least the minimum size
  (``EntityTooSmall``). Parts not listed are dropped, as in S3.
* **Discard mode** (``discard=True``, for benchmarks): bodies are hashed and counted but never
  written; parts and objects keep size/ETag metadata only. A multipart object's whole-object MD5 is
  then unknown and reported as ``""``; a single-PUT object's MD5 is known and reported.
* **State.** Metadata lives in memory and belongs to the event loop thread; worker threads only
  hash, write temp files and assemble objects. A store opened on an existing ``data_dir`` starts
  empty (left-over temp files are removed). The public ``def`` methods never touch the network;
  only ``complete_multipart`` (which assembles the object on disk) can block for long: inside a
  running server prefer ``await complete_multipart_async(...)``, which assembles in a thread.
* **Faults** come from a :class:`~engine.sandbox.faults.FaultPlan`, decided per
  ``(key, part_number, attempt_index)``, where the attempt index counts the requests for that part
  that passed the checks above (single PUT: part 0). Status faults answer once the body is read.

Layout under ``data_dir``: ``uploads/<upload_id>/<part_number>``, ``objects/<quoted key>`` (the key
percent-encoded into one flat file name, so ``a`` and ``a/b`` can coexist), ``tmp/``.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import html
import itertools
import math
import secrets
import shutil
import time
from collections import Counter, OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import quote

import anyio
import anyio.to_thread
from aiohttp import web
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestPayloadError
from anyio.abc import ObjectReceiveStream

from engine.sandbox.faults import (
    BAD_ETAG,
    RESET,
    STALL,
    STATUS_FAULTS,
    THROTTLE,
    FaultPlan,
)

if TYPE_CHECKING:
    from multidict import CIMultiDictProxy, MultiMapping

__all__ = [
    "BlobError",
    "BlobStore",
    "StoredObject",
    "StoredPart",
    "validate_key",
]

KiB: Final = 1024
MiB: Final = 1024 * KiB
GiB: Final = 1024 * MiB

BLOB_PREFIX: Final = "/blob/"
MAX_KEY_BYTES: Final = 1024
_INLINE_LIMIT: Final = 256 * KiB  # bodies up to this size are hashed on the loop, no thread hop
_BATCH: Final = 1 * MiB  # bytes handed to a worker thread at a time
_COPY_BUFFER: Final = 1 * MiB
_MAX_FILENAME: Final = 200
_COMPLETED_MEMORY: Final = 4096  # completed uploads remembered for idempotent re-completion
_STALL_POLL: Final = 0.05

_STATUS_BY_CODE: Final[Mapping[str, int]] = {
    "AccessDenied": 403,
    "SignatureDoesNotMatch": 403,
    "InvalidKey": 400,
    "InvalidArgument": 400,
    "InvalidPart": 400,
    "InvalidPartOrder": 400,
    "EntityTooSmall": 400,
    "EntityTooLarge": 400,
    "MalformedXML": 400,
    "BadDigest": 400,
    "InvalidDigest": 400,
    "IncompleteBody": 400,
    "MissingContentLength": 411,
    "NoSuchUpload": 404,
    "NoSuchKey": 404,
    "OperationAborted": 409,
    "InternalError": 500,
}

_SAFE_QUERY: Final = "-_.~"


class BlobError(Exception):
    """An S3 error: ``code`` (e.g. ``NoSuchUpload``), ``message`` and the HTTP ``status``."""

    code: str
    message: str
    status: int

    def __init__(self, code: str, message: str, status: int | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status if status is not None else _STATUS_BY_CODE.get(code, 400)


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


# --------------------------------------------------------------------------------------------------
# Pure helpers: keys, signatures, ETags, error bodies.


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


def _canonical_query(pairs: Iterable[tuple[str, str]]) -> str:
    return "&".join(
        f"{quote(name, safe=_SAFE_QUERY)}={quote(value, safe=_SAFE_QUERY)}"
        for name, value in sorted(pairs)
    )


def _string_to_sign(
    method: str, key: str, query: Iterable[tuple[str, str]], headers: Sequence[tuple[str, str]]
) -> bytes:
    lines = [method, BLOB_PREFIX + key, _canonical_query(query)]
    lines.extend(f"{name}:{value}" for name, value in headers)
    return "\n".join(lines).encode("utf-8", "surrogatepass")


def _quoted(hexdigest: str) -> str:
    return f'"{hexdigest}"'


def _unquoted(etag: str) -> str:
    if len(etag) >= 2 and etag.startswith('"') and etag.endswith('"'):
        return etag[1:-1]
    return etag


def _composite_etag(digests: Sequence[bytes]) -> str:
    joined = hashlib.md5(b"".join(digests), usedforsecurity=False).hexdigest()
    return _quoted(f"{joined}-{len(digests)}")


def _wrong_etag(digest: bytes) -> str:
    """A well-formed quoted MD5 ETag that is certainly not the MD5 of the stored bytes."""
    return _quoted(hashlib.md5(b"bad-etag:" + digest, usedforsecurity=False).hexdigest())


def _object_filename(key: str) -> str:
    name = quote(key, safe="")
    if len(name) <= _MAX_FILENAME:
        return name
    digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    return f"{name[: _MAX_FILENAME - 34]}~{digest}"


def error_body(code: str, message: str, request_id: str) -> bytes:
    """An S3-style XML error document."""
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{html.escape(code)}</Code><Message>{html.escape(message)}</Message>"
        f"<RequestId>{html.escape(request_id)}</RequestId></Error>"
    ).encode()


# --------------------------------------------------------------------------------------------------
# Internal records.


@dataclass(frozen=True)
class _Part:
    number: int
    size: int
    digest: bytes

    @property
    def etag(self) -> str:
        return _quoted(self.digest.hex())


@dataclass
class _Upload:
    key: str
    upload_id: str
    parts: dict[int, _Part] = field(default_factory=dict)
    completing: bool = False


@dataclass(frozen=True)
class _Target:
    """What an authorised PUT will write (single PUT: ``part_number`` 0, ``upload_id`` None)."""

    key: str
    upload_id: str | None
    part_number: int
    size: int
    content_md5: str | None


class _ClientGoneError(Exception):
    """The body ended before ``Content-Length`` bytes: the client went away."""


class _Sink:
    """Hashes (and unless discarding, writes) one body, from one thread at a time.

    A write error is kept in ``error`` rather than raised, so the reader can drain and report it.
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.size = 0
        self.error: OSError | None = None
        self._md5 = hashlib.md5(usedforsecurity=False)
        self._file = path.open("wb") if path is not None else None

    def feed(self, chunks: Sequence[bytes]) -> None:
        if self.error is not None:
            return
        try:
            for chunk in chunks:
                self._md5.update(chunk)
                if self._file is not None:
                    self._file.write(chunk)
                self.size += len(chunk)
        except OSError as exc:
            self.error = exc

    def close(self) -> bytes:
        if self._file is not None:
            self._file.close()
        if self.error is not None:
            raise BlobError("InternalError", f"The sandbox could not store the body: {self.error}")
        return self._md5.digest()

    def discard(self) -> None:
        if self._file is not None:
            self._file.close()
        if self.path is not None:
            self.path.unlink(missing_ok=True)


@dataclass
class _Assembly:
    """A validated completion: concatenate the part files into ``output`` and MD5 the result."""

    key: str
    upload_id: str
    listed: tuple[tuple[int, str], ...]
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


# --------------------------------------------------------------------------------------------------


class BlobStore:
    """S3-style multipart and single-PUT storage behind HMAC-presigned URLs (see module docstring).

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
        max_object_size: int = 5 * GiB,
    ) -> None:
        if not secret:
            raise ValueError("secret must not be empty")
        if data_dir is None and not discard:
            raise ValueError("data_dir is required unless discard=True")
        if not (0 <= min_part_size <= max_part_size) or max_parts < 1 or max_object_size < 0:
            raise ValueError("need 0 <= min_part_size <= max_part_size, max_parts >= 1")
        self.data_dir = data_dir
        self.discard = discard
        self.min_part_size = min_part_size
        self.max_part_size = max_part_size
        self.max_parts = max_parts
        self.max_object_size = max_object_size
        self.base_url = ""
        self._secret = secret
        self._faults = faults if faults is not None else FaultPlan()
        self._uploads: dict[str, _Upload] = {}
        self._objects: dict[str, StoredObject] = {}
        self._completed: OrderedDict[str, tuple[str, tuple[tuple[int, str], ...], StoredObject]]
        self._completed = OrderedDict()
        self._attempts: Counter[tuple[str, int]] = Counter()
        self._request_seq = 0
        self._stats_requests = 0
        self._stats_bytes_received = 0
        self._stats_bytes_stored = 0
        self._stats_responses: Counter[int] = Counter()
        self._stats_errors: Counter[str] = Counter()
        self._stats_faults: Counter[str] = Counter()
        self._stats_puts: Counter[tuple[str, int]] = Counter()
        self._stats_completed = 0
        self._stats_disconnects = 0
        self._puts_in_flight = 0
        self._max_puts_in_flight = 0
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
            f"requests={self._stats_requests}, faults={self._faults!r})"
        )

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
        self._stats_requests = 0
        self._stats_bytes_received = 0
        self._stats_bytes_stored = 0
        self._stats_responses.clear()
        self._stats_errors.clear()
        self._stats_faults.clear()
        self._stats_puts.clear()
        self._stats_completed = 0
        self._stats_disconnects = 0
        self._max_puts_in_flight = self._puts_in_flight

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
        params = {"uploadId": upload_id, "partNumber": str(part_number)}
        return self._presign(key, params, expires_in, required_headers)

    def presign_put(
        self,
        key: str,
        *,
        expires_in: float = 3600,
        required_headers: Mapping[str, str] | None = None,
    ) -> str:
        """An absolute URL for a single-object ``PUT`` (at most ``max_object_size`` bytes)."""
        return self._presign(key, {}, expires_in, required_headers)

    def _presign(
        self,
        key: str,
        params: dict[str, str],
        expires_in: float,
        required_headers: Mapping[str, str] | None,
    ) -> str:
        validate_key(key)
        if not self.base_url:
            raise RuntimeError("BlobStore.base_url is not set: start the sandbox server first")
        headers: dict[str, str] = {}
        for name, value in (required_headers or {}).items():
            lowered = name.strip().lower()
            if not lowered or any(ch in lowered for ch in ";:\r\n"):
                raise ValueError(f"invalid header name {name!r}")
            if lowered in headers:
                raise ValueError(f"header {lowered!r} given twice")
            headers[lowered] = value.strip()
        params["X-Expires"] = str(math.ceil(time.time() + expires_in))
        if headers:
            params["X-SignedHeaders"] = ";".join(sorted(headers))
        signed = [(name, headers[name]) for name in sorted(headers)]
        signature = self._sign("PUT", key, params.items(), signed)
        query = f"{_canonical_query(params.items())}&X-Signature={signature}"
        return f"{self.base_url}{BLOB_PREFIX}{quote(key, safe='/')}?{query}"

    def _sign(
        self,
        method: str,
        key: str,
        query: Iterable[tuple[str, str]],
        headers: Sequence[tuple[str, str]],
    ) -> str:
        message = _string_to_sign(method, key, query, headers)
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    # ---- multipart API ---------------------------------------------------------------------------

    def create_multipart(self, key: str) -> str:
        """Start a multipart upload of ``key``; return its upload id."""
        validate_key(key)
        upload_id = secrets.token_hex(16)
        if not self.discard:
            self._upload_dir(upload_id).mkdir(parents=True)
        self._uploads[upload_id] = _Upload(key=key, upload_id=upload_id)
        return upload_id

    def list_parts(self, upload_id: str) -> list[StoredPart]:
        """The parts stored so far, by ascending part number. Raises ``NoSuchUpload``."""
        upload = self._require_upload(upload_id)
        return [
            StoredPart(number=p.number, size=p.size, etag=p.etag)
            for _, p in sorted(upload.parts.items())
        ]

    def complete_multipart(
        self,
        key: str,
        upload_id: str,
        parts: Sequence[tuple[int, str]],
        *,
        min_part_size: int | None = None,
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
        self,
        key: str,
        upload_id: str,
        parts: Sequence[tuple[int, str]],
        *,
        min_part_size: int | None = None,
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
        """Counters since start (or :meth:`reset_stats`), JSON-serialisable.

        ``requests``: blob HTTP requests; ``responses``: by status; ``errors``: by S3 code;
        ``bytes_received``: body bytes read (including drained and cut-off bodies);
        ``bytes_stored``: bytes of accepted parts and objects; ``faults``: injected, by kind;
        ``puts_by_part``: ``{key: {part_number: attempts}}`` for PUTs that passed the checks;
        ``disconnects``: bodies cut short (client gone, or a ``reset``/``stall`` fault);
        ``puts_in_flight`` / ``max_puts_in_flight``: PUTs past the checks whose answer is not
        yet sent (now, and the most at once).
        """
        puts: dict[str, dict[str, int]] = {}
        for (key, part), count in sorted(self._stats_puts.items()):
            puts.setdefault(key, {})[str(part)] = count
        return {
            "requests": self._stats_requests,
            "responses": {str(status): n for status, n in sorted(self._stats_responses.items())},
            "errors": dict(sorted(self._stats_errors.items())),
            "bytes_received": self._stats_bytes_received,
            "bytes_stored": self._stats_bytes_stored,
            "faults": dict(sorted(self._stats_faults.items())),
            "puts_by_part": puts,
            "disconnects": self._stats_disconnects,
            "puts_in_flight": self._puts_in_flight,
            "max_puts_in_flight": self._max_puts_in_flight,
            "uploads_open": len(self._uploads),
            "uploads_completed": self._stats_completed,
            "parts_stored": sum(len(u.parts) for u in self._uploads.values()),
            "objects": len(self._objects),
            "discard": self.discard,
        }

    # ---- completion internals --------------------------------------------------------------------

    def _begin_completion(
        self,
        key: str,
        upload_id: str,
        parts: Sequence[tuple[int, str]],
        min_part_size: int | None,
    ) -> _Assembly | StoredObject:
        validate_key(key)
        listed = tuple((int(number), _unquoted(etag)) for number, etag in parts)
        done = self._completed.get(upload_id)
        if done is not None:
            done_key, done_listed, done_object = done
            if done_key == key and done_listed == listed:
                return done_object
            raise BlobError("NoSuchUpload", _NO_SUCH_UPLOAD)
        upload = self._uploads.get(upload_id)
        if upload is None or upload.key != key:
            raise BlobError("NoSuchUpload", _NO_SUCH_UPLOAD)
        if upload.completing:
            raise BlobError(
                "OperationAborted",
                "A conflicting conditional operation is currently in progress against this "
                "resource. Please try again.",
            )
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
        chosen: list[_Part] = []
        for number, etag in listed:
            part = upload.parts.get(number)
            if part is None or part.digest.hex() != etag:
                raise BlobError(
                    "InvalidPart",
                    "One or more of the specified parts could not be found. The part may not "
                    "have been uploaded, or the specified entity tag may not have matched the "
                    "part's entity tag.",
                )
            chosen.append(part)
        minimum = self.min_part_size if min_part_size is None else min_part_size
        if any(part.size < minimum for part in chosen[:-1]):
            raise BlobError(
                "EntityTooSmall",
                "Your proposed upload is smaller than the minimum allowed object size.",
            )
        upload.completing = True
        return _Assembly(
            key=key,
            upload_id=upload_id,
            listed=listed,
            part_paths=None
            if self.discard
            else [self._part_file(upload_id, p.number) for p in chosen],
            output=None if self.discard else self._new_tmp_path(),
            size=sum(part.size for part in chosen),
            etag=_composite_etag([part.digest for part in chosen]),
        )

    def _fail_completion(self, job: _Assembly, exc: BaseException) -> None:
        if job.output is not None:
            job.output.unlink(missing_ok=True)
        upload = self._uploads.get(job.upload_id)
        if upload is not None:
            upload.completing = False
        elif isinstance(exc, OSError):
            # Aborted while we were assembling: the part files vanished under us.
            raise BlobError("NoSuchUpload", _NO_SUCH_UPLOAD) from exc

    def _finish_completion(self, job: _Assembly, md5: str) -> StoredObject:
        upload = self._uploads.get(job.upload_id)
        if upload is None:  # aborted while assembling
            if job.output is not None:
                job.output.unlink(missing_ok=True)
            raise BlobError("NoSuchUpload", _NO_SUCH_UPLOAD)
        if job.output is not None:
            job.output.replace(self._object_file(job.key))
        stored = StoredObject(key=job.key, size=job.size, etag=job.etag, md5=md5)
        self._objects[job.key] = stored
        del self._uploads[job.upload_id]
        if not self.discard:
            shutil.rmtree(self._upload_dir(job.upload_id), ignore_errors=True)
        self._completed[job.upload_id] = (job.key, job.listed, stored)
        while len(self._completed) > _COMPLETED_MEMORY:
            self._completed.popitem(last=False)
        self._stats_completed += 1
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
        return self._root() / "objects" / _object_filename(key)

    def _new_tmp_path(self) -> Path:
        self._tmp_seq += 1
        return self._root() / "tmp" / f"{self._tmp_seq}-{secrets.token_hex(4)}"

    def _require_upload(self, upload_id: str) -> _Upload:
        upload = self._uploads.get(upload_id)
        if upload is None:
            raise BlobError("NoSuchUpload", _NO_SUCH_UPLOAD)
        return upload

    # ---- HTTP ------------------------------------------------------------------------------------

    def register(self, app: web.Application) -> None:
        """Serve ``PUT /blob/{key}`` from this store on ``app``."""
        app.router.add_put(BLOB_PREFIX + "{key:.+}", self.handle_put)

    async def handle_put(self, request: web.Request) -> web.StreamResponse:
        """The aiohttp handler for ``PUT /blob/{key}`` (see the module docstring for the rules)."""
        self._stats_requests += 1
        self._request_seq += 1
        request_id = f"{self._request_seq:016X}"
        plan = self._faults
        if plan.latency > 0.0:
            await anyio.sleep(plan.latency)
        try:
            target = self._authorize(
                request.match_info["key"], request.query, request.headers, request.content_length
            )
        except BlobError as exc:
            return self._error(exc, request_id)
        slot = (target.key, target.part_number)
        attempt = self._attempts[slot]
        self._attempts[slot] += 1
        self._stats_puts[slot] += 1
        fault = plan.decide(target.key, target.part_number, attempt)
        if fault is not None:
            self._stats_faults[fault] += 1
        self._puts_in_flight += 1
        self._max_puts_in_flight = max(self._max_puts_in_flight, self._puts_in_flight)
        try:
            try:
                response = await self._serve(request, target, fault, plan, request_id)
            except BlobError as exc:
                response = self._error(exc, request_id)
            # In flight until the answer is written (or the connection is found gone).
            with contextlib.suppress(ConnectionError):
                await response.prepare(request)
                await response.write_eof()
            return response
        except _ClientGoneError:
            # Nobody is listening: aiohttp drops this response quietly on the closed transport.
            self._stats_disconnects += 1
            return web.Response(status=400, headers={"x-amz-request-id": request_id})
        finally:
            self._puts_in_flight -= 1

    def _authorize(
        self,
        raw_key: str,
        query: MultiMapping[str],
        headers: CIMultiDictProxy[str],
        content_length: int | None,
    ) -> _Target:
        """Check a PUT in the documented order; return what it will write or raise BlobError."""
        key = validate_key(raw_key)
        pairs = list(query.items())
        params = dict(pairs)
        if len(params) != len(pairs):
            raise BlobError("InvalidArgument", "A query parameter was given more than once.")
        signature = params.pop("X-Signature", None)
        if not signature or "X-Expires" not in params:
            raise BlobError(
                "SignatureDoesNotMatch",
                "Query-string authentication requires the X-Signature and X-Expires parameters.",
            )
        names = [name for name in params.get("X-SignedHeaders", "").split(";") if name]
        signed: list[tuple[str, str]] = []
        for name in names:
            values = headers.getall(name, [])
            if not values:
                raise BlobError(
                    "SignatureDoesNotMatch",
                    f"The request is missing the signed header {name!r}.",
                )
            signed.append((name, ",".join(value.strip() for value in values)))
        expected = self._sign("PUT", key, params.items(), signed)
        if not hmac.compare_digest(expected, signature):
            raise BlobError(
                "SignatureDoesNotMatch",
                "The request signature we calculated does not match the signature you provided. "
                "Check the URL and the signed headers.",
            )
        try:
            expires = int(params["X-Expires"])
        except ValueError:
            raise BlobError("AccessDenied", "X-Expires is not a Unix timestamp.") from None
        if time.time() >= expires:
            raise BlobError("AccessDenied", "Request has expired")
        transfer_encoding = headers.get("Transfer-Encoding", "")
        if content_length is None or "chunked" in transfer_encoding.lower():
            raise BlobError(
                "MissingContentLength", "You must provide the Content-Length HTTP header."
            )
        upload_id = params.get("uploadId")
        raw_part = params.get("partNumber")
        if (upload_id is None) != (raw_part is None):
            raise BlobError("InvalidArgument", "uploadId and partNumber must be given together.")
        part_number = 0
        if raw_part is not None:
            try:
                part_number = int(raw_part)
            except ValueError:
                part_number = -1
            if not (1 <= part_number <= self.max_parts):
                raise BlobError(
                    "InvalidArgument",
                    f"Part number must be an integer between 1 and {self.max_parts}, inclusive.",
                )
        limit = self.max_part_size if upload_id is not None else self.max_object_size
        if content_length > limit:
            raise BlobError(
                "EntityTooLarge", "Your proposed upload exceeds the maximum allowed size."
            )
        if upload_id is not None:
            upload = self._uploads.get(upload_id)
            if upload is None or upload.key != key or upload.completing:
                raise BlobError("NoSuchUpload", _NO_SUCH_UPLOAD)
        return _Target(
            key=key,
            upload_id=upload_id,
            part_number=part_number,
            size=content_length,
            content_md5=headers.get("Content-MD5"),
        )

    async def _serve(
        self,
        request: web.Request,
        target: _Target,
        fault: str | None,
        plan: FaultPlan,
        request_id: str,
    ) -> web.StreamResponse:
        status_fault = STATUS_FAULTS.get(fault) if fault is not None else None
        if status_fault is not None:
            await self._drain(request.content, target.size)
            extra = {"Retry-After": f"{plan.retry_after:g}"} if fault == THROTTLE else {}
            error = BlobError(status_fault.code, status_fault.message, status_fault.status)
            return self._error(error, request_id, extra)
        if fault in (RESET, STALL):
            await self._drain(request.content, target.size // 2)
            if fault == STALL:
                await self._wait_stalled(request, plan.stall_seconds)
            transport = request.transport
            if transport is not None:
                transport.abort()
            raise _ClientGoneError
        digest, tmp = await self._receive(request.content, target)
        etag = self._commit(target, digest, tmp)
        if fault == BAD_ETAG:
            etag = _wrong_etag(digest)
        self._stats_responses[200] += 1
        return web.Response(status=200, headers={"ETag": etag, "x-amz-request-id": request_id})

    async def _drain(self, content: StreamReader, at_least: int) -> None:
        """Read and drop body bytes until ``at_least`` have arrived (or the body ends)."""
        received = 0
        while received < at_least:
            chunk = await self._read_chunk(content)
            if not chunk:
                raise _ClientGoneError
            received += len(chunk)

    async def _read_chunk(self, content: StreamReader) -> bytes:
        try:
            chunk = await content.readany()
        except (OSError, RequestPayloadError):
            raise _ClientGoneError from None
        self._stats_bytes_received += len(chunk)
        return chunk

    async def _wait_stalled(self, request: web.Request, seconds: float) -> None:
        """Stop reading for ``seconds``, or until the client hangs up or the store closes."""
        deadline = anyio.current_time() + seconds
        while (remaining := deadline - anyio.current_time()) > 0:
            transport = request.transport
            if transport is None or transport.is_closing() or self._closing:
                return
            await anyio.sleep(min(_STALL_POLL, remaining))

    async def _receive(self, content: StreamReader, target: _Target) -> tuple[bytes, Path | None]:
        """Stream the body into a temp file (or nowhere); return its MD5 digest and the file."""
        tmp = None if self.discard else self._new_tmp_path()
        sink = _Sink(tmp)
        try:
            if target.size <= _INLINE_LIMIT:
                while sink.size < target.size:
                    chunk = await self._read_chunk(content)
                    if not chunk:
                        raise _ClientGoneError
                    sink.feed((chunk,))
            else:
                await self._pipe(content, target.size, sink)
                if sink.size < target.size:
                    raise _ClientGoneError
            digest = sink.close()
            if target.content_md5 is not None:
                _check_content_md5(target.content_md5, digest)
        except BaseException:
            sink.discard()
            raise
        return digest, tmp

    async def _pipe(self, content: StreamReader, size: int, sink: _Sink) -> None:
        """Read batches on the loop while a worker thread hashes and writes the previous one."""
        send, receive = anyio.create_memory_object_stream[list[bytes]](1)
        async with anyio.create_task_group() as tg:
            tg.start_soon(_consume, receive, sink)
            async with send:
                received = 0
                batch: list[bytes] = []
                batch_size = 0
                while received < size:
                    try:
                        chunk = await self._read_chunk(content)
                    except _ClientGoneError:
                        break
                    if not chunk:
                        break
                    received += len(chunk)
                    batch.append(chunk)
                    batch_size += len(chunk)
                    if batch_size >= _BATCH:
                        await send.send(batch)
                        batch, batch_size = [], 0
                if batch:
                    await send.send(batch)

    def _commit(self, target: _Target, digest: bytes, tmp: Path | None) -> str:
        """Make a fully received body visible (atomically); return its quoted ETag."""
        if target.upload_id is not None:
            upload = self._uploads.get(target.upload_id)
            if upload is None or upload.completing:  # aborted or completed meanwhile
                if tmp is not None:
                    tmp.unlink(missing_ok=True)
                raise BlobError("NoSuchUpload", _NO_SUCH_UPLOAD)
            if tmp is not None:
                tmp.replace(self._part_file(target.upload_id, target.part_number))
            part = _Part(number=target.part_number, size=target.size, digest=digest)
            upload.parts[target.part_number] = part
        else:
            if tmp is not None:
                tmp.replace(self._object_file(target.key))
            self._objects[target.key] = StoredObject(
                key=target.key, size=target.size, etag=_quoted(digest.hex()), md5=digest.hex()
            )
        self._stats_bytes_stored += target.size
        return _quoted(digest.hex())

    def _error(
        self, error: BlobError, request_id: str, headers: Mapping[str, str] | None = None
    ) -> web.Response:
        self._stats_responses[error.status] += 1
        self._stats_errors[error.code] += 1
        return web.Response(
            status=error.status,
            body=error_body(error.code, error.message, request_id),
            content_type="application/xml",
            headers={"x-amz-request-id": request_id, **(headers or {})},
        )


_NO_SUCH_UPLOAD: Final = (
    "The specified upload does not exist. The upload ID may be invalid, or the upload may have "
    "been aborted or completed."
)


async def _consume(receive: ObjectReceiveStream[list[bytes]], sink: _Sink) -> None:
    async with receive:
        async for batch in receive:
            await anyio.to_thread.run_sync(sink.feed, batch)


def _check_content_md5(header: str, digest: bytes) -> None:
    try:
        claimed = base64.b64decode(header.strip(), validate=True)
    except (binascii.Error, ValueError):
        claimed = b""
    if len(claimed) != len(digest):
        raise BlobError("InvalidDigest", "The Content-MD5 you specified was invalid.")
    if not hmac.compare_digest(claimed, digest):
        raise BlobError(
            "BadDigest", "The Content-MD5 you specified did not match what we received."
        )
