"""One PUT of one byte range: the data path, and the one place aiohttp errors are translated.

Rules:
- the body is streamed, never held whole. Two ways, chosen per connection:
  * zero-copy: for a body of at least ``_ZERO_COPY_MIN`` bytes on a plain-TCP connection of
    a loop that implements ``loop.sendfile`` (the stock asyncio loop; not uvloop, not TLS)
    the range goes from the page cache to the socket
    with ``sendfile(2)`` in slices of ``_SENDFILE_SLICE`` bytes, while a worker thread hashes
    the same range (MD5) from the page cache through one reused buffer; both must finish;
  * copy: otherwise ``chunk_size`` bytes are read (in a worker thread, hashed on the way) and
    written at a time; a fresh ``bytes`` per chunk, never refilled while a transport holds it;
  memory per PUT is about two chunks either way;
- ``md5=False`` skips hashing (the caller will not compare ETags); ``PutOutcome.md5`` is then
  empty;
- ``Content-Length`` is always explicit (a presigned PUT refuses chunked bodies);
- a PUT to Azure Blob storage (the request carries ``x-ms-blob-type``, as Speckle's
  ``additionalRequestHeaders`` say) holds at most ``AZURE_MAX_PUT`` bytes (Put Blob's limit,
  5,000 MiB): a larger body is refused with ``TooLargeError`` before a byte is sent; any 2xx
  (Azure answers 201 Created) is a success;
- the answer's ETag is returned exactly as sent, with the headers that say what it can be
  checked against (``engine.retry.INTEGRITY_HEADERS``); the caller decides;
- a PUT that makes no progress (no bytes written, no response) for ``stall_timeout`` seconds
  is cancelled and reported as transient;
- a ``Throttle`` (``--bwlimit``, one per process) caps the send rate of every PUT sharing it:
  a throttled body takes the copy path, in pieces of at most a tenth of a second's worth;
- every failure becomes an ``AttemptFailed`` carrying a retry ``Verdict``; messages are
  redacted (no URL query strings, no credentials).
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Final

import aiohttp
import anyio
from aiohttp.abc import AbstractStreamWriter

from engine.errors import InputError, SourceChangedError, SourceError, TooLargeError
from engine.models import PartRequest, PartSpec
from engine.redact import redact
from engine.retry import INTEGRITY_HEADERS, Verdict, classify_response, parse_s3_error
from engine.source import read_chunk
from engine.units import human_bytes

__all__ = [
    "AZURE_MAX_PUT",
    "MAX_ANSWER_BODY",
    "AttemptFailed",
    "PutOutcome",
    "RangeBody",
    "Throttle",
    "check_put_size",
    "headers_of",
    "outcome_of",
    "put_range",
    "transport_reason",
    "untrusted",
]

#: the largest body Azure Blob storage takes in one Put Blob (service version 2019-12-12 on)
AZURE_MAX_PUT: Final = 5000 * 1024 * 1024

#: the most of an answer's body a PUT reads (an error document; a success has none)
MAX_ANSWER_BODY = 64 * 1024
# sendfile(2) slice: progress (and the stall deadline) moves once per slice; ~2-4 ms of work.
_SENDFILE_SLICE = 8 * 1024 * 1024
# reused read buffer of the hashing thread on the zero-copy path
_HASH_BUFFER = 1024 * 1024
_HAS_SENDFILE = hasattr(os, "sendfile")
# Smaller bodies take the copy path: one or two chunks, where sendfile's setup (a hashing
# thread, pausing the transport) buys nothing. Every S3 part but a last one is >= 5 MiB.
_ZERO_COPY_MIN = 4 * 1024 * 1024


class AttemptFailed(Exception):
    """One attempt at a PUT failed; ``verdict`` says whether and how to retry."""

    def __init__(self, verdict: Verdict) -> None:
        super().__init__(verdict.reason)
        self.verdict = verdict


@dataclass(frozen=True, slots=True)
class PutOutcome:
    etag: str  # exactly as returned, quotes included
    md5: str  # hex digest of the bytes sent (of the range, on the zero-copy path); "" if off
    #: the answer's ``INTEGRITY_HEADERS`` that were present, names in lower case
    headers: Mapping[str, str] = field(default_factory=dict)


class Throttle:
    """A send-rate cap shared by every PUT of one process: at most ``rate`` bytes per second
    on average, first come first served, with no burst beyond one ``piece`` (a tenth of a
    second's worth, at least 4 KiB). ``reserve`` decides (no I/O); ``take`` waits."""

    def __init__(self, rate: float) -> None:
        if not rate > 0:
            raise ValueError(f"a send rate must be positive, got {rate!r}")
        self.rate = float(rate)
        self.piece = max(4096, int(rate / 10))
        self._free_at = 0.0  # when every byte reserved so far will have gone

    def __repr__(self) -> str:
        return f"<Throttle {self.rate:.0f} B/s piece={self.piece}>"

    def reserve(self, n: int, now: float) -> float:
        """Book ``n`` bytes at ``now`` (seconds, monotonic); return how long to wait first."""
        start = max(now, self._free_at)
        self._free_at = start + n / self.rate
        return start - now

    async def take(self, n: int) -> None:
        """Wait until ``n`` more bytes may be sent."""
        delay = self.reserve(n, anyio.current_time())
        if delay > 0:
            await anyio.sleep(delay)


def check_put_size(request: PartRequest, part: PartSpec) -> None:
    """Refuse, before sending, a body larger than the store behind ``request`` takes in one
    PUT: Azure Blob storage (``x-ms-blob-type`` in the request) at most ``AZURE_MAX_PUT``."""
    azure = any(name.lower() == "x-ms-blob-type" for name, _ in request.headers)
    if azure and part.size > AZURE_MAX_PUT:
        raise TooLargeError(
            f"{human_bytes(part.size)} is more than Azure Blob storage takes in one upload "
            f"({human_bytes(AZURE_MAX_PUT)}, its Put Blob limit); this destination cannot "
            "hold the file"
        )


def _zero_copy_possible(transport: asyncio.BaseTransport | None) -> bool:
    """True when ``loop.sendfile`` can send natively on ``transport``: the stock loop, plain TCP."""
    if not _HAS_SENDFILE or transport is None or transport.is_closing():
        return False
    if transport.get_extra_info("sslcontext") is not None:
        return False
    if transport.get_extra_info("socket") is None:
        return False
    return isinstance(asyncio.get_running_loop(), asyncio.BaseEventLoop)


def hash_range(fd: int, offset: int, size: int, md5: hashlib._Hash, stop: list[bool]) -> None:
    """MD5 ``size`` bytes at ``offset`` through one reused buffer. Blocking: run it in a worker
    thread (``os.preadv`` and ``hashlib`` release the GIL). Stops early when ``stop[0]``."""
    buf = bytearray(min(_HASH_BUFFER, max(size, 1)))
    view = memoryview(buf)
    while size > 0 and not stop[0]:
        want = view[: min(len(buf), size)]
        try:
            n = os.preadv(fd, [want], offset)
        except OSError as exc:
            raise SourceError(f"read failed at offset {offset}: {exc.strerror}") from exc
        if n <= 0:
            raise SourceChangedError(
                f"file is shorter than planned (nothing to read at offset {offset}); "
                "it changed while uploading — rerun to upload the new contents"
            )
        md5.update(want[:n])
        offset += n
        size -= n


class RangeBody(aiohttp.Payload):
    """A request body streamed from ``[part.offset, part.end)`` of an open file.

    ``zero_copy`` allows the ``sendfile(2)`` path where the connection permits it;
    ``md5=False`` skips hashing; ``throttle`` caps the rate (and takes the copy path)."""

    def __init__(
        self,
        fd: int,
        part: PartSpec,
        *,
        chunk_size: int,
        on_progress: Callable[[int], None],
        content_type: str = "application/octet-stream",
        md5: bool = True,
        zero_copy: bool = True,
        throttle: Throttle | None = None,
    ) -> None:
        super().__init__(None, content_type=content_type)
        self._fd = fd
        self._part = part
        self._chunk = chunk_size
        self._on_progress = on_progress
        self._size = part.size
        self._zero_copy = zero_copy and throttle is None
        self._throttle = throttle
        if throttle is not None:
            self._chunk = min(chunk_size, throttle.piece)
        self.hashing = md5
        self.md5 = hashlib.md5(usedforsecurity=False)
        self.sent = 0
        self.used_sendfile = False
        self.planned = part.size  # the bytes this body must send
        self.error: BaseException | None = None  # a source failure, kept past aiohttp's wrapping

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        raise TypeError("a file range body is binary")

    async def write(self, writer: AbstractStreamWriter) -> None:
        await self.write_with_length(writer, None)

    async def write_with_length(
        self, writer: AbstractStreamWriter, content_length: int | None
    ) -> None:
        if self.sent or self._consumed:
            # aiohttp re-sent the request on a new connection (it does so once for idempotent
            # methods on a dropped keep-alive connection): start the range over, hash afresh.
            self._on_progress(-self.sent)
            self.sent = 0
            self.md5 = hashlib.md5(usedforsecurity=False)
        self._consumed = True
        offset, remaining = self._part.offset, self._part.size
        if content_length is not None:
            remaining = min(remaining, content_length)
        try:
            if (
                self._zero_copy
                and remaining >= _ZERO_COPY_MIN
                and isinstance(writer, aiohttp.http_writer.StreamWriter)
                and _zero_copy_possible(writer.transport)
            ):
                await self._write_zero_copy(writer, offset, remaining)
                return
            md5 = self.md5 if self.hashing else None
            while remaining > 0:
                n = min(self._chunk, remaining)
                # A fresh bytes object per chunk: never refilled while a transport holds it.
                data = await anyio.to_thread.run_sync(read_chunk, self._fd, n, offset, md5)
                if self._throttle is not None:
                    await self._throttle.take(n)
                await writer.write(data)
                offset += n
                remaining -= n
                self.sent += n
                self._on_progress(n)
        except InputError as exc:
            self.error = exc
            raise

    async def _write_zero_copy(
        self, writer: aiohttp.http_writer.StreamWriter, offset: int, size: int
    ) -> None:
        loop = asyncio.get_running_loop()
        stop = [False]
        writer.send_headers()
        transport = writer.transport
        assert transport is not None  # checked by _zero_copy_possible
        # A raw, unbuffered view of the shared descriptor: loop.sendfile only reads its fileno
        # (sendfile(2) takes explicit offsets) and seeks it afterwards, which no one else uses.
        with io.FileIO(self._fd, "rb", closefd=False) as file:

            async def send() -> None:
                pos, left = offset, size
                while left > 0:
                    n = min(_SENDFILE_SLICE, left)
                    done = await loop.sendfile(transport, file, pos, n, fallback=False)
                    if done != n:
                        raise SourceChangedError(
                            f"file is shorter than planned (sent {done} of {n} bytes at offset "
                            f"{pos}); it changed while uploading — rerun to upload the new "
                            "contents"
                        )
                    self.used_sendfile = True
                    pos += n
                    left -= n
                    self.sent += n
                    self._on_progress(n)

            if not self.hashing:
                await send()
                return
            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(
                        anyio.to_thread.run_sync, hash_range, self._fd, offset, size, self.md5, stop
                    )
                    await send()
            except BaseExceptionGroup as group:
                raise group.exceptions[0] from None
            finally:
                stop[0] = True


def _untrusted(exc: aiohttp.ClientConnectorCertificateError) -> str:
    cause = exc.certificate_error
    return untrusted(exc.host, getattr(cause, "verify_message", "") or type(cause).__name__)


def untrusted(host: str, why: str) -> str:
    """Why a PUT to ``host`` failed at once: its certificate is not trusted (``why``)."""
    return redact(
        f"the TLS certificate of {host} is not trusted ({why}): give its CA bundle "
        "(UploadConfig.ca_bundle / --ca-bundle, or SSL_CERT_FILE / SSL_CERT_DIR)"
    )


def transport_reason(exc: BaseException) -> str:
    """A connection failure in words, redacted (a transient verdict's reason)."""
    name = type(exc).__name__
    text = str(exc).strip()
    return redact(f"{name}: {text}" if text else name)


def headers_of(request: PartRequest) -> tuple[dict[str, str], str]:
    """The request's headers, and its content type (``application/octet-stream`` if none)."""
    kinds = (v for k, v in request.headers if k.lower() == "content-type")
    return dict(request.headers), next(kinds, "application/octet-stream")


async def put_range(
    session: aiohttp.ClientSession,
    request: PartRequest,
    fd: int,
    part: PartSpec,
    *,
    chunk_size: int,
    stall_timeout: float,
    on_progress: Callable[[int], None],
    md5: bool = True,
    zero_copy: bool = True,
    tls: ssl.SSLContext | None = None,
    throttle: Throttle | None = None,
) -> PutOutcome:
    """Send one part; return its ETag and MD5, or raise ``AttemptFailed`` / ``InputError``.
    ``md5=False`` skips hashing (``PutOutcome.md5`` is then ``""``); ``zero_copy=False`` forbids
    ``sendfile(2)``; ``tls`` replaces the session's TLS context (a destination's own CA bundle);
    ``throttle`` caps the send rate. Bytes sent are reported through ``on_progress``."""
    check_put_size(request, part)
    with anyio.CancelScope(deadline=anyio.current_time() + stall_timeout) as stall:

        def progress(n: int) -> None:
            stall.deadline = anyio.current_time() + stall_timeout
            on_progress(n)

        headers, content_type = headers_of(request)
        body = RangeBody(
            fd,
            part,
            chunk_size=chunk_size,
            on_progress=progress,
            content_type=content_type,
            md5=md5,
            zero_copy=zero_copy,
            throttle=throttle,
        )
        try:
            async with session.request(
                request.method,
                request.url,
                data=body,
                headers=headers,
                ssl=True if tls is None else tls,  # True: the session's own
            ) as resp:
                payload = await resp.content.read(MAX_ANSWER_BODY)
                status = resp.status
                etag = resp.headers.get("ETag", "")
                retry_after = resp.headers.get("Retry-After")
                kept = {h: resp.headers[h] for h in INTEGRITY_HEADERS if h in resp.headers}
        except InputError:
            raise
        except aiohttp.ClientConnectorCertificateError as exc:  # no retry makes it trusted
            raise AttemptFailed(Verdict("fatal", _untrusted(exc))) from exc
        except Exception as exc:  # connection errors; aiohttp may wrap a body failure in anything
            if body.error is not None:
                raise body.error from None
            raise AttemptFailed(Verdict("transient", transport_reason(exc))) from exc
    if stall.cancelled_caught:
        raise AttemptFailed(Verdict("transient", f"stalled: no progress for {stall_timeout:g} s"))
    return _outcome(status, payload, etag, retry_after, body, kept)


def _outcome(
    status: int,
    payload: bytes,
    etag: str,
    retry_after: str | None,
    body: RangeBody,
    headers: Mapping[str, str],
) -> PutOutcome:
    md5 = body.md5.hexdigest() if body.hashing else ""
    return outcome_of(
        status,
        payload,
        etag,
        retry_after,
        sent=body.sent,
        size=body.planned,
        md5=md5,
        headers=headers,
    )


def outcome_of(
    status: int,
    payload: bytes,
    etag: str,
    retry_after: str | None,
    *,
    sent: int,
    size: int,
    md5: str,
    headers: Mapping[str, str],
) -> PutOutcome:
    """What an answer to a PUT of ``size`` bytes (``sent`` of them sent, their MD5 ``md5``)
    means: its ``PutOutcome``, or ``AttemptFailed`` with the verdict. Every sender uses it."""
    if not 200 <= status < 300:
        raise AttemptFailed(classify_response(status, payload, retry_after))
    if b"<Error>" in payload[:512]:
        # Some stores answer 200 with an error document; treat it like the status it names,
        # and say what really came back.
        code, message = parse_s3_error(payload)
        verdict = classify_response(403 if code == "AccessDenied" else 500, payload)
        detail = f"HTTP {status} with an S3 error document: {code or 'no code'}"
        detail += f": {message}" if message else ""
        raise AttemptFailed(Verdict(verdict.kind, redact(detail), verdict.retry_after))
    if not etag:
        raise AttemptFailed(Verdict("fatal", f"HTTP {status} without an ETag header"))
    if sent != size:
        raise AttemptFailed(Verdict("transient", "body not fully sent"))
    return PutOutcome(etag=etag, md5=md5, headers=headers)
