"""The scheduler: every part of every file in flight shares one limiter and one pool.

Rules:
- at most ``config.concurrency`` PUTs are in flight across all files (one ``CapacityLimiter``;
  the data connection pool has the same size, so connections never exceed it);
- each file runs at most ``concurrency`` workers that pull its parts in order, so a huge file
  queues ``concurrency`` waiters, not 10,000, and small files are not starved behind it;
- a part is retried on transient failures with full-jitter backoff (or ``Retry-After``), waiting
  *outside* the limiter; an expired URL is refreshed from the target; fatal answers fail the file
  (``engine.retry.decide`` says which);
- an ETag in MD5 form that differs from the MD5 of the bytes sent is a transient failure;
- each stored part is journaled before it counts; the result lists parts in order;
- one exception per file (never an ``ExceptionGroup``); cancellation stops every part and
  closes the file before it propagates.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field

import aiohttp
import anyio

from engine.clock import Clock, SystemClock
from engine.config import UploadConfig
from engine.errors import (
    InputError,
    InterruptedUpload,
    PartRejectedError,
    RetriesExhaustedError,
    UploadError,
)
from engine.events import (
    BytesSent,
    Event,
    EventHook,
    FileFailed,
    FileFinished,
    FileStarted,
    PartDone,
    PartRetry,
    Phase,
)
from engine.journal import FileJournal, Journal, JournalKey
from engine.models import FileInfo, PartResult, PartSpec, UploadResult
from engine.plan import plan_parts
from engine.retry import RetryPolicy, Verdict, decide, is_md5_etag
from engine.source import FileSource
from engine.target import OnChange, Target, TargetContext
from engine.transport import AttemptFailed, RangeBody, put_range

__all__ = ["Engine"]


@dataclass(slots=True)
class _FileRun:
    info: FileInfo
    ctx: TargetContext
    source: FileSource
    results: dict[int, PartResult] = field(default_factory=dict)
    bytes_sent: int = 0
    retries: int = 0


class Engine:
    """Shared machinery of one ``Uploader``: pools, limiter, journal, event hook. It is the
    ``engine.target.Services`` that providers are handed; nothing else of it is theirs."""

    def __init__(
        self,
        config: UploadConfig,
        *,
        data: aiohttp.ClientSession,
        control: aiohttp.ClientSession,
        journal: Journal,
        emit: EventHook,
        clock: Clock | None = None,
        on_change: OnChange = "restart",
    ) -> None:
        self._config = config
        self._retry = RetryPolicy.of(config)
        self._data = data
        self._control = control
        self._journal = journal
        self._emit = emit
        self._clock = clock or SystemClock(random.Random())
        self._on_change: OnChange = on_change
        self._limiter = anyio.CapacityLimiter(config.concurrency)
        self._stopping = False

    def __repr__(self) -> str:
        return (
            f"<Engine concurrency={self._config.concurrency} "
            f"in_flight={self._limiter.borrowed_tokens} stopping={self._stopping}>"
        )

    # ---- Services --------------------------------------------------------------------------------

    @property
    def http(self) -> aiohttp.ClientSession:
        return self._control

    @property
    def config(self) -> UploadConfig:
        return self._config

    @property
    def retry(self) -> RetryPolicy:
        return self._retry

    @property
    def clock(self) -> Clock:
        return self._clock

    @property
    def on_change(self) -> OnChange:
        return self._on_change

    @property
    def stopping(self) -> bool:
        return self._stopping

    def emit(self, event: Event) -> None:
        self._emit(event)

    def journal(self, key: JournalKey) -> FileJournal:
        return self._journal.for_key(key)

    def begin(self, key: JournalKey, info: FileInfo) -> FileJournal:
        fj = self._journal.for_key(key)
        if fj.begin(info, on_change=self._on_change):
            self._emit(Phase(info.path, "changed since the last run: uploading it from the start"))
        return fj

    async def transfer(self, info: FileInfo, target: Target) -> UploadResult:
        return await self.upload_file(info, target)

    # ---- the data path ---------------------------------------------------------------------------

    def drain(self) -> None:
        """Start no new part and no retry; parts in flight finish. Files with parts left
        fail with ``InterruptedUpload`` (their journal lets a rerun resume them)."""
        self._stopping = True

    async def upload_file(self, info: FileInfo, target: Target) -> UploadResult:
        """Upload one file to ``target``; raise one ``UploadError`` if it fails."""
        try:
            return await self._upload_file(info, target)
        except InputError as exc:
            # Reads deep in the data path know offsets, not names: say which file it was.
            named = exc if str(info.path) in str(exc) else type(exc)(f"{info.path}: {exc}")
            self._emit(FileFailed(info.path, named))
            if named is exc:
                raise
            raise named from exc
        except UploadError as exc:
            self._emit(FileFailed(info.path, exc))
            raise

    async def _upload_file(self, info: FileInfo, target: Target) -> UploadResult:
        started = self._clock.monotonic()
        if self._stopping:
            raise InterruptedUpload(f"{info.path}: not started (stopping)")
        fj = self.begin(target.journal_key(info), info)
        state = fj.state
        if state.done is not None:
            parts = tuple(state.parts[n] for n in sorted(state.parts))
            remote = target.remote_type.from_record(state.done)
            result = UploadResult(info.path, info.size, parts, 0.0, 0, 0, remote)
            self._emit(FileFinished(info.path, result))
            return result
        ctx = TargetContext(info, self, fj)
        limits = await target.prepare(ctx)
        plan = plan_parts(info.size, part_size=self._config.part_size, limits=limits)
        with FileSource(info) as source:
            run = _FileRun(info, ctx, source)
            run.results.update(await target.stored_parts(plan, ctx))
            todo = [p for p in plan if p.number not in run.results]
            self._emit(
                FileStarted(
                    info.path,
                    info.size,
                    len(plan),
                    len(plan) - len(todo),
                    sum(r.size for r in run.results.values()),
                )
            )
            await self._send_all(run, target, todo)
            source.check_unchanged(uploading=True)
        parts = tuple(run.results[p.number] for p in plan)
        remote = await target.complete(parts, ctx)
        fj.done(remote.to_record())
        seconds = self._clock.monotonic() - started
        result = UploadResult(
            info.path, info.size, parts, seconds, run.bytes_sent, run.retries, remote
        )
        self._emit(FileFinished(info.path, result))
        return result

    async def _send_all(self, run: _FileRun, target: Target, todo: list[PartSpec]) -> None:
        queue = deque(todo)
        failures: list[Exception] = []

        async def worker(scope: anyio.CancelScope) -> None:
            while queue and not failures and not self._stopping:
                part = queue.popleft()
                try:
                    run.results[part.number] = await self._send_part(run, target, part)
                except Exception as exc:  # the first failure fails the file, once
                    failures.append(exc)
                    scope.cancel()
                    return

        async with anyio.create_task_group() as tg:
            for _ in range(min(self._config.concurrency, len(queue))):
                tg.start_soon(worker, tg.cancel_scope)
        if failures:
            raise failures[0]
        if queue:
            raise InterruptedUpload(
                f"{run.info.path}: stopped with {len(queue)} of {len(todo)} parts left to send"
            )

    async def _attempt(
        self, run: _FileRun, target: Target, part: PartSpec, refresh: bool, bodies: list[RangeBody]
    ) -> PartResult | AttemptFailed:
        """One PUT of ``part`` inside the limiter: the stored part, or why it failed."""
        cfg = self._config

        def progress(n: int) -> None:
            run.bytes_sent += n
            self._emit(BytesSent(run.info.path, part.number, n))

        async with self._limiter:
            request = await target.part_request(part, run.ctx, refresh=refresh)
            try:
                outcome = await put_range(
                    self._data,
                    request,
                    run.source.fd,
                    part,
                    chunk_size=cfg.chunk_size,
                    stall_timeout=cfg.stall_timeout,
                    on_progress=progress,
                    body_out=bodies,
                    md5=cfg.verify_etag,
                )
            except AttemptFailed as failed:
                return failed
        if (
            cfg.verify_etag
            and is_md5_etag(outcome.etag)
            and outcome.etag.strip('"').lower() != outcome.md5
        ):
            return AttemptFailed(
                Verdict("transient", "ETag does not match the MD5 of the bytes sent")
            )
        return PartResult(part.number, outcome.etag, part.size)

    async def _send_part(self, run: _FileRun, target: Target, part: PartSpec) -> PartResult:
        path = run.info.path
        refresh = False
        attempt = 0
        while True:
            attempt += 1
            bodies: list[RangeBody] = []
            got = await self._attempt(run, target, part, refresh, bodies)
            if isinstance(got, PartResult):
                run.source.check_unchanged(uploading=True)  # before the part counts
                run.ctx.journal.part_done(got)
                self._emit(PartDone(path, part.number, part.size, got.etag, attempt))
                return got
            verdict = got.verdict
            step = decide(
                verdict,
                attempt,
                self._retry,
                stopping=self._stopping,
                jitter=self._clock.jitter(),
            )
            if step.action == "reject":
                raise PartRejectedError(
                    f"part {part.number} refused by storage: {verdict.reason}",
                    part_number=part.number,
                ) from got
            if step.action == "stop":
                raise InterruptedUpload(
                    f"part {part.number}: not retried (stopping); last: {verdict.reason}"
                ) from got
            if step.action == "give_up":
                raise RetriesExhaustedError(
                    f"part {part.number} failed {attempt} times; last: {verdict.reason}",
                    part_number=part.number,
                ) from got
            refresh = step.refresh
            run.retries += 1
            lost = bodies[0].sent if bodies else 0
            self._emit(PartRetry(path, part.number, attempt, verdict.reason, step.delay, lost))
            await self._clock.sleep(step.delay)
