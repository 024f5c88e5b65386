"""The contract between the scheduler and a destination (a platform, a bucket, a caller).

The scheduler drives a ``Target`` for one file, in this order:

1. ``prepare(ctx)``         create or resume the remote upload; return the part limits;
2. the scheduler plans parts from those limits (``engine.plan``);
3. ``stored_parts(plan, ctx)``  parts the remote already holds (resume); default: the journal;
4. ``part_request(part, ctx, refresh=...)`` for each part it sends (``refresh=True`` after
   an expired URL: the target must return a fresh one);
5. ``complete(parts, ctx)``  hand the ETags (in part order) to the platform; return its ids.

Targets record their platform ids in ``ctx.journal`` (never URLs or tokens) so a rerun can
resume the same remote upload.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from inspect import isawaitable

import aiohttp

from engine.config import UploadConfig
from engine.events import EventHook, Phase
from engine.journal import FileJournal
from engine.models import FileInfo, PartLimits, PartRequest, PartResult, PartSpec
from engine.plan import S3_LIMITS

__all__ = ["PresignedMultipart", "Target", "TargetContext"]


@dataclass(frozen=True, slots=True)
class TargetContext:
    """What a target may use while it works on one file."""

    file: FileInfo
    http: aiohttp.ClientSession  # for control-plane calls (data PUTs use the engine's pool)
    config: UploadConfig
    journal: FileJournal
    emit: EventHook

    def phase(self, message: str, progress: float | None = None) -> None:
        self.emit(Phase(self.file.path, message, progress))


class Target(ABC):
    """Where one file goes. See the module docstring for the call order."""

    #: short name used in reports ("matterport", "speckle", "s3", "presigned")
    kind: str = "target"

    def journal_key(self, file: FileInfo) -> str:
        """The file's key in the journal: one per (destination, file). Override to add the
        account, organization or project, so the same file sent elsewhere is not "done"."""
        return f"{self.kind}:{file.key}"

    @abstractmethod
    async def prepare(self, ctx: TargetContext) -> PartLimits: ...

    async def stored_parts(
        self, plan: Sequence[PartSpec], ctx: TargetContext
    ) -> dict[int, PartResult]:
        sizes = {p.number: p.size for p in plan}
        return {n: r for n, r in ctx.journal.state.parts.items() if sizes.get(n) == r.size}

    @abstractmethod
    async def part_request(
        self, part: PartSpec, ctx: TargetContext, *, refresh: bool
    ) -> PartRequest: ...

    @abstractmethod
    async def complete(
        self, parts: Sequence[PartResult], ctx: TargetContext
    ) -> Mapping[str, str]: ...


MaybeAwaitable = Awaitable[str | PartRequest] | str | PartRequest
PartURL = Callable[[int], MaybeAwaitable]
Complete = Callable[
    [Sequence[PartResult]], Awaitable[Mapping[str, str] | None] | Mapping[str, str] | None
]


class PresignedMultipart(Target):
    """Any destination that can hand out a presigned URL per part and accept the ETags.

    ``part_url(n)`` returns (or awaits to) the URL or a ``PartRequest`` for 1-based part
    ``n``; it is called again for a fresh URL after an expiry. ``complete(parts)`` receives
    the ``PartResult`` list in part order and may return ids for the result. ``limits``
    constrains planning (``PartLimits(single=True)`` for a single presigned PUT)."""

    kind = "presigned"

    def __init__(
        self, part_url: PartURL, complete: Complete, *, limits: PartLimits = S3_LIMITS
    ) -> None:
        self._part_url = part_url
        self._complete = complete
        self._limits = limits

    def __repr__(self) -> str:
        return f"<PresignedMultipart single={self._limits.single}>"

    async def prepare(self, ctx: TargetContext) -> PartLimits:
        return self._limits

    async def part_request(
        self, part: PartSpec, ctx: TargetContext, *, refresh: bool
    ) -> PartRequest:
        got = self._part_url(part.number)
        value = await got if isawaitable(got) else got
        return value if isinstance(value, PartRequest) else PartRequest(url=str(value))

    async def complete(self, parts: Sequence[PartResult], ctx: TargetContext) -> Mapping[str, str]:
        got = self._complete(parts)
        value = await got if isawaitable(got) else got
        return dict(value or {})
