"""The scheduler: every part of every file in flight shares one limiter and one pool.

Rules:
- at most ``config.concurrency`` PUTs are in flight across all files (one ``CapacityLimiter``;
  the data connection pool has the same size, so connections never exceed it);
- each file runs at most ``concurrency`` workers that pull its parts in order, so a huge file
  queues ``concurrency`` waiters, not 10,000, and small files are not starved behind it;
- a part is retried on transient failures with full-jitter backoff (or ``Retry-After``), waiting
  *outside* the limiter; an expired URL is refreshed from the target; fatal answers fail the file;
- an ETag in MD5 form that differs from the MD5 of the bytes sent is a transient failure;
- each stored part is journaled before it counts; the result lists parts in order;
- one exception per file (never an ``ExceptionGroup``); cancellation stops every part and
  closes the file before it propagates.
"""

from __future__ import annotations

import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp
import anyio

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
    EventHook,
    FileFailed,
    FileFinished,
    FileStarted,
    PartDone,
    PartRetry,
    Phase,
)
from engine.journal import Journal
from engine.models import FileInfo, PartResult, PartSpec, UploadResult
from engine.plan import plan_parts
from engine.retry import Verdict, backoff_delay, is_md5_etag
from engine.source import FileSource
from engine.target import Target, TargetContext
from engine.transport import AttemptFailed, RangeBody, put_range

__all__ = ["Engine"]

Sleep = Callable[[float], Awaitable[None]]


@dataclass(slots=True)
class _FileRun:
    info: FileInfo
    ctx: TargetContext
    source: FileSource
    results: dict[int, PartResult] = field(default_factory=dict)
    bytes_sent: int = 0
    retries: int = 0


class Engine:
    """Shared machinery of one ``Uploader``: pools, limiter, journal, event hook."""

    def __init__(
        self,
        config: UploadConfig,
        *,
        data: aiohttp.ClientSession,
        control: aiohttp.ClientSession,
        journal: Journal,
        emit: EventHook,
        sleep: Sleep = anyio.sleep,
        rng: random.Random | None = None,
        on_change: str = "restart",
    ) -> None:
        self.config = config
        self.data = data
        self.control = control
        self.journal = journal
        self.emit = emit
        self.sleep = sleep
        self.rng = rng or random.Random()
        self.on_change = on_change
        self.limiter = anyio.CapacityLimiter(config.concurrency)
        self.draining = False

    def drain(self) -> None:
        """Start no new part and no retry; parts in flight finish. Files with parts left
        fail with ``InterruptedUpload`` (their journal lets a rerun resume them)."""
        self.draining = True

    def __repr__(self) -> str:
        return (
            f"<Engine concurrency={self.config.concurrency} "
            f"in_flight={self.limiter.borrowed_tokens}>"
        )

    async def upload_file(self, info: FileInfo, target: Target) -> UploadResult:
        """Upload one file to ``target``; raise one ``UploadError`` if it fails."""
        try:
            return await self._upload_file(info, target)
        except InputError as exc:
            # Reads deep in the data path know offsets, not names: say which file it was.
            named = exc if str(info.path) in str(exc) else type(exc)(f"{info.path}: {exc}")
            self.emit(FileFailed(info.path, named))
            if named is exc:
                raise
            raise named from exc
        except UploadError as exc:
            self.emit(FileFailed(info.path, exc))
            raise

    async def _upload_file(self, info: FileInfo, target: Target) -> UploadResult:
        started = time.monotonic()
        if self.draining:
            raise InterruptedUpload(f"{info.path}: not started (stopping)")
        fj = self.journal.for_key(target.journal_key(info))
        known = fj.state.fingerprint
        state = fj.begin(info, on_change=self.on_change)
        if known and known != info.fingerprint:
            self.emit(Phase(info.path, "changed since the last run: uploading it from the start"))
        if state.done is not None:
            parts = tuple(state.parts[n] for n in sorted(state.parts))
            result = UploadResult(info.path, info.size, parts, 0.0, 0, 0, dict(state.done))
            self.emit(FileFinished(info.path, result))
            return result
        ctx = TargetContext(info, self.control, self.config, fj, self.emit)
        limits = await target.prepare(ctx)
        plan = plan_parts(info.size, part_size=self.config.part_size, limits=limits)
        with FileSource(info) as source:
            run = _FileRun(info, ctx, source)
            run.results.update(await target.stored_parts(plan, ctx))
            todo = [p for p in plan if p.number not in run.results]
            self.emit(
                FileStarted(
                    info.path,
                    info.size,
                    len(plan),
                    len(plan) - len(todo),
                    sum(r.size for r in run.results.values()),
                )
            )
            await self._send_all(run, target, todo)
            source.check_unchanged()
        parts = tuple(run.results[p.number] for p in plan)
        remote = await target.complete(parts, ctx)
        fj.done(remote)
        result = UploadResult(
            info.path,
            info.size,
            parts,
            time.monotonic() - started,
            run.bytes_sent,
            run.retries,
            dict(remote),
        )
        self.emit(FileFinished(info.path, result))
        return result

    async def _send_all(self, run: _FileRun, target: Target, todo: list[PartSpec]) -> None:
        queue = deque(todo)
        failures: list[Exception] = []

        async def worker(scope: anyio.CancelScope) -> None:
            while queue and not failures and not self.draining:
                part = queue.popleft()
                try:
                    run.results[part.number] = await self._send_part(run, target, part)
                except Exception as exc:  # the first failure fails the file, once
                    failures.append(exc)
                    scope.cancel()
                    return

        async with anyio.create_task_group() as tg:
            for _ in range(min(self.config.concurrency, len(queue))):
                tg.start_soon(worker, tg.cancel_scope)
        if failures:
            raise failures[0]
        if queue:
            raise InterruptedUpload(
                f"{run.info.path}: stopped with {len(queue)} of {len(todo)} parts left to send"
            )

    async def _send_part(self, run: _FileRun, target: Target, part: PartSpec) -> PartResult:
        cfg = self.config
        path = run.info.path
        refresh = False
        attempt = 0

        def progress(n: int) -> None:
            run.bytes_sent += n
            self.emit(BytesSent(path, part.number, n))

        while True:
            attempt += 1
            bodies: list[RangeBody] = []
            async with self.limiter:
                request = await target.part_request(part, run.ctx, refresh=refresh)
                try:
                    outcome = await put_range(
                        self.data,
                        request,
                        run.source.fd,
                        part,
                        chunk_size=cfg.chunk_size,
                        stall_timeout=cfg.stall_timeout,
                        on_progress=progress,
                        body_out=bodies,
                        md5=cfg.verify_etag,
                    )
                    if (
                        cfg.verify_etag
                        and is_md5_etag(outcome.etag)
                        and outcome.etag.strip('"').lower() != outcome.md5
                    ):
                        raise AttemptFailed(
                            Verdict("transient", "ETag does not match the MD5 of the bytes sent")
                        )
                except AttemptFailed as failed:
                    verdict, cause = failed.verdict, failed
                else:
                    result = PartResult(part.number, outcome.etag, part.size)
                    run.ctx.journal.part_done(result)
                    self.emit(PartDone(path, part.number, part.size, outcome.etag, attempt))
                    return result
            lost = bodies[0].sent if bodies else 0
            if verdict.kind == "fatal":
                raise PartRejectedError(
                    f"part {part.number} refused by storage: {verdict.reason}",
                    part_number=part.number,
                ) from cause
            if self.draining:
                raise InterruptedUpload(
                    f"part {part.number}: not retried (stopping); last: {verdict.reason}"
                ) from cause
            if attempt >= cfg.max_attempts:
                raise RetriesExhaustedError(
                    f"part {part.number} failed {attempt} times; last: {verdict.reason}",
                    part_number=part.number,
                ) from cause
            refresh = verdict.kind == "expired"
            if refresh:
                delay = 0.0
            elif verdict.retry_after is not None:
                delay = min(verdict.retry_after, cfg.backoff_cap)
            else:
                delay = backoff_delay(
                    attempt, base=cfg.backoff_base, cap=cfg.backoff_cap, rng=self.rng
                )
            run.retries += 1
            self.emit(PartRetry(path, part.number, attempt, verdict.reason, delay, lost))
            await self.sleep(delay)
