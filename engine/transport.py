"""One PUT of one byte range: the data path, and the one place aiohttp errors are translated.

Rules:
- the body is streamed: ``chunk_size`` bytes are read (in a worker thread, hashed on the way)
  and written at a time; the part is never held whole, so memory per PUT is about two chunks;
- ``Content-Length`` is always explicit (a presigned PUT refuses chunked bodies);
- a PUT that makes no progress (no bytes written, no response) for ``stall_timeout`` seconds
  is cancelled and reported as transient;
- every failure becomes an ``AttemptFailed`` carrying a retry ``Verdict``; messages are
  redacted (no URL query strings, no credentials).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
import anyio
from aiohttp.abc import AbstractStreamWriter

from engine.errors import InputError
from engine.models import PartRequest, PartSpec
from engine.redact import redact
from engine.retry import Verdict, classify_response, parse_s3_error
from engine.source import read_chunk

__all__ = ["AttemptFailed", "PutOutcome", "RangeBody", "put_range"]

_MAX_ERROR_BODY = 64 * 1024


class AttemptFailed(Exception):
    """One attempt at a PUT failed; ``verdict`` says whether and how to retry."""

    def __init__(self, verdict: Verdict) -> None:
        super().__init__(verdict.reason)
        self.verdict = verdict


@dataclass(frozen=True, slots=True)
class PutOutcome:
    etag: str  # exactly as returned, quotes included
    md5: str  # hex digest of the bytes sent


class RangeBody(aiohttp.Payload):
    """A request body streamed from ``[part.offset, part.end)`` of an open file."""

    def __init__(
        self,
        fd: int,
        part: PartSpec,
        *,
        chunk_size: int,
        on_progress: Callable[[int], None],
        content_type: str = "application/octet-stream",
    ) -> None:
        super().__init__(None, content_type=content_type)
        self._fd = fd
        self._part = part
        self._chunk = chunk_size
        self._on_progress = on_progress
        self._size = part.size
        self.md5 = hashlib.md5(usedforsecurity=False)
        self.sent = 0
        self.error: BaseException | None = None  # a source failure, kept past aiohttp's wrapping

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        raise TypeError("a file range body is binary")

    async def write(self, writer: AbstractStreamWriter) -> None:
        await self.write_with_length(writer, None)

    async def write_with_length(
        self, writer: AbstractStreamWriter, content_length: int | None
    ) -> None:
        if self._consumed:
            raise RuntimeError("a RangeBody is sent once; build a new one to retry")
        self._consumed = True
        offset, remaining = self._part.offset, self._part.size
        if content_length is not None:
            remaining = min(remaining, content_length)
        try:
            while remaining > 0:
                n = min(self._chunk, remaining)
                # A fresh bytes object per chunk: never refilled while a transport holds it.
                data = await anyio.to_thread.run_sync(read_chunk, self._fd, n, offset, self.md5)
                await writer.write(data)
                offset += n
                remaining -= n
                self.sent += n
                self._on_progress(n)
        except InputError as exc:
            self.error = exc
            raise


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
) -> PutOutcome:
    """Send one part; return its ETag and MD5, or raise ``AttemptFailed`` / ``InputError``.

    ``body_out`` receives the body so the caller can read ``sent`` after a failure."""
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
            fd, part, chunk_size=chunk_size, on_progress=progress, content_type=content_type
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
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            if body.error is not None:
                raise body.error from None
            raise AttemptFailed(Verdict("transient", _transport_reason(exc))) from exc
        except InputError:
            raise
        except Exception as exc:  # aiohttp may wrap a body failure in anything
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
        # Some stores answer 200 with an error document; treat it like the status it names.
        code, _ = parse_s3_error(payload)
        raise AttemptFailed(classify_response(403 if code == "AccessDenied" else 500, payload))
    if not etag:
        raise AttemptFailed(Verdict("fatal", f"HTTP {status} without an ETag header"))
    if body.sent != body.size:
        raise AttemptFailed(Verdict("transient", "body not fully sent"))
    return PutOutcome(etag=etag, md5=body.md5.hexdigest())
