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
- a PUT that makes no progress (no bytes written, no response) for ``stall_timeout`` seconds
  is cancelled and reported as transient;
- every failure becomes an ``AttemptFailed`` carrying a retry ``Verdict``; messages are
  redacted (no URL query strings, no credentials).
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
import anyio
from aiohttp.abc import AbstractStreamWriter

from engine.errors import InputError, SourceChangedError, SourceError
from engine.models import PartRequest, PartSpec
from engine.redact import redact
from engine.retry import Verdict, classify_response, parse_s3_error
from engine.source import read_chunk

__all__ = ["AttemptFailed", "PutOutcome", "RangeBody", "put_range"]

_MAX_ERROR_BODY = 64 * 1024
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
    ``md5=False`` skips hashing."""

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
    ) -> None:
        super().__init__(None, content_type=content_type)
        self._fd = fd
        self._part = part
        self._chunk = chunk_size
        self._on_progress = on_progress
        self._size = part.size
        self._zero_copy = zero_copy
        self.hashing = md5
        self.md5 = hashlib.md5(usedforsecurity=False)
        self.sent = 0
        self.used_sendfile = False
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


def _transport_reason(exc: BaseException) -> str:
    name = type(exc).__name__
    text = str(exc).strip()
    return redact(f"{name}: {text}" if text else name)


async def put_range(
    session: aiohttp.ClientSession,
    request: PartRequest,
    fd: int,
    part: PartSpec,
    *,
    chunk_size: int,
    stall_timeout: float,
    on_progress: Callable[[int], None],
    body_out: list[RangeBody] | None = None,
    md5: bool = True,
    zero_copy: bool = True,
) -> PutOutcome:
    """Send one part; return its ETag and MD5, or raise ``AttemptFailed`` / ``InputError``.

    ``body_out`` receives the body so the caller can read ``sent`` after a failure.
    ``md5=False`` skips hashing (``PutOutcome.md5`` is then ``""``); ``zero_copy=False``
    forbids the ``sendfile(2)`` path."""
    with anyio.CancelScope(deadline=anyio.current_time() + stall_timeout) as stall:

        def progress(n: int) -> None:
            stall.deadline = anyio.current_time() + stall_timeout
            on_progress(n)

        headers = {k: v for k, v in request.headers}
        content_type = next(
            (v for k, v in request.headers if k.lower() == "content-type"),
            "application/octet-stream",
        )
        body = RangeBody(
            fd,
            part,
            chunk_size=chunk_size,
            on_progress=progress,
            content_type=content_type,
            md5=md5,
            zero_copy=zero_copy,
        )
        if body_out is not None:
            body_out.append(body)
        try:
            async with session.request(
                request.method, request.url, data=body, headers=headers
            ) as resp:
                payload = await resp.content.read(_MAX_ERROR_BODY)
                status = resp.status
                etag = resp.headers.get("ETag", "")
                retry_after = resp.headers.get("Retry-After")
        except InputError:
            raise
        except Exception as exc:  # connection errors; aiohttp may wrap a body failure in anything
            if body.error is not None:
                raise body.error from None
            raise AttemptFailed(Verdict("transient", _transport_reason(exc))) from exc
    if stall.cancelled_caught:
        raise AttemptFailed(Verdict("transient", f"stalled: no progress for {stall_timeout:g} s"))
    return _outcome(status, payload, etag, retry_after, body)


def _outcome(
    status: int, payload: bytes, etag: str, retry_after: str | None, body: RangeBody
) -> PutOutcome:
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
    if body.sent != body.size:
        raise AttemptFailed(Verdict("transient", "body not fully sent"))
    return PutOutcome(etag=etag, md5=body.md5.hexdigest() if body.hashing else "")
