"""The public async API: ``Uploader``.

It borrows the caller's event loop (it never installs one) and, optionally, the caller's
``aiohttp.ClientSession``. One ``Uploader`` is one budget: every file it uploads, at once or
one after another, shares ``config.concurrency`` connections.

    async with Uploader(UploadConfig(concurrency=8), on_event=print) as up:
        result = await up.upload("scan.e57", target)
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

import aiohttp
import anyio

from engine.clock import Clock, SystemClock
from engine.config import UploadConfig
from engine.errors import ConfigError, UploadError
from engine.events import Event, EventHook
from engine.journal import Journal
from engine.loops import DataLoops, data_session, loop_count
from engine.models import FileInfo, UploadResult
from engine.target import OnChange, Services, Target
from engine.tlsthreads import TLSThreads
from engine.transfer import Engine, PartSender

__all__ = ["Uploader", "tls_context"]


def _ignore(_: Event) -> None:
    return None


#: seconds TLS connections get to finish closing once their pools closed: aiohttp closes an SSL
#: transport without waiting for it (aio-libs/aiohttp#1925), so a loop that ends at once leaves
#: the sockets open ("ResourceWarning: unclosed transport"); waited only after HTTPS was used
_TLS_CLOSE_GRACE = 0.1


def _trust_variables() -> tuple[str | None, str | None]:
    return os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR")


#: what OpenSSL read when aiohttp (imported above) made its default context
_TRUST_AT_IMPORT = _trust_variables()


def tls_context(config: UploadConfig) -> ssl.SSLContext | bool:
    """The one TLS trust of an uploader's pools (data and control planes): ``False`` when
    certificate checks are off; a verifying context that trusts ``config.ca_bundle`` only;
    or, without one, the system's store (where OpenSSL honours ``SSL_CERT_FILE`` and
    ``SSL_CERT_DIR``): ``True``, aiohttp's own verifying default context, made from it when
    aiohttp was imported, so that no second copy of the store is loaded (about 45 ms here),
    unless those variables changed since. A bundle that cannot be read is a ``ConfigError``."""
    if not config.verify_tls:
        return False
    if config.ca_bundle is None:
        if _trust_variables() == _TRUST_AT_IMPORT:
            return True
        return ssl.create_default_context()
    try:
        return ssl.create_default_context(cafile=config.ca_bundle)
    except FileNotFoundError:
        raise ConfigError(f"CA bundle {config.ca_bundle}: no such file") from None
    except (OSError, ssl.SSLError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(
            f"CA bundle {config.ca_bundle}: not a readable PEM file of certificates ({reason})"
        ) from None


class Uploader:
    """Uploads files to targets under one concurrency budget.

    config:    how bytes move (``UploadConfig``).
    session:   an ``aiohttp.ClientSession`` to use instead of owning two (one for data, one
               for control-plane calls); the caller keeps ownership and closes it.
    on_event:  called on the loop with every ``engine.events`` record.
    journal:   path of a resume journal (append-only JSON lines); ``None`` keeps it in memory.
    on_change: a journaled file whose size/mtime changed: ``"restart"`` it or ``"refuse"``.
    clock:     what waits, tells the time and draws jitter (``engine.clock.FakeClock`` in tests
               switches every backoff and polling wait off); default the system clock.
    force:     upload again what the journal says is done and the destination confirms
               (a new object, version or model); by default such a file is skipped.
    trace_configs: aiohttp ``TraceConfig``s for the pools the uploader owns (the command
               line's ``-vv`` logs each request with them); none by default.
    sender:    who moves the parts' bytes instead of this process (``engine.cluster.
               ClusterSender``: the workers of a Dask cluster); every other step stays here.

    HTTPS PUTs run off the caller's loop, so that TLS and hashing use several cores: by
    default each in a worker thread on a blocking TLS socket (``engine.tlsthreads``), or with
    ``config.data_loops=N`` on N event loops in threads (``engine.loops``), started by the
    first such PUT; everything else stays on the caller's loop. Every PUT runs on the
    caller's loop with ``data_loops=1``, with a caller's ``session`` (its pool is bound to the
    caller's loop), with a ``sender``, and with ``config.bwlimit`` (the cap is the caller's
    loop's). The ``trace_configs`` see no PUT of the worker threads; on data loops their
    callbacks run in those loops' threads.

    Platform entry points (``Matterport.import_files``, ``Speckle.upload``) take the open
    ``Uploader`` and use only its ``services``.
    """

    def __init__(
        self,
        config: UploadConfig | None = None,
        *,
        session: aiohttp.ClientSession | None = None,
        on_event: EventHook | None = None,
        journal: str | os.PathLike[str] | None = None,
        on_change: OnChange = "restart",
        clock: Clock | None = None,
        force: bool = False,
        trace_configs: Sequence[aiohttp.TraceConfig] = (),
        sender: PartSender | None = None,
    ) -> None:
        if on_change not in ("restart", "refuse"):
            raise ConfigError(f"on_change must be 'restart' or 'refuse', got {on_change!r}")
        self.config = config or UploadConfig()
        self._session = session
        self._on_event = on_event or _ignore
        self._journal_path = journal
        self._on_change: OnChange = on_change
        self._clock = clock or SystemClock()
        self._force = force
        self._trace_configs = list(trace_configs)
        self._sender = sender
        self._owned: list[aiohttp.ClientSession] = []
        self._loops: DataLoops | TLSThreads | None = None  # owned; kept once closed
        self._https = False  # an owned pool spoke TLS (see _TLS_CLOSE_GRACE)
        self._engine: Engine | None = None
        self._journal: Journal | None = None

    def __repr__(self) -> str:
        state = "open" if self._engine else "closed"
        return f"<Uploader {state} budget={self.config.budget}>"

    async def __aenter__(self) -> Self:
        cfg = self.config
        journal = Journal(self._journal_path)
        try:
            if self._session is not None:
                data = control = self._session
            else:
                ssl_ctx = tls_context(cfg)
                traces = [*self._trace_configs, self._https_seen()]
                data = data_session(
                    limit=cfg.budget,
                    tls=ssl_ctx,
                    connect_timeout=cfg.connect_timeout,
                    stall_timeout=cfg.stall_timeout,
                    trace_configs=traces,
                )
                self._owned.append(data)
                self._loops = self._data_loops(ssl_ctx)
                control = aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(limit=8, ssl=ssl_ctx),
                    timeout=aiohttp.ClientTimeout(
                        total=None, sock_connect=cfg.connect_timeout, sock_read=60
                    ),
                    trace_configs=traces,
                )
                self._owned.append(control)
                for owned in self._owned:
                    # aiohttp silently re-sends an idempotent request once when a kept-alive
                    # connection drops; the engine retries parts itself (with backoff, a fresh
                    # URL and accounting), so switch that off where the private flag exists.
                    if hasattr(owned, "_retry_connection"):
                        owned._retry_connection = False
        except BaseException:
            journal.close()
            await self._close_owned()
            raise
        self._journal = journal
        self._engine = Engine(
            cfg,
            data=data,
            control=control,
            journal=journal,
            emit=self._on_event,
            clock=self._clock,
            on_change=self._on_change,
            force=self._force,
            sender=self._sender,
            loops=self._loops,
        )
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._engine = None
        if self._journal is not None:
            self._journal.close()
            self._journal = None
        with anyio.CancelScope(shield=True):
            await self._close_owned()

    def _https_seen(self) -> aiohttp.TraceConfig:
        """Notes when an owned pool sends a request over HTTPS."""

        async def started(
            _: aiohttp.ClientSession, __: object, params: aiohttp.TraceRequestStartParams
        ) -> None:
            if params.url.scheme == "https":
                self._https = True

        trace = aiohttp.TraceConfig()
        trace.on_request_start.append(started)
        return trace

    def _data_loops(self, tls: ssl.SSLContext | bool) -> DataLoops | TLSThreads | None:
        """What will move HTTPS bytes off the caller's loop, if anything: worker threads on
        blocking sockets (``data_loops=None``, the default), or ``data_loops`` event loops."""
        cfg = self.config
        if self._sender is not None or cfg.bwlimit is not None:
            return None
        if cfg.data_loops is None:
            return TLSThreads(tls=tls, limit=cfg.budget, stall_timeout=cfg.stall_timeout)
        count = loop_count(cfg)
        if count < 2:
            return None
        return DataLoops(
            count,
            connections=cfg.budget,
            tls=tls,
            connect_timeout=cfg.connect_timeout,
            stall_timeout=cfg.stall_timeout,
            close_grace=_TLS_CLOSE_GRACE,
            trace_configs=self._trace_configs,
        )

    async def _close_owned(self) -> None:
        async with anyio.create_task_group() as tg:
            if self._loops is not None:  # on their own threads, while the pools below close
                tg.start_soon(self._loops.aclose)
            for s in self._owned:
                await s.close()
        self._owned.clear()
        if self._https:
            self._https = False
            await anyio.sleep(_TLS_CLOSE_GRACE)  # let the TLS transports finish closing

    def _running(self) -> Engine:
        if self._engine is None:
            raise RuntimeError("use 'async with Uploader(...) as up:' before uploading")
        return self._engine

    @property
    def services(self) -> Services:
        """What providers may use (``engine.target.Services``) while the uploader is open."""
        return self._running()

    @property
    def connections(self) -> tuple[int, int]:
        """(PUTs in flight now, PUTs the window allows now) across every file; the window
        adapts unless ``config.concurrency`` fixed it."""
        window = self._running().window
        return window.in_flight, window.size

    @property
    def stopping(self) -> bool:
        """True once ``drain`` was called."""
        return self._engine is not None and self._engine.stopping

    def drain(self) -> None:
        """Graceful stop: start no new part and no retry; parts in flight finish, and files
        with parts left fail with ``InterruptedUpload`` (their journal lets a rerun resume)."""
        self._running().drain()

    async def upload(
        self, path: str | os.PathLike[str], target: Target, *, force: bool | None = None
    ) -> UploadResult:
        """Upload one file; return its result or raise one ``UploadError``. A file the
        journal says is done is not sent again when the destination confirms it (its
        ``UploadResult.skipped`` says so) unless ``force`` (default: the uploader's)."""
        return await self._running().upload_file(FileInfo.of(path), target, force=force)

    async def upload_many(
        self,
        items: Iterable[tuple[str | os.PathLike[str], Target]],
        *,
        files_at_once: int = 4,
    ) -> list[UploadResult | UploadError]:
        """Upload several files, ``files_at_once`` at a time, under the same budget.
        Returns, in input order, each file's result or its error (failures do not stop
        the others; cancellation stops all)."""
        if files_at_once < 1:
            raise ConfigError(f"files_at_once must be at least 1, got {files_at_once}")
        work: Sequence[tuple[str | os.PathLike[str], Target]] = list(items)
        out: list[UploadResult | UploadError | None] = [None] * len(work)
        gate = anyio.Semaphore(files_at_once)

        async def one(i: int, path: str | os.PathLike[str], target: Target) -> None:
            async with gate:
                try:
                    out[i] = await self.upload(Path(path), target)
                except UploadError as exc:
                    out[i] = exc

        async with anyio.create_task_group() as tg:
            for i, (path, target) in enumerate(work):
                tg.start_soon(one, i, path, target)
        return [r for r in out if r is not None]
