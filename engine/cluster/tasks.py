"""What runs on a Dask worker: moving bytes, and nothing else.

Rules:
- a task PUTs one byte range of one file to one URL with the headers it was given and
  answers what happened (``PartAnswer``): the ``PutOutcome`` (ETag, MD5, integrity headers),
  or the verdict of a failed attempt (``"expired"`` included: the coordinator presigns
  again), or why the file could not be read here. It never raises: Dask logs a failed task's
  arguments, and a task that answers is a task that is never logged;
- a task is safe to run twice (Dask re-runs the tasks of a dead worker, finished ones too): a
  part PUT overwrites, and nothing else is done;
- workers hold no platform credentials: the presigned URL comes in the task and goes nowhere
  else. ``PartJob``'s ``repr`` (which Dask shows and logs) has no query string and no header
  values; progress events carry the task key, a byte count and the worker's address;
- each worker holds, per run, one ``PartPool`` (a ``WorkerPlugin``): one aiohttp pool, a
  semaphore of ``concurrency`` PUTs (whatever the worker's thread count) and one
  ``Throttle`` of ``bwlimit`` bytes per second (the worker's own "NIC");
- ``probe`` checks that this worker reads every file at the same path with the same size and
  the same first bytes as the coordinator.
"""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import aiohttp
import anyio
from distributed import Worker, get_worker
from distributed.diagnostics.plugin import WorkerPlugin

from engine.client import tls_context
from engine.config import UploadConfig
from engine.errors import InputError, SourceChangedError
from engine.models import PartRequest, PartSpec
from engine.redact import redact, redact_url
from engine.transport import AttemptFailed, PutOutcome, Throttle, put_range

__all__ = [
    "HEAD_BYTES",
    "PartAnswer",
    "PartJob",
    "PartPool",
    "PoolSettings",
    "dask_setup",
    "head_digest",
    "probe",
    "send_part",
]

#: bytes at the start of a file that the coordinator and every worker must read alike
HEAD_BYTES = 4096
#: seconds between progress events of one running part
_REPORT_EVERY = 0.2

Answer = Literal["ok", "transient", "expired", "fatal", "source"]


#: PUTs in flight per worker when the configuration leaves the number to the engine
#: (``concurrency=None``): a worker has no adaptive window of its own
PER_WORKER_DEFAULT = 8


def per_worker(config: UploadConfig) -> int:
    """PUTs in flight in one worker: ``config.concurrency``, or ``PER_WORKER_DEFAULT``."""
    return config.concurrency if config.concurrency is not None else PER_WORKER_DEFAULT


@dataclass(frozen=True, slots=True)
class PoolSettings:
    """How one worker sends for one run (from the coordinator's ``UploadConfig``)."""

    concurrency: int
    bwlimit: float | None
    connect_timeout: float
    stall_timeout: float
    verify_tls: bool
    ca_bundle: str | None


@dataclass(frozen=True, slots=True)
class PartJob:
    """One PUT for a worker: ``part`` of the file at ``path`` (``size`` bytes) as ``request``
    says. ``pool`` names the run's ``PartPool``; ``topic`` its progress events."""

    key: str
    pool: str
    topic: str
    path: str
    size: int
    part: PartSpec
    request: PartRequest
    chunk_size: int
    md5: bool

    def __repr__(self) -> str:  # Dask prints a task's arguments: never the URL's signature
        names = ",".join(k for k, _ in self.request.headers)
        return (
            f"PartJob({self.key} {self.path} part {self.part.number} "
            f"{self.request.method} {redact_url(self.request.url)} headers=[{names}])"
        )


@dataclass(frozen=True, slots=True)
class PartAnswer:
    """What a task did: ``kind`` ``"ok"`` with the ``outcome``, or a failed attempt's verdict
    kind with its (redacted) ``reason``; ``sent``: bytes written in this execution."""

    kind: Answer
    worker: str
    sent: int
    outcome: PutOutcome | None = None
    reason: str = ""
    retry_after: float | None = None


class PartPool(WorkerPlugin):
    """A worker's means of sending for one run: a pool, a semaphore, a throttle."""

    def __init__(self, settings: PoolSettings) -> None:
        self.settings = settings
        self.session: aiohttp.ClientSession | None = None
        self.slots: anyio.Semaphore | None = None
        self.throttle: Throttle | None = None

    def __repr__(self) -> str:
        return f"<PartPool concurrency={self.settings.concurrency} open={self.session is not None}>"

    async def setup(self, worker: Worker) -> None:
        cfg = self.settings
        trust = tls_context(UploadConfig(verify_tls=cfg.verify_tls, ca_bundle=cfg.ca_bundle))
        connector = aiohttp.TCPConnector(limit=cfg.concurrency, limit_per_host=0, ssl=trust)
        self.session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(
                total=None, sock_connect=cfg.connect_timeout, sock_read=cfg.stall_timeout
            ),
            auto_decompress=False,
            skip_auto_headers=("User-Agent",),
        )
        if hasattr(self.session, "_retry_connection"):  # the engine retries parts itself
            self.session._retry_connection = False
        self.slots = anyio.Semaphore(cfg.concurrency)
        self.throttle = Throttle(cfg.bwlimit) if cfg.bwlimit else None

    async def teardown(self, worker: Worker) -> None:
        if self.session is not None:
            await self.session.close()
            self.session = None


class _Reporter:
    """A running part's bytes, as events on the run's topic at most every ``_REPORT_EVERY``
    seconds (the coordinator counts each part's bytes once, however often it runs)."""

    def __init__(self, worker: Worker, topic: str, key: str) -> None:
        self._worker = worker
        self._topic = topic
        self._key = key
        self.sent = 0
        self._last = time.monotonic()

    def __call__(self, n: int) -> None:
        self.sent += n
        now = time.monotonic()
        if now - self._last >= _REPORT_EVERY:
            self._last = now
            self.flush()

    def flush(self) -> None:
        event = {"key": self._key, "sent": self.sent, "worker": self._worker.address}
        self._worker.log_event(self._topic, event)


async def send_part(job: PartJob) -> PartAnswer:
    """The task: PUT ``job``'s range (under the worker's semaphore) and answer; never raise."""
    worker = get_worker()
    pool = worker.plugins.get(job.pool)
    if not isinstance(pool, PartPool) or pool.session is None or pool.slots is None:
        return PartAnswer("transient", worker.address, 0, reason="no upload pool on this worker")
    report = _Reporter(worker, job.topic, job.key)
    async with pool.slots:
        try:
            outcome = await _put(job, pool, report)
        except AttemptFailed as failed:
            v = failed.verdict
            return PartAnswer(v.kind, worker.address, report.sent, None, v.reason, v.retry_after)
        except InputError as exc:
            return PartAnswer("source", worker.address, report.sent, reason=redact(str(exc)))
        except Exception as exc:  # a task that raises is logged with its arguments: answer
            reason = redact(f"worker error: {type(exc).__name__}: {exc}")
            return PartAnswer("transient", worker.address, report.sent, reason=reason)
        finally:
            report.flush()
    return PartAnswer("ok", worker.address, report.sent, outcome)


async def _put(job: PartJob, pool: PartPool, report: _Reporter) -> PutOutcome:
    assert pool.session is not None
    try:
        fd = await anyio.to_thread.run_sync(os.open, job.path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise InputError(f"{job.path}: cannot open it on this worker: {exc.strerror}") from None
    try:
        size = os.fstat(fd).st_size
        if size != job.size:
            raise SourceChangedError(
                f"{job.path}: {size} bytes on this worker, {job.size} planned; every worker "
                "must read the same files at the same path"
            )
        return await put_range(
            pool.session,
            job.request,
            fd,
            job.part,
            chunk_size=job.chunk_size,
            stall_timeout=pool.settings.stall_timeout,
            on_progress=report,
            md5=job.md5,
            throttle=pool.throttle,
        )
    finally:
        os.close(fd)


def head_digest(path: str, size: int) -> str:
    """MD5 of the first ``HEAD_BYTES`` of ``path`` (blocking; raises ``OSError``)."""
    with Path(path).open("rb") as f:
        return hashlib.md5(f.read(min(size, HEAD_BYTES)), usedforsecurity=False).hexdigest()


def probe(files: Sequence[tuple[str, int, str]]) -> tuple[str, str] | None:
    """Run on every worker (``Client.run``): the first file of ``(path, size, head MD5)``
    this worker cannot read alike, with why; ``None`` when it reads them all."""
    for path, size, digest in files:
        try:
            found = Path(path).stat().st_size
            if found != size:
                return path, f"{found} bytes here, {size} on the coordinator"
            if head_digest(path, size) != digest:
                return path, "its first bytes differ from the coordinator's (another file?)"
        except OSError as exc:
            return path, exc.strerror or type(exc).__name__
    return None


def dask_setup(worker: Worker) -> None:
    """Preload of the workers a ``--workers N`` run starts (``LocalCluster``): they are its
    children, so a Ctrl-C in the terminal reaches them too; only the coordinator may act on
    it (it drains, then stops them). Their own log lines: errors only."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.getLogger("distributed").setLevel(logging.ERROR)
