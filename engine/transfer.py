"""The scheduler: every part of every file in flight shares one limiter and one pool.

Rules:
- at most ``config.concurrency`` PUTs are in flight across all files (one ``CapacityLimiter``;
  the data connection pool has the same size, so connections never exceed it);
- each file runs at most ``concurrency`` workers that pull its parts in order, so a huge file
  queues ``concurrency`` waiters, not 10,000, and small files are not starved behind it;
- a part is retried on transient failures with full-jitter backoff (or ``Retry-After``), waiting
  *outside* the limiter; an expired URL is refreshed from the target; fatal answers fail the file
  (``engine.retry.decide`` says which);
- an answer whose digest differs from the MD5 of the bytes sent (an ETag that can be an MD5,
  or a ``Content-MD5``: ``engine.retry.integrity_of``) is a transient failure; an answer
  that cannot be checked (SSE-KMS / SSE-C ETags, opaque ETags without ``Content-MD5``) is
  accepted, said once per file (a ``Phase``), and the file's later parts are not hashed;
- each stored part is journaled before it counts; the result lists parts in order;
- a file the journal says is done is skipped only when its target ``confirm``s it (the server
  is the truth); otherwise, or with ``force``, its journaled facts are voided and it is
  uploaded again. The ``done`` record keeps when it finished (``finished_at``, ISO 8601);
- one exception per file (never an ``ExceptionGroup``); cancellation stops every part and
  closes the file before it propagates;
- a ``PartSender`` (``engine.cluster``) may move the bytes instead of this process: the limiter
  is then its ``slots`` big, and everything above stays here (part URLs, retries, ETag checks,
  the journal); ``config.bwlimit`` caps this process's own PUTs (``Throttle``).
"""

from __future__ import annotations

import contextlib
import random
import ssl
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

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
from engine.journal import FileJournal, Journal, JournalKey, UploadVoided
from engine.models import FileInfo, PartRequest, PartResult, PartSpec, Skipped, UploadResult
from engine.plan import plan_parts
from engine.retry import RetryPolicy, decide, integrity_of
from engine.source import FileSource
from engine.target import OnChange, Target, TargetContext
from engine.transport import AttemptFailed, PutOutcome, Throttle, put_range

__all__ = ["FINISHED_AT", "Engine", "PartPut", "PartSender"]

#: the key of a ``done`` record that holds when the file finished (ISO 8601, UTC)
FINISHED_AT = "finished_at"
#: seconds an abandoned upload's clean-up may take (an abort the storage does not answer)
ABANDON_TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class PartPut:
    """One PUT the engine wants made: ``part`` of ``info``'s file, as ``request`` says.
    ``md5``: hash the bytes sent; ``tls``: the target's own TLS context, if it has one."""

    info: FileInfo
    part: PartSpec
    request: PartRequest
    md5: bool
    tls: ssl.SSLContext | None = None


class PartSender(Protocol):
    """Moves parts' bytes for the engine from elsewhere (``engine.cluster``). It only sends:
    the engine keeps the limiter (``slots`` PUTs at once), retries, ETag checks and the journal.
    ``send`` returns what ``put_range`` returns or raises ``AttemptFailed``; it may be asked for
    the same part again, and reports bytes through ``on_progress`` as ``put_range`` does."""

    @property
    def slots(self) -> int: ...

    async def send(self, put: PartPut, on_progress: Callable[[int], None]) -> PutOutcome: ...


@dataclass(slots=True)
class _FileRun:
    info: FileInfo
    ctx: TargetContext
    source: FileSource
    hashing: bool = True  # off once the store's answers cannot be checked (or checks are off)
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
        force: bool = False,
        sender: PartSender | None = None,
    ) -> None:
        self._config = config
        self._retry = RetryPolicy.of(config)
        self._data = data
        self._control = control
        self._journal = journal
        self._emit = emit
        self._clock = clock or SystemClock(random.Random())
        self._on_change: OnChange = on_change
        self._sender = sender
        self._throttle = Throttle(config.bwlimit) if config.bwlimit else None
        self._limiter = anyio.CapacityLimiter(sender.slots if sender else config.concurrency)
        self._stopping = False
        self._stopped = anyio.Event()
        self._force = force

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

    @property
    def force(self) -> bool:
        return self._force

    async def wait_stopping(self) -> None:
        await self._stopped.wait()

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
        self._stopped.set()

    async def upload_file(
        self, info: FileInfo, target: Target, *, force: bool | None = None
    ) -> UploadResult:
        """Upload one file to ``target``; raise one ``UploadError`` if it fails. ``force``
        (default: the engine's) uploads it again even when the destination holds it."""
        try:
            return await self._abandoning(info, target, self._force if force is None else force)
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

    async def _abandoning(self, info: FileInfo, target: Target, force: bool) -> UploadResult:
        """``_upload_file``; when no journal on disk keeps the file's remote upload for a
        rerun, one that stops unfinished (cancelled or failed) is abandoned (``Target.abandon``:
        S3 aborts its multipart upload); with a journal it is kept, to be resumed."""
        try:
            return await self._upload_file(info, target, force)
        except BaseException:
            if self._journal.path is None:
                ctx = TargetContext(info, self, self._journal.for_key(target.journal_key(info)))
                shield, limit = anyio.CancelScope(shield=True), anyio.move_on_after(ABANDON_TIMEOUT)
                with shield, limit, contextlib.suppress(Exception):
                    await target.abandon(ctx)
            raise

    async def _upload_file(self, info: FileInfo, target: Target, force: bool) -> UploadResult:
        started = self._clock.monotonic()
        if self._stopping:
            raise InterruptedUpload(f"{info.path}: not started (stopping)")
        fj = self.begin(target.journal_key(info), info)
        ctx = TargetContext(info, self, fj)
        if fj.state.done is not None:
            skipped = await self._already_uploaded(info, target, ctx, force)
            if skipped is not None:
                return skipped
        limits = await target.prepare(ctx)
        plan = plan_parts(info.size, part_size=self._config.part_size, limits=limits)
        with FileSource(info) as source:
            run = _FileRun(info, ctx, source, hashing=self._config.verify_etag)
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
        fj.done({**remote.to_record(), FINISHED_AT: self._clock.now().isoformat()})
        seconds = self._clock.monotonic() - started
        result = UploadResult(
            info.path, info.size, parts, seconds, run.bytes_sent, run.retries, remote
        )
        self._emit(FileFinished(info.path, result))
        return result

    async def _already_uploaded(
        self, info: FileInfo, target: Target, ctx: TargetContext, force: bool
    ) -> UploadResult | None:
        """The result of a file the journal says is done, when its destination confirms it;
        ``None`` (its journaled facts voided) when it must be uploaded again."""
        fj = ctx.journal
        done = fj.state.done or {}
        remote = target.remote_type.from_record(done)
        if force:
            ctx.phase("uploaded before: uploading it again, as forced")
            fj.record(UploadVoided())
            return None
        found = await target.confirm(remote, ctx)
        if not found.held:
            ctx.phase(f"the journal says it was uploaded, but {found.why}: uploading it again")
            fj.record(UploadVoided())
            return None
        state = fj.state
        parts = tuple(state.parts[n] for n in sorted(state.parts))
        skipped = Skipped("already uploaded", str(done.get(FINISHED_AT) or ""))
        result = UploadResult(info.path, info.size, parts, 0.0, 0, 0, remote, skipped)
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
            for _ in range(min(int(self._limiter.total_tokens), len(queue))):
                tg.start_soon(worker, tg.cancel_scope)
        if failures:
            raise failures[0]
        if queue:
            raise InterruptedUpload(
                f"{run.info.path}: stopped with {len(queue)} of {len(todo)} parts left to send"
            )

    async def _attempt(
        self, run: _FileRun, target: Target, part: PartSpec, refresh: bool, sent: list[int]
    ) -> PartResult | AttemptFailed:
        """One PUT of ``part`` inside the limiter: the stored part, or why it failed
        (``sent[0]``: the bytes of this attempt counted as sent)."""
        cfg = self._config

        def progress(n: int) -> None:
            sent[0] += n
            run.bytes_sent += n
            self._emit(BytesSent(run.info.path, part.number, n))

        async with self._limiter:
            request = await target.part_request(part, run.ctx, refresh=refresh)
            try:
                if self._sender is not None:
                    put = PartPut(run.info, part, request, run.hashing, target.tls(run.ctx))
                    outcome = await self._sender.send(put, progress)
                else:
                    outcome = await put_range(
                        self._data,
                        request,
                        run.source.fd,
                        part,
                        chunk_size=cfg.chunk_size,
                        stall_timeout=cfg.stall_timeout,
                        on_progress=progress,
                        md5=run.hashing,
                        tls=target.tls(run.ctx),
                        throttle=self._throttle,
                    )
            except AttemptFailed as failed:
                return failed
        found = integrity_of(outcome.etag, outcome.headers)
        if found.check == "none":
            self._unverifiable(run, found.why)
        elif (bad := found.mismatch(outcome.md5)) is not None:
            return AttemptFailed(bad)
        return PartResult(part.number, outcome.etag, part.size)

    def _unverifiable(self, run: _FileRun, why: str) -> None:
        """The store's answers cannot be checked: say so once, and stop hashing the file."""
        if run.hashing:
            run.hashing = False
            run.ctx.phase(
                f"the store's ETags cannot be checked against the bytes sent: {why}; "
                "accepted as answered, not verified"
            )

    async def _send_part(self, run: _FileRun, target: Target, part: PartSpec) -> PartResult:
        path = run.info.path
        refresh = False
        attempt = 0
        while True:
            attempt += 1
            sent = [0]
            got = await self._attempt(run, target, part, refresh, sent)
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
                    f"part {part.number} failed {attempt} time{'s' if attempt > 1 else ''}; "
                    f"last: {verdict.reason}",
                    part_number=part.number,
                ) from got
            refresh = step.refresh
            run.retries += 1
            lost = sent[0]
            self._emit(PartRetry(path, part.number, attempt, verdict.reason, step.delay, lost))
            await self._clock.sleep(step.delay)
