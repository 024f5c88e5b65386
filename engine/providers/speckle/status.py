"""An ingestion's status, read from any of the APIs, and the wait for it to end.

Reading (pure): ``read_status`` reads the v3 ``statusData`` union (by ``__typename`` and the
fields of each member); ``read_upload`` reads a v2 ``FileUpload`` (``convertedStatus`` 0 queued,
1 processing, 2 success with ``convertedVersionId``, 3 error with ``convertedMessage``:
speckle-server ``assets/fileuploads/typedefs/fileuploads.graphql``).

Waiting (``Watch.until_done``), the same for every API:
- the first status is asked at once; then, with a live feed, the next one comes from the
  subscription, with a poll as a backstop every ``_LIVE_BACKSTOP`` poll intervals (a change
  between the subscription's ``start`` and the server registering it would otherwise be
  missed); without one (or once it is lost) a poll every ``interval`` seconds, growing by half
  per poll up to ten times that;
- it ends with the status once it is terminal, with ``InterruptedUpload`` as soon as the run is
  stopping (every pause races ``services.wait_stopping()``), and with a
  ``ProcessingError`` (code ``deadline``) once ``deadline`` seconds have passed; neither of the
  last two voids anything: a rerun keeps waiting on the same ingestion;
- a terminal failure voids the upload in the journal (``UploadVoided``: the blob is registered
  and cannot be ingested twice), so a rerun starts over with a new blob;
- each change of status, message, progress or of the time left (minutes, then seconds in the
  last two minutes) is one ``Phase`` event; the time left is in its message.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any, Final

import anyio

from engine.errors import InterruptedUpload, ProcessingError
from engine.graphql import need_str
from engine.journal import UploadVoided
from engine.providers.speckle.documents import (
    CONVERTED_STATUS,
    FAILURE_TYPES,
    PLATFORM,
    TERMINAL_FAILURES,
)
from engine.providers.speckle.live import LiveFeed
from engine.target import TargetContext

__all__ = ["IngestionStatus", "Watch", "left_text", "read_status", "read_upload"]

_LIVE_BACKSTOP: Final = 30  # poll intervals between polls while a subscription is live


@dataclass(frozen=True, slots=True)
class IngestionStatus:
    """One status. ``failure`` is the server's reason once it ended without a version, else
    ``None``; ``progress`` is in [0, 1] when given; ``version_id`` is set once it succeeded."""

    status: str
    typename: str = ""
    message: str = ""
    progress: float | None = None
    version_id: str = ""
    failure: str | None = None

    @property
    def done(self) -> bool:
        return bool(self.version_id) or self.failure is not None

    @property
    def key(self) -> tuple[str, str, float | None]:
        return self.status, self.message, self.progress

    @property
    def phase(self) -> str:
        return f"ingestion {self.status}" + (f": {self.message}" if self.message else "")


def read_status(sd: dict[str, Any]) -> IngestionStatus:
    """The status a v3 ``statusData`` describes (a success without a ``versionId`` is a
    malformed answer: ``ServiceError``)."""
    status, typename = str(sd.get("status") or ""), str(sd.get("__typename") or "")
    progress = sd.get("progress")
    out = IngestionStatus(
        status=status,
        typename=typename,
        message=str(sd.get("progressMessage") or ""),
        progress=float(progress) if isinstance(progress, int | float) else None,
    )
    if status == "success":
        version_id = need_str(sd.get("versionId"), "Ingestion", PLATFORM, "versionId")
        return replace(out, version_id=version_id)
    if status in TERMINAL_FAILURES or typename in FAILURE_TYPES:
        reason = (
            sd.get("errorReason")
            or sd.get("validationMessage")
            or sd.get("cancellationMessage")
            or "no reason given"
        )
        return replace(out, failure=str(reason))
    return out


def read_upload(upload: dict[str, Any]) -> IngestionStatus:
    """The status a v2 ``FileUpload`` describes."""
    code = upload.get("convertedStatus")
    status = CONVERTED_STATUS.get(code, f"status {code}") if isinstance(code, int) else "queued"
    message = str(upload.get("convertedMessage") or "")
    if status == "success":
        version = need_str(upload.get("convertedVersionId"), "ModelUploads", PLATFORM, "version")
        return IngestionStatus(status, "FileUpload", version_id=version)
    if status == "failed":
        return IngestionStatus(status, "FileUpload", failure=message or "no reason given")
    return IngestionStatus(status, "FileUpload", message)


def left_text(seconds: float) -> str:
    """``"12 min left"``; in the last two minutes ``"45 s left"``."""
    if seconds >= 120:
        return f"{math.ceil(seconds / 60)} min left"
    return f"{max(0, math.ceil(seconds))} s left"


@dataclass(eq=False, slots=True)
class Watch:
    """The wait for one ingestion (module rules). ``poll`` asks its status once; ``read``
    turns a subscription's data into a status (``None``: ask by polling)."""

    ctx: TargetContext = field(repr=False)
    label: str  # "Speckle ingestion <id>", for messages
    poll: Callable[[], Awaitable[IngestionStatus]] = field(repr=False)
    read: Callable[[dict[str, Any]], IngestionStatus | None] = field(repr=False)
    interval: float
    deadline: float
    _start: float = field(default=0.0, init=False)
    _seen: tuple[Any, ...] = field(default=(), init=False)

    def left(self) -> float:
        return self.deadline - (self.ctx.services.clock.monotonic() - self._start)

    async def pause(self, seconds: float) -> None:
        """Sleep ``seconds`` on the services' clock, or less: until the run is stopping."""
        services = self.ctx.services
        if services.stopping or seconds <= 0:
            return
        async with anyio.create_task_group() as tg:

            async def sleep() -> None:
                await services.clock.sleep(seconds)
                tg.cancel_scope.cancel()

            async def stop() -> None:
                await services.wait_stopping()
                tg.cancel_scope.cancel()

            tg.start_soon(sleep)
            tg.start_soon(stop)

    async def until_done(self, feed: LiveFeed | None) -> IngestionStatus:
        """The terminal success; raise on a failure, a stop or the deadline."""
        self._start = self.ctx.services.clock.monotonic()
        step = self.interval
        status = await self.poll()
        while True:
            self._report(status)
            if status.version_id:
                return status
            self._check(status)
            if feed is not None and not feed.lost:
                backstop = min(self.interval * _LIVE_BACKSTOP, self.left())
                data = await feed.wait(partial(self.pause, backstop))
                got = self.read(data) if data is not None else None
                if got is None and not self.ctx.services.stopping:
                    got = await self.poll()
                status = got or status
                continue
            await self.pause(min(step, self.left()))
            step = min(step * 1.5, self.interval * 10)
            if not self.ctx.services.stopping:
                status = await self.poll()

    def _check(self, status: IngestionStatus) -> None:
        ctx = self.ctx
        name = ctx.file.path.name
        if status.failure is not None:
            ctx.journal.record(UploadVoided())  # the blob is spent: a rerun starts over
            raise ProcessingError(
                f"{name}: {self.label} ended {status.status or status.typename}: {status.failure}",
                code=status.status,
            )
        if ctx.services.stopping:
            raise InterruptedUpload(
                f"{name}: stopped while {self.label} was {status.status}; rerun to keep waiting"
            )
        if self.left() <= 0:
            raise ProcessingError(
                f"{name}: {self.label} still {status.status} after {self.deadline:g} s; "
                "rerun to keep waiting (or give it longer: --processing-timeout)",
                code="deadline",
            )

    def _report(self, status: IngestionStatus) -> None:
        left = "" if status.done else left_text(self.left())
        if (status.key, left) != self._seen:
            self._seen = (status.key, left)
            text = f"{status.phase} ({left})" if left else status.phase
            self.ctx.phase(text, status.progress)
