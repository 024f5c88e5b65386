"""Request bodies: read chunk by chunk, hashed and written on the way, never buffered whole.

Rules this module keeps:

* **Bodies are streamed, never buffered whole.** Each body is read chunk by chunk, MD5-hashed (and
  fed to the storage mode's checksum, if it has one: Azure's CRC-64) and written to a temp file;
  batches of about 1 MiB are hashed and written in worker threads while the next batch is read,
  so memory per connection is a few MiB whatever the part size. Bodies up to 256 KiB are hashed
  on the event loop (no thread hop).
* **A short body stores nothing.** A body that ends before ``Content-Length`` bytes (client gone,
  reset) raises :class:`ClientGoneError` and its temp file is removed; so does a body whose
  ``Content-MD5`` is malformed (400 ``InvalidDigest``) or does not match (400 ``BadDigest``).
* A write error (disk full, …) is kept and reported once the body is read, as ``InternalError``.
* Every body byte read is counted in ``bytes_received``, including drained and cut-off bodies.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Sequence
from pathlib import Path
from typing import Final, Protocol

import anyio
import anyio.to_thread
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestPayloadError
from anyio.abc import ObjectReceiveStream

from engine.sandbox.blobstore.errors import BlobError
from engine.sandbox.blobstore.records import KiB, MiB, PutTarget
from engine.sandbox.blobstore.stats import Counters

__all__ = ["BodyReader", "ClientGoneError"]

_INLINE_LIMIT: Final = 256 * KiB  # bodies up to this size are hashed on the loop, no thread hop
_BATCH: Final = 1 * MiB  # bytes handed to a worker thread at a time


class Checksum(Protocol):
    """A running checksum fed with the body's chunks (e.g. :class:`.crc64.Crc64`)."""

    def update(self, data: bytes) -> None: ...


class ClientGoneError(Exception):
    """The body ended before ``Content-Length`` bytes: the client went away."""


class _Sink:
    """Hashes (and unless discarding, writes) one body, from one thread at a time.

    A write error is kept in ``error`` rather than raised, so the reader can drain and report it.
    """

    def __init__(self, path: Path | None, checksum: Checksum | None) -> None:
        self.path = path
        self.size = 0
        self.error: OSError | None = None
        self._md5 = hashlib.md5(usedforsecurity=False)
        self._checksum = checksum
        self._file = path.open("wb") if path is not None else None

    def feed(self, chunks: Sequence[bytes]) -> None:
        if self.error is not None:
            return
        try:
            for chunk in chunks:
                self._md5.update(chunk)
                if self._checksum is not None:
                    self._checksum.update(chunk)
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


class BodyReader:
    """Reads one request body, counting what arrives in ``counters.bytes_received``."""

    def __init__(self, content: StreamReader, counters: Counters) -> None:
        self._content = content
        self._counters = counters

    async def read_chunk(self) -> bytes:
        """The next chunk (``b""`` at the end); ClientGoneError if the connection broke."""
        try:
            chunk = await self._content.readany()
        except (OSError, RequestPayloadError):
            raise ClientGoneError from None
        self._counters.bytes_received += len(chunk)
        return chunk

    async def drain(self, at_least: int) -> None:
        """Read and drop body bytes until ``at_least`` have arrived (or the body ends)."""
        received = 0
        while received < at_least:
            chunk = await self.read_chunk()
            if not chunk:
                raise ClientGoneError
            received += len(chunk)

    async def receive(
        self, target: PutTarget, tmp: Path | None, checksum: Checksum | None = None
    ) -> bytes:
        """Stream the body into ``tmp`` (or nowhere), feeding ``checksum`` too; return its MD5
        digest."""
        sink = _Sink(tmp, checksum)
        try:
            if target.size <= _INLINE_LIMIT:
                while sink.size < target.size:
                    chunk = await self.read_chunk()
                    if not chunk:
                        raise ClientGoneError
                    sink.feed((chunk,))
            else:
                await self._pipe(target.size, sink)
                if sink.size < target.size:
                    raise ClientGoneError
            digest = sink.close()
            if target.content_md5 is not None:
                _check_content_md5(target.content_md5, digest)
        except BaseException:
            sink.discard()
            raise
        return digest

    async def _pipe(self, size: int, sink: _Sink) -> None:
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
                        chunk = await self.read_chunk()
                    except ClientGoneError:
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
