"""The coordinator's side of the fan-out: a ``PartSender`` that hands part PUTs to Dask workers.

Rules:
- the coordinator (the process that owns the ``Uploader``, the journal and every platform
  call) keeps every step that must not happen twice; a task only PUTs one part
  (``engine.cluster.tasks``), so Dask re-running it is harmless;
- task keys are ``upload-engine-<run>-<file>-<part>-<n>``: a per-run id (keys reused across
  runs made a new coordinator wait forever on a stale one), the file's index in this run, the
  part number and a send counter (a retried part is a new task). No URL is in a key, a log
  line or an event: the URL travels only inside the task's arguments;
- one budget: the engine's limiter is ``slots`` big (each worker's threads, at most
  ``concurrency`` of them), and each worker's ``PartPool`` lets at most ``concurrency`` PUTs
  run at once;
- progress: a worker reports how many bytes the running part has sent; each part's bytes are
  counted once however often Dask runs it (the most any run reported), credited to the worker
  that sent them, and handed back if the attempt fails (the engine's ``PartRetry``);
- a scheduler that goes away, or a cluster without a worker for ``stall_timeout`` seconds,
  ends every part in flight and every later one with ``ClusterLostError``: the journal is
  consistent, and a rerun resumes.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from concurrent.futures import CancelledError  # what distributed raises for a cancelled key
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from distributed import Client
from distributed.client import FutureCancelledError
from distributed.scheduler import KilledWorker

from engine.cluster.tasks import (
    PartAnswer,
    PartJob,
    PartPool,
    PoolSettings,
    head_digest,
    per_worker,
    probe,
)
from engine.cluster.tasks import send_part as _task
from engine.config import UploadConfig
from engine.errors import ConfigError, InterruptedUpload, SourceError, source_error
from engine.redact import redact
from engine.retry import Verdict
from engine.transfer import PartPut
from engine.transport import AttemptFailed, PutOutcome

__all__ = ["ClusterLostError", "ClusterSender", "cluster_sender"]

_WATCH_EVERY = 1.0  # seconds between looks at the scheduler and its workers


class ClusterLostError(InterruptedUpload):
    """The Dask scheduler went away, or the cluster has no worker left: the upload stopped
    before it finished, as a Ctrl-C stops it. The journal is consistent: a rerun resumes."""


@dataclass(slots=True)
class _Flight:
    """One part in flight: the engine's progress hook, the bytes counted, and by whom."""

    on_progress: Callable[[int], None]
    counted: int = 0
    by_worker: dict[str, int] = field(default_factory=dict)


class ClusterSender:
    """Sends the engine's parts through the workers of a Dask cluster (see the module rules).
    Open it with ``cluster_sender``; hand it to ``Uploader(sender=...)``."""

    def __init__(
        self,
        client: Client,
        config: UploadConfig,
        *,
        slots: int,
        on_worker: Callable[[str, int], None] | None = None,
    ) -> None:
        self._client: Any = client  # distributed's API is only partly typed
        self._config = config
        self._slots = slots
        self._on_worker = on_worker
        self.run = uuid.uuid4().hex[:12]
        self.pool = f"upload-engine-{self.run}"
        self.topic = self.pool
        self._files: dict[str, int] = {}
        self._sends = 0
        self._flights: dict[str, _Flight] = {}
        self._waiting: set[anyio.CancelScope] = set()
        self._by_worker: dict[str, int] = {}
        self.lost: str | None = None
        self._lost_event = anyio.Event()

    def __repr__(self) -> str:
        return (
            f"<ClusterSender run={self.run} slots={self._slots} in_flight={len(self._flights)} "
            f"lost={self.lost is not None}>"
        )

    @property
    def slots(self) -> int:
        return self._slots

    @property
    def bytes_by_worker(self) -> dict[str, int]:
        """Bytes each worker sent (each part counted once), by worker address."""
        return dict(self._by_worker)

    async def wait_lost(self) -> str:
        """Wait until the cluster is lost; return why."""
        await self._lost_event.wait()
        return self.lost or "the cluster is gone"

    # ---- the PartSender ------------------------------------------------------------------

    async def send(self, put: PartPut, on_progress: Callable[[int], None]) -> PutOutcome:
        """PUT ``put`` on a worker. Workers trust what ``UploadConfig`` says (``ca_bundle``,
        the same path on every worker) or their system's store: a target's own TLS context
        (``put.tls``) cannot travel to them."""
        number = put.part.number
        if self.lost is not None:
            raise ClusterLostError(f"part {number}: {self.lost}")
        path = str(put.info.path)
        index = self._files.setdefault(path, len(self._files))
        self._sends += 1
        key = f"{self.pool}-{index}-{number}-{self._sends}"
        job = PartJob(
            key, self.pool, self.topic, path, put.info.size, put.part, put.request,
            self._config.effective_chunk, put.md5,
        )  # fmt: skip
        flight = self._flights[key] = _Flight(on_progress)
        try:
            future = self._client.submit(_task, job, key=key, pure=False)
            answer = await self._result(future, number)
        except BaseException:
            self._take_back(flight)
            raise
        finally:
            self._flights.pop(key, None)
        if answer.kind != "ok" or answer.outcome is None:
            self._take_back(flight)
            if answer.kind == "source":
                raise SourceError(f"on worker {answer.worker}: {answer.reason}")
            kind = "transient" if answer.kind == "ok" else answer.kind
            raise AttemptFailed(Verdict(kind, answer.reason, answer.retry_after))
        self._count(flight, answer.worker, put.part.size)
        return answer.outcome

    async def _result(self, future: Any, number: int) -> PartAnswer:
        """The task's answer; a lost cluster raises ``ClusterLostError``, a task Dask gave
        up on (its workers kept dying) or cancelled is a transient failure."""
        try:
            with anyio.CancelScope() as scope:
                self._waiting.add(scope)
                try:
                    answer: PartAnswer = await future
                    return answer
                finally:
                    self._waiting.discard(scope)
            raise ClusterLostError(f"part {number}: {self.lost or 'the cluster is gone'}")
        except KilledWorker:
            raise AttemptFailed(
                Verdict("transient", "Dask gave up on it: its workers kept dying")
            ) from None
        except (FutureCancelledError, CancelledError) as exc:
            if self._client.status != "running" or "connection-lost" in str(exc):
                self._lose("the Dask scheduler went away")
                raise ClusterLostError(f"part {number}: {self.lost}") from None
            raise AttemptFailed(Verdict("transient", "the cluster cancelled the task")) from None
        except OSError as exc:  # gathering the answer from a worker failed for good
            reason = redact(f"cluster: {type(exc).__name__}: {exc}")
            raise AttemptFailed(Verdict("transient", reason)) from None
        finally:
            if not future.done():
                with anyio.CancelScope(shield=True), anyio.move_on_after(2):
                    await self._client.cancel([future])
            future.release()  # at once: a worker lost later must not run it again

    # ---- progress ------------------------------------------------------------------------

    def _on_event(self, event: tuple[float, Any]) -> None:
        """A worker's progress event: ``{"key", "sent", "worker"}``."""
        msg = event[1]
        if not isinstance(msg, dict):
            return
        flight = self._flights.get(str(msg.get("key")))
        sent = msg.get("sent")
        if flight is not None and isinstance(sent, int):
            self._count(flight, str(msg.get("worker")), sent)

    def _count(self, flight: _Flight, worker: str, sent: int) -> None:
        """``sent`` bytes of the part are gone: count what no run of it had counted yet."""
        new = sent - flight.counted
        if new <= 0:
            return
        flight.counted = sent
        flight.by_worker[worker] = flight.by_worker.get(worker, 0) + new
        self._credit(worker, new)
        flight.on_progress(new)

    def _take_back(self, flight: _Flight) -> None:
        """A failed attempt's bytes no longer count (the engine reports them as lost)."""
        for worker, n in flight.by_worker.items():
            self._credit(worker, -n)
        flight.by_worker.clear()

    def _credit(self, worker: str, n: int) -> None:
        self._by_worker[worker] = self._by_worker.get(worker, 0) + n
        if self._on_worker is not None:
            self._on_worker(worker, n)

    # ---- the cluster ---------------------------------------------------------------------

    def _lose(self, why: str) -> None:
        if self.lost is None:
            self.lost = f"{why}; the journal is saved: rerun the same command to resume"
            self._lost_event.set()
            for scope in self._waiting:
                scope.cancel()

    async def watch(self) -> None:
        """Until cancelled: lose the cluster when its scheduler is gone or it has had no
        worker for ``stall_timeout`` seconds."""
        empty_since: float | None = None
        while self.lost is None:
            await anyio.sleep(_WATCH_EVERY)
            try:
                workers = await _worker_threads(self._client)
            except (OSError, CancelledError):
                workers = None
            now = anyio.current_time()
            if workers is None or self._client.status != "running":
                self._lose("the Dask scheduler went away")
            elif not workers:
                empty_since = now if empty_since is None else empty_since
                if now - empty_since >= self._config.stall_timeout:
                    self._lose(f"the Dask cluster has had no worker for {now - empty_since:.0f} s")
            else:
                empty_since = None

    async def check_readable(self, files: Iterable[tuple[Path, int]]) -> None:
        """Every worker reads every ``(path, size)`` at the same (resolved) path alike: size
        and first bytes; else a ``ConfigError`` naming the first worker (by address) that does
        not, and the file. Call it before anything is uploaded."""

        def heads() -> list[tuple[str, int, str]]:
            out = []
            for given, size in files:
                path = Path(given).resolve()
                try:
                    out.append((str(path), size, head_digest(str(path), size)))
                except OSError as exc:
                    raise source_error(path, exc) from None
            return out

        answers: dict[str, tuple[str, str] | None] = await self._client.run(
            probe, await anyio.to_thread.run_sync(heads)
        )
        for worker in sorted(answers):
            problem = answers[worker]
            if problem is not None:
                raise ConfigError(
                    f"worker {worker} cannot read {problem[0]}: {problem[1]}; every worker "
                    "must see the files at the same path (a shared file system)"
                )


async def _worker_threads(client: Any) -> dict[str, int]:
    """Each worker's thread count, by address, as the scheduler knows it now."""
    info = await client.scheduler.identity(n_workers=-1)
    workers = info.get("workers", {}) if isinstance(info, dict) else {}
    return {str(a): int(w.get("nthreads", 1)) for a, w in workers.items()}


@asynccontextmanager
async def cluster_sender(
    client: Client,
    config: UploadConfig,
    *,
    on_worker: Callable[[str, int], None] | None = None,
    wait_for_workers: float = 30.0,
) -> AsyncIterator[ClusterSender]:
    """A ``ClusterSender`` on the cluster of ``client`` (an asynchronous
    ``distributed.Client``): waits up to ``wait_for_workers`` seconds for a worker, gives each
    worker its ``PartPool`` for this run (removed at the end), and watches the cluster.
    ``on_worker(address, bytes)`` is called as each worker's byte count moves."""
    dask: Any = client
    workers = await _worker_threads(dask)
    if not workers:
        try:
            await dask.wait_for_workers(1, timeout=wait_for_workers)
        except TimeoutError:
            raise ConfigError(
                f"the Dask cluster has no worker (waited {wait_for_workers:g} s)"
            ) from None
        workers = await _worker_threads(dask)
    slots = sum(min(n, per_worker(config)) for n in workers.values())
    sender = ClusterSender(client, config, slots=max(1, slots), on_worker=on_worker)
    settings = PoolSettings(
        per_worker(config),
        config.bwlimit,
        config.connect_timeout,
        config.stall_timeout,
        config.verify_tls,
        config.ca_bundle,
    )
    await dask.register_plugin(PartPool(settings), name=sender.pool)
    dask.subscribe_topic(sender.topic, sender._on_event)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(sender.watch)
            yield sender
            tg.cancel_scope.cancel()
    except BaseExceptionGroup as group:  # one error out of the block: that error, unwrapped
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise
    finally:
        with anyio.CancelScope(shield=True):
            await _unregister(dask, sender)


async def _unregister(client: Any, sender: ClusterSender) -> None:
    """Remove the run's pools from the workers (nothing to do when the scheduler is gone)."""
    if sender.lost is not None or client.status != "running":
        return
    client.unsubscribe_topic(sender.topic)
    with anyio.move_on_after(5), suppress(OSError, ValueError, CancelledError):
        await client.unregister_worker_plugin(sender.pool)
