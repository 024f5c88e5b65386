"""Data event loops in threads: HTTPS PUTs on more than one core.

On one event loop every byte of every HTTPS PUT is encrypted, and copied in and out of the
TLS layer, in that loop's thread (reads and MD5 already run in worker threads): TLS caps it
near one core however many connections are open. ``DataLoops`` runs
``engine.transport.put_range`` on N more loops, each in a thread of its own; OpenSSL and
hashlib release the GIL while they work, so TLS proceeds on several cores at once.

Rules:
- only the bytes move: the caller's loop keeps the scheduler, the limiter (one budget: the
  engine holds a slot for every PUT sent here), part URLs, retries, ETag checks and the
  journal. ``put`` keeps ``put_range``'s contract exactly: a ``PutOutcome``, or
  ``AttemptFailed`` / ``InputError`` with the same verdicts as on one loop;
- HTTPS only (``takes``): plain HTTP stays on the caller's loop, where ``sendfile(2)`` needs
  no more cores;
- each loop has its own ``aiohttp.ClientSession``, made like the Uploader's data pool
  (``data_session``: one TLS context, the same timeouts); their connection limits add up to
  ``connections`` (the budget), and a PUT goes to the loop with the most free connections;
- each loop reads and hashes chunks in at most ``_READ_THREADS`` worker threads (memory);
- progress is relayed to the caller's loop, coalesced (at most one relay pending per PUT),
  and all of it has arrived when ``put`` returns or raises;
- a cancelled caller cancels the remote PUT and returns (raising) only once its
  ``put_range`` has ended, which closes its connection: no byte of it can reach the wire
  afterwards, and it starts no new read of the file descriptor, which is the caller's, closed
  once the file is done. A read already in a worker thread when aiohttp cancelled its body
  writer may still finish later, as on one loop: what it reads is dropped, never sent;
- threads start with the first PUT taken (a plain-HTTP run starts none); ``aclose`` closes
  each session on its own loop (with the TLS close grace) and joins the threads;
- each loop is the stock asyncio loop: the library never picks a loop for its caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import ssl
import sys
import threading
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, Final

import aiohttp
import anyio

from engine.config import UploadConfig
from engine.models import PartRequest, PartSpec
from engine.transport import PutOutcome, put_range

__all__ = ["AUTO_LOOPS", "DataLoops", "connection_shares", "data_session", "loop_count"]

#: the most data loops ``data_loops=None`` runs (one per two cores up to this)
AUTO_LOOPS: Final = 4
#: seconds ``aclose`` waits for each thread to end once its loop was told to stop
_JOIN_TIMEOUT: Final = 10.0
#: worker threads a data loop reads and hashes chunks in. anyio's default, 40 per loop, lets
#: each loop's PUTs start a thread each, and each thread holds memory of its own (a malloc
#: arena): at 64 PUTs over HTTPS two loops peaked at 100-111 MiB, 90 with 4 threads each, as
#: fast. Four still hash (MD5, ~0.6 GB/s a thread) faster than one loop encrypts.
_READ_THREADS: Final = 4

# The standard library's loop, whatever event loop policy the caller installed (uvloop's, say).
if sys.platform == "win32":
    _stock_loop = asyncio.ProactorEventLoop
else:
    _stock_loop = asyncio.SelectorEventLoop

#: what a data loop runs for one PUT, given where to report progress
_Job = Callable[[Callable[[int], None]], Coroutine[Any, Any, PutOutcome]]


def _cpus() -> int:
    """Cores this process may run on (its affinity mask where the platform has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def loop_count(config: UploadConfig, cpus: int | None = None) -> int:
    """How many loops move HTTPS bytes: ``config.data_loops``, or one per two cores (at most
    ``AUTO_LOOPS``) when it is ``None`` (the ``Uploader`` then sends HTTPS through
    ``engine.tlsthreads`` instead, and asks this only for an explicit count); never more than
    ``config.budget`` (each loop needs a connection of its own). ``1`` means none: every PUT
    on the caller's loop.

    One per two cores, not one per core: on 2 cores, 2 loops moved 1 GiB over HTTPS no faster
    than one (0.63 vs 0.62 GB/s with 1 MiB chunks) and slower with small chunks (0.36 vs 0.51
    GB/s with 128 KiB), since the hashing threads, the caller's loop (and on loopback the
    server) need the other core."""
    wanted = config.data_loops or min(max(1, (cpus or _cpus()) // 2), AUTO_LOOPS)
    return max(1, min(wanted, config.budget))


def connection_shares(connections: int, loops: int) -> list[int]:
    """``connections`` split over ``loops`` as evenly as can be (the first ones get one more)."""
    if not 1 <= loops <= connections:
        raise ValueError(f"cannot share {connections} connections over {loops} loops")
    base, extra = divmod(connections, loops)
    return [base + (i < extra) for i in range(loops)]


def data_session(
    *,
    limit: int,
    tls: ssl.SSLContext | bool,
    connect_timeout: float,
    stall_timeout: float,
    trace_configs: Sequence[aiohttp.TraceConfig] = (),
) -> aiohttp.ClientSession:
    """A pool for PUT bodies on the running loop: at most ``limit`` connections, ``tls``
    (``engine.client.tls_context``), no total timeout (a part may take long), at most
    ``stall_timeout`` seconds between reads, bodies and answers passed as they are (no
    decompression, no User-Agent), and no silent re-send of a request whose kept-alive
    connection dropped: the engine retries parts itself, with backoff, a fresh URL and
    accounting (the flag is aiohttp's private one, set where it exists)."""
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=limit, limit_per_host=0, ssl=tls),
        timeout=aiohttp.ClientTimeout(
            total=None, sock_connect=connect_timeout, sock_read=stall_timeout
        ),
        auto_decompress=False,
        skip_auto_headers=("User-Agent",),
        trace_configs=list(trace_configs),
    )
    if hasattr(session, "_retry_connection"):
        session._retry_connection = False
    return session


@dataclass(frozen=True, slots=True)
class _Put:
    """One ``put_range`` to make on a data loop (everything but the pool and the progress)."""

    request: PartRequest
    fd: int
    part: PartSpec
    chunk_size: int
    stall_timeout: float
    md5: bool
    tls: ssl.SSLContext | None


class _Call:
    """One PUT on a data loop, seen from both sides: the data loop calls ``begin``,
    ``progress`` and ``cancel``; the caller's loop awaits ``outcome``."""

    def __init__(
        self, caller: asyncio.AbstractEventLoop, on_progress: Callable[[int], None]
    ) -> None:
        self._caller = caller
        self._on_progress = on_progress
        self._lock = threading.Lock()  # guards the two fields below, written by both threads
        self._pending = 0  # bytes reported on the data loop, not yet relayed
        self._relaying = False  # a relay is scheduled on the caller's loop
        self._hook_error: Exception | None = None  # on_progress raised: put raises it
        self._task: asyncio.Task[PutOutcome] | None = None  # the data loop's own
        self._ended: asyncio.Future[asyncio.Task[PutOutcome]] = caller.create_future()

    # ---- on the data loop ---------------------------------------------------------------

    def begin(self, job: _Job) -> None:
        # A task of the data loop's, owned by this call: the caller's side waits for it to
        # end whatever happens (outcome), so it never outlives the PUT it stands for.
        self._task = asyncio.get_running_loop().create_task(job(self.progress))
        self._task.add_done_callback(self._finished)

    def progress(self, n: int) -> None:
        with self._lock:
            self._pending += n
            if self._relaying:
                return
            self._relaying = True
        self._caller.call_soon_threadsafe(self._relay)

    def cancel(self) -> None:
        # ``begin`` ran before: both came through call_soon_threadsafe, in order
        if self._task is not None:
            self._task.cancel()

    def _finished(self, task: asyncio.Task[PutOutcome]) -> None:
        # after every relay this PUT scheduled: the caller's loop runs callbacks in order
        self._caller.call_soon_threadsafe(self._ended.set_result, task)

    # ---- on the caller's loop -----------------------------------------------------------

    def _relay(self) -> None:
        with self._lock:
            n, self._pending, self._relaying = self._pending, 0, False
        if n and self._hook_error is None:
            try:
                self._on_progress(n)
            except Exception as exc:  # raised by outcome once the PUT has ended
                self._hook_error = exc

    async def outcome(self, data_loop: asyncio.AbstractEventLoop) -> PutOutcome:
        """What the remote ``put_range`` returned or raised, once it has ended; cancelled,
        it cancels the remote PUT and returns (raising) only after that has ended too."""
        try:
            task = await asyncio.shield(self._ended)
        except asyncio.CancelledError:
            data_loop.call_soon_threadsafe(self.cancel)
            await self._wait_ended()
            self._retrieve(self._ended.result())
            raise
        if self._hook_error is not None:
            self._retrieve(task)
            raise self._hook_error
        if task.cancelled():
            raise RuntimeError("a data loop stopped while one of its PUTs was in flight")
        return task.result()

    async def _wait_ended(self) -> None:
        with anyio.CancelScope(shield=True):
            while not self._ended.done():
                # deaf to a second cancellation (a native task.cancel(), which anyio's
                # shield does not stop): the descriptor must outlive the remote PUT
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.shield(self._ended)

    @staticmethod
    def _retrieve(task: asyncio.Task[PutOutcome]) -> None:
        """Mark an outcome no one will read as read (no "exception was never retrieved")."""
        if not task.cancelled():
            task.exception()


class _Loop:
    """One data loop: a thread that runs a stock asyncio loop and, from its first PUT on, a
    pool of at most ``limit`` connections made on that loop and used only there."""

    def __init__(
        self, name: str, limit: int, pool: Callable[[int], aiohttp.ClientSession], grace: float
    ) -> None:
        self.limit = limit
        self.in_flight = 0  # PUTs running here (read and written on the caller's loop only)
        self.puts = 0  # PUTs begun here (idem)
        self.loop: asyncio.AbstractEventLoop = _stock_loop()
        self._pool = pool
        self._grace = grace
        self._session: aiohttp.ClientSession | None = None  # the data loop's only
        self._stop = asyncio.Event()  # bound to the data loop when it first waits
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    def __repr__(self) -> str:
        return f"<_Loop {self.thread.name} in_flight={self.in_flight}/{self.limit}>"

    def _run(self) -> None:
        with asyncio.Runner(loop_factory=lambda: self.loop) as runner:
            runner.run(self._serve())

    async def _serve(self) -> None:
        # the first step on this loop: before any PUT's (Runner schedules it first, or after
        # the begin callbacks already queued, whose tasks then step after it)
        anyio.to_thread.current_default_thread_limiter().total_tokens = _READ_THREADS
        await self._stop.wait()
        if self._session is not None:
            await self._session.close()
            # aiohttp closes an SSL transport without waiting for it (see engine.client)
            await asyncio.sleep(self._grace)

    async def _put(self, put: _Put, progress: Callable[[int], None]) -> PutOutcome:
        if self._session is None:
            self._session = self._pool(self.limit)
        return await put_range(
            self._session,
            put.request,
            put.fd,
            put.part,
            chunk_size=put.chunk_size,
            stall_timeout=put.stall_timeout,
            on_progress=progress,
            md5=put.md5,
            tls=put.tls,
        )

    async def put(self, put: _Put, on_progress: Callable[[int], None]) -> PutOutcome:
        """Make ``put`` on this loop; awaited on the caller's loop."""
        call = _Call(asyncio.get_running_loop(), on_progress)
        self.in_flight += 1
        self.puts += 1
        try:
            self.loop.call_soon_threadsafe(call.begin, functools.partial(self._put, put))
            return await call.outcome(self.loop)
        finally:
            self.in_flight -= 1

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self._stop.set)


class DataLoops:
    """``count`` data loops sharing ``connections`` (the engine's ``DataLoops``): HTTPS PUTs
    run on them, the rest stays on the caller's loop. ``tls``, ``connect_timeout``,
    ``stall_timeout`` and ``trace_configs`` make each loop's pool (``data_session``; the
    traces' callbacks then run on the data loops' threads); ``close_grace`` is how long a
    closed pool's TLS connections get to finish closing. Started by the first PUT taken,
    ended by ``aclose``."""

    def __init__(
        self,
        count: int,
        *,
        connections: int,
        tls: ssl.SSLContext | bool,
        connect_timeout: float,
        stall_timeout: float,
        close_grace: float,
        trace_configs: Sequence[aiohttp.TraceConfig] = (),
    ) -> None:
        if count < 2:
            raise ValueError(f"data loops are for two or more loops, got {count}")
        self._shares = connection_shares(connections, count)
        self._tls = tls
        self._timeouts = (connect_timeout, stall_timeout)
        self._traces = tuple(trace_configs)
        self._grace = close_grace
        self._loops: list[_Loop] = []  # kept once closed: their counters stay readable
        self._closed = False

    def __repr__(self) -> str:
        state = "closed" if self._closed else "running" if self._loops else "idle"
        flights = [lp.in_flight for lp in self._loops]
        return f"<DataLoops {len(self._shares)} {state} in_flight={flights} puts={self.puts}>"

    @property
    def puts(self) -> list[int]:
        """PUTs begun on each loop so far (empty until the first one)."""
        return [lp.puts for lp in self._loops]

    @property
    def threads(self) -> list[threading.Thread]:
        """The loops' threads (empty until the first PUT)."""
        return [lp.thread for lp in self._loops]

    def _pool(self, limit: int) -> aiohttp.ClientSession:
        """One loop's pool; called on that loop."""
        connect, stall = self._timeouts
        return data_session(
            limit=limit,
            tls=self._tls,
            connect_timeout=connect,
            stall_timeout=stall,
            trace_configs=self._traces,
        )

    def takes(self, request: PartRequest) -> bool:
        """HTTPS PUTs only: plain HTTP stays on the caller's loop (``sendfile(2)``)."""
        return not self._closed and request.url[:8].lower() == "https://"

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
        """``engine.transport.put_range`` on the loop with the most free connections; the
        progress comes back to this loop. Returns or raises only once that PUT has ended."""
        if self._closed:
            raise RuntimeError("the uploader's data loops are closed")
        if not self._loops:
            self._loops = [
                _Loop(f"upload-engine-data-{i}", limit, self._pool, self._grace)
                for i, limit in enumerate(self._shares)
            ]
        free = max(self._loops, key=lambda lp: lp.limit - lp.in_flight)  # ties: the first
        job = _Put(request, fd, part, chunk_size, stall_timeout, md5, tls)
        return await free.put(job, on_progress)

    async def aclose(self) -> None:
        """Close every pool on its own loop and join the threads (a no-op if none ran, or
        once done). No PUT may be in flight: the engine's uploads have ended."""
        if self._closed:
            return
        self._closed = True
        for lp in self._loops:
            lp.stop()
        if self._loops:
            await anyio.to_thread.run_sync(_join, self._loops)


def _join(loops: Sequence[_Loop]) -> None:
    for lp in loops:
        lp.thread.join(_JOIN_TIMEOUT)
