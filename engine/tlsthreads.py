"""HTTPS PUTs on blocking sockets in worker threads: TLS on every core the machine has.

asyncio's TLS transport runs Python for every chunk it encrypts (the memory BIO, the copy of
the ciphertext out of it, the transport's buffer), under the GIL. A blocking
``SSLSocket.sendall`` encrypts and sends a whole chunk with the GIL released, so PUTs in
worker threads spread TLS over the cores, as boto3 and ``requests`` do. ``TLSThreads`` is a
``engine.senders.DataLoops``: the scheduler hands it every HTTPS PUT, and keeps the window,
part URLs, retries, ETag checks and the journal on the caller's loop.

Rules:
- one thread per PUT in flight (its own limiter, the window's ceiling big), each PUT on a
  kept-alive ``http.client.HTTPSConnection`` from a pool per host, made with the uploader's
  TLS trust (``engine.client.tls_context``);
- the body is read in chunks into one buffer per PUT (``engine.source.read_into``, hashed on
  the way: ``sendall`` has copied a chunk out when it returns, so the buffer is refilled
  safely) and written with ``sendall``; ``Content-Length`` is always explicit; progress is
  relayed to the caller's loop (``call_soon_threadsafe``), all of it before ``put`` returns;
- every socket operation times out after ``stall_timeout`` (a stalled PUT is transient);
- the answer becomes what ``engine.transport.put_range`` returns (``outcome_of``): the same
  ``PutOutcome``, the same ``AttemptFailed`` verdicts, an untrusted certificate fatal at once;
- a cancelled caller stops the thread (a flag checked per chunk, and the socket shut down so
  that a blocked write returns) and waits until it has ended: the file descriptor is shared.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import http.client
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import anyio

from engine.models import PartRequest, PartSpec
from engine.retry import INTEGRITY_HEADERS, Verdict
from engine.source import read_into
from engine.transport import (
    MAX_ANSWER_BODY,
    AttemptFailed,
    PutOutcome,
    check_put_size,
    headers_of,
    outcome_of,
    transport_reason,
    untrusted,
)

__all__ = ["TLSThreads"]

_Key = tuple[str, int]


class _Stopped(Exception):
    """The caller was cancelled: the thread stops sending."""


@dataclass(slots=True)
class _Job:
    request: PartRequest
    fd: int
    part: PartSpec
    chunk: int
    md5: bool
    progress: Callable[[int], None]
    stop: bool = False
    conn: http.client.HTTPSConnection | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def abort(self) -> None:
        """Stop the thread: no next chunk, and a blocked write or read returns at once."""
        with self.lock:
            self.stop = True
            sock = self.conn.sock if self.conn is not None else None
        if sock is not None:
            with contextlib.suppress(OSError):
                socket.socket.shutdown(sock, socket.SHUT_RDWR)


class TLSThreads:
    """HTTPS PUTs in worker threads (see the module docstring). ``tls``: the uploader's trust
    (``True``: the system's, ``False``: none, or a context); ``limit``: PUTs at once."""

    def __init__(self, *, tls: ssl.SSLContext | bool, limit: int, stall_timeout: float) -> None:
        self._trust = tls
        self._context: ssl.SSLContext | None = None
        self._limiter = anyio.CapacityLimiter(limit)
        self._timeout = stall_timeout
        self._idle: dict[_Key, list[http.client.HTTPSConnection]] = {}
        self._lock = threading.Lock()
        self.puts = 0  # PUTs sent (tests and the curious)

    def __repr__(self) -> str:
        idle = sum(len(v) for v in self._idle.values())
        return f"<TLSThreads limit={self._limiter.total_tokens} idle={idle} puts={self.puts}>"

    def takes(self, request: PartRequest) -> bool:
        return request.url[:6].lower() == "https:"

    async def put(
        self,
        request: PartRequest,
        fd: int,
        part: PartSpec,
        *,
        chunk_size: int,
        stall_timeout: float,
        on_progress: Callable[[int], None],
        md5: bool,
        tls: ssl.SSLContext | None,
    ) -> PutOutcome:
        check_put_size(request, part)
        loop = asyncio.get_running_loop()
        ended = anyio.Event()

        def progress(n: int) -> None:
            loop.call_soon_threadsafe(on_progress, n)

        job = _Job(request, fd, part, chunk_size, md5, progress)

        def work() -> PutOutcome:
            try:
                return self._send(job, tls)
            finally:
                loop.call_soon_threadsafe(ended.set)

        try:
            return await anyio.to_thread.run_sync(
                work, limiter=self._limiter, abandon_on_cancel=True
            )
        except BaseException:
            job.abort()
            with anyio.CancelScope(shield=True):
                await ended.wait()  # the thread has let go of the file descriptor
            raise

    async def aclose(self) -> None:
        with self._lock:
            conns = [c for pool in self._idle.values() for c in pool]
            self._idle.clear()
        for c in conns:
            c.close()

    # ---- in the worker thread ---------------------------------------------------------------

    def _ssl(self, tls: ssl.SSLContext | None) -> ssl.SSLContext:
        if tls is not None:
            return tls
        if self._context is None:
            if isinstance(self._trust, ssl.SSLContext):
                self._context = self._trust
            elif self._trust:
                self._context = ssl.create_default_context()
            else:
                # verify_tls=False (--insecure): the caller asked for no checks, and was warned
                unverified = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                unverified.check_hostname = False
                unverified.verify_mode = ssl.CERT_NONE
                self._context = unverified
        return self._context

    def _connection(self, key: _Key, tls: ssl.SSLContext | None) -> http.client.HTTPSConnection:
        with self._lock:
            pool = self._idle.get(key)
            if pool and tls is None:
                return pool.pop()
        return http.client.HTTPSConnection(
            key[0], key[1], timeout=self._timeout, context=self._ssl(tls)
        )

    def _keep(self, key: _Key, conn: http.client.HTTPSConnection) -> None:
        with self._lock:
            self._idle.setdefault(key, []).append(conn)

    def _send(self, job: _Job, tls: ssl.SSLContext | None) -> PutOutcome:
        url = urlsplit(job.request.url)
        key = (url.hostname or "", url.port or 443)
        conn = self._connection(key, tls)
        with job.lock:
            job.conn = conn
            if job.stop:
                conn.close()
                raise _Stopped
        keep = False
        try:
            query = f"?{url.query}" if url.query else ""
            outcome, keep = self._exchange(conn, job, url.path + query)
            self.puts += 1
            return outcome
        except ssl.SSLCertVerificationError as exc:  # no retry makes it trusted
            why = exc.verify_message or type(exc).__name__
            raise AttemptFailed(Verdict("fatal", untrusted(key[0], why))) from exc
        except (OSError, http.client.HTTPException) as exc:  # source errors are not these
            if job.stop:
                raise _Stopped from exc
            raise AttemptFailed(Verdict("transient", transport_reason(exc))) from exc
        finally:
            if keep and not job.stop:
                self._keep(key, conn)
            else:
                conn.close()

    def _exchange(
        self, conn: http.client.HTTPSConnection, job: _Job, target: str
    ) -> tuple[PutOutcome, bool]:
        """Send the request and read the answer; (its outcome, whether to keep the connection)."""
        req, part = job.request, job.part
        headers, content_type = headers_of(req)
        if not any(name.lower() == "content-type" for name in headers):
            headers["Content-Type"] = content_type
        headers["Content-Length"] = str(part.size)
        conn.putrequest(req.method, target, skip_accept_encoding=True)
        for name, value in headers.items():
            conn.putheader(name, value)
        conn.endheaders()
        digest = hashlib.md5(usedforsecurity=False) if job.md5 else None
        buf = memoryview(bytearray(min(job.chunk, max(part.size, 1))))
        offset, left, sent = part.offset, part.size, 0
        while left > 0:
            if job.stop:
                raise _Stopped
            n = min(len(buf), left)
            read_into(job.fd, buf[:n], offset, digest)
            conn.send(buf[:n])
            offset, left, sent = offset + n, left - n, sent + n
            job.progress(n)
        resp = conn.getresponse()
        payload = resp.read(MAX_ANSWER_BODY)
        drained = resp.read(1) == b""
        kept = {h: resp.headers[h] for h in INTEGRITY_HEADERS if h in resp.headers}
        outcome = outcome_of(
            resp.status,
            payload,
            resp.headers.get("ETag", ""),
            resp.headers.get("Retry-After"),
            sent=sent,
            size=part.size,
            md5=digest.hexdigest() if digest is not None else "",
            headers=kept,
        )
        return outcome, drained and not resp.will_close
