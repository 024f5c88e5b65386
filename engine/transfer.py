"""The scheduler: every part of every file in flight shares one limiter and one pool.

Rules:
- at most ``window.size`` PUTs are in flight across all files (one limiter, ``engine.window``):
  a fixed ``config.concurrency``, or by default a window that adapts to the path (grows while
  goodput grows, halves on throttling and resets, never above ``config.max_concurrency``);
  the data connection pool is ``config.budget`` big, so connections never exceed it;
- the control plane never holds a data slot: a part's URL is asked for (``part_request``)
  before its PUT takes a slot, by workers that run ahead of the window (a second limiter of
  twice its size), so PUT slots never wait on GraphQL, nor on its retries; a URL that waited
  longer than ``URL_MAX_AGE`` for its slot is asked for again;
- each file runs workers that pull its parts in order (twice the window's ceiling at most),
  so a huge file queues that many waiters, not 10,000, and small files are not starved;
- a file's parts are planned to fill four times the window (``plan_parts(fill=...)``, at
  most its ceiling; never below ``FILL_FLOOR`` or the target's minimum for that); the part
  size is journaled (``PartsPlanned``) and a rerun plans the same ranges, or sends every part
  again when the limits no longer allow it;
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
  the journal); ``config.bwlimit`` caps this process's own PUTs (``Throttle``); ``DataLoops``
  (``engine.loops``) move HTTPS PUTs on other event loops of this process, inside the same
  slots.
"""

from __future__ import annotations

import contextlib
import functools
import random
from collections import deque
from collections.abc import Awaitable, Callable
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
    Concurrency,
    Event,
    EventHook,
    FileFailed,
    FileFinished,
    FileStarted,
    PartDone,
    PartRetry,
    Phase,
)
from engine.journal import FileJournal, Journal, JournalKey, PartsPlanned, UploadVoided
from engine.models import (
    FileInfo,
    PartLimits,
    PartRequest,
    PartResult,
    PartSpec,
    Skipped,
    UploadResult,
)
from engine.plan import plan_parts
from engine.retry import RetryPolicy, decide, integrity_of
from engine.senders import DataLoops, PartPut, PartSender
from engine.source import FileSource
from engine.target import OnChange, Target, TargetContext
from engine.transport import AttemptFailed, PutOutcome, Throttle, put_range
from engine.window import Window

__all__ = ["FINISHED_AT", "DataLoops", "Engine", "PartPut", "PartSender"]  # see engine.senders

#: the key of a ``done`` record that holds when the file finished (ISO 8601, UTC)
FINISHED_AT = "finished_at"
#: seconds an abandoned upload's clean-up may take (an abort the storage does not answer)
ABANDON_TIMEOUT = 10.0
#: seconds a part URL may wait for its PUT slot before it is asked for again
URL_MAX_AGE = 300.0


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
        loops: DataLoops | None = None,
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
        self._loops = loops
        self._throttle = Throttle(config.bwlimit) if config.bwlimit else None
        self._window = Window(
            fixed=sender.slots if sender else config.concurrency,
            ceiling=config.budget,
            now=self._clock.monotonic,
            on_change=self._resized,
        )
        self._limiter = self._window.limiter
        # part URLs asked for ahead of their PUT slots: twice the window (see _resized)
        self._ahead = anyio.CapacityLimiter(2 * self._window.size)
        self._stopping = False
        self._stopped = anyio.Event()
        self._force = force

    def __repr__(self) -> str:
        return f"<Engine {self._window!r} stopping={self._stopping}>"

    def _resized(self, size: int, why: str) -> None:
        self._ahead.total_tokens = 2 * size
        self._emit(Concurrency(size, self._window.in_flight, why))

    @property
    def window(self) -> Window:
        """The PUTs in flight and how many may be (``engine.window``)."""
        return self._window

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
        plan, replanned = self._plan(info, fj, limits)
        with FileSource(info) as source:
            run = _FileRun(info, ctx, source, hashing=self._config.verify_etag)
            if not replanned:
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

    def _plan(
        self, info: FileInfo, fj: FileJournal, limits: PartLimits
    ) -> tuple[list[PartSpec], bool]:
        """The file's parts, and whether they differ from the journaled plan's (its stored
        parts then cover other ranges: none of them counts)."""
        known = fj.state.get(PartsPlanned)
        if known is not None:
            plan = plan_parts(info.size, part_size=max(1, known.part_size), limits=limits)
            if plan[0].size == known.part_size:
                return plan, False
        # four parts per slot of the window now (it may grow, and the last round of parts
        # ends more evenly: 5 % faster on a shaped WAN path than two), at most its ceiling
        fill = min(self._window.ceiling, 4 * self._window.size)
        plan = plan_parts(info.size, part_size=self._config.part_size, limits=limits, fill=fill)
        fj.record(PartsPlanned(plan[0].size))
        return plan, known is not None

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
            # twice the ceiling: half of them ask for their URLs while the others send
            for _ in range(min(2 * self._window.ceiling, len(queue))):
                tg.start_soon(worker, tg.cancel_scope)
        if failures:
            raise failures[0]
        if queue:
            raise InterruptedUpload(
                f"{run.info.path}: stopped with {len(queue)} of {len(todo)} parts left to send"
            )

    async def _slot(
        self, run: _FileRun, target: Target, part: PartSpec, refresh: bool
    ) -> tuple[PartRequest, contextlib.AsyncExitStack]:
        """The part's URL, then a PUT slot (held by the returned stack): the URL is asked for
        first, outside the slot; one that waited too long for its slot is asked for again."""
        while True:
            request = await target.part_request(part, run.ctx, refresh=refresh)
            asked = self._clock.monotonic()
            stack = contextlib.AsyncExitStack()
            await stack.enter_async_context(self._limiter)
            if self._clock.monotonic() - asked < URL_MAX_AGE:
                return request, stack
            await stack.aclose()
            refresh = True

    async def _attempt(
        self, run: _FileRun, target: Target, part: PartSpec, refresh: bool, sent: list[int]
    ) -> PartResult | AttemptFailed:
        """One PUT of ``part``: the stored part, or why it failed (``sent[0]``: the bytes of
        this attempt counted as sent). It holds a look-ahead ticket while its URL is asked
        for and a PUT slot only while it sends."""

        def progress(n: int) -> None:
            sent[0] += n
            run.bytes_sent += n
            self._emit(BytesSent(run.info.path, part.number, n))

        async with self._ahead:
            request, slot = await self._slot(run, target, part, refresh)
            async with slot:
                try:
                    outcome = await self._put(run, target, part, request, progress)
                except AttemptFailed as failed:
                    self._window.pushed_back(failed.verdict)
                    return failed
        found = integrity_of(outcome.etag, outcome.headers)
        if found.check == "none":
            self._unverifiable(run, found.why)
        elif (bad := found.mismatch(outcome.md5)) is not None:
            return AttemptFailed(bad)
        self._window.stored(part.size)  # goodput: bytes the store acknowledged as sent
        return PartResult(part.number, outcome.etag, part.size)

    async def _put(
        self,
        run: _FileRun,
        target: Target,
        part: PartSpec,
        request: PartRequest,
        progress: Callable[[int], None],
    ) -> PutOutcome:
        """Send the part's bytes: through the sender, a data loop, or this loop."""
        cfg = self._config
        tls = target.tls(run.ctx)
        if self._sender is not None:
            return await self._sender.send(
                PartPut(run.info, part, request, run.hashing, tls), progress
            )
        put: Callable[..., Awaitable[PutOutcome]]
        if self._loops is not None and self._loops.takes(request):
            put = self._loops.put
        else:
            put = functools.partial(put_range, self._data, throttle=self._throttle)
        return await put(
            request,
            run.source.fd,
            part,
            chunk_size=cfg.chunk_for(self._window.size),  # the budget's share of each PUT
            stall_timeout=cfg.stall_timeout,
            on_progress=progress,
            md5=run.hashing,
            tls=tls,
        )

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
