"""The contract between the scheduler and a destination (a platform, a bucket, a caller).

``Services`` is everything a provider may use, handed in by ``Uploader``: the control-plane
HTTP session, the configuration, the retry policy, the clock, the journal for a key, the event
hook, the stop flag, and ``transfer`` (send one file's parts through the shared budget). A
provider never reaches into the engine or the client beyond it.

The scheduler drives a ``Target`` for one file, in this order:

1. ``prepare(ctx)``         create or resume the remote upload; return the part limits;
2. the scheduler plans parts from those limits (``engine.plan``);
3. ``stored_parts(plan, ctx)``  parts the remote already holds (resume); default: the journal;
4. ``part_request(part, ctx, refresh=...)`` for each part it sends (``refresh=True`` after
   an expired URL: the target must return a fresh one);
5. ``complete(parts, ctx)``  hand the ETags (in part order) to the platform; return where the
   file landed (a ``Remote`` of the target's ``remote_type``).

Targets record their platform ids in ``ctx.journal`` as typed facts (never URLs or tokens) so a
rerun can resume the same remote upload.

The server is the truth, the journal a hint: when the journal says a file is done, the
scheduler asks ``confirm(remote, ctx)`` first. Only a ``Confirmation`` with ``held`` skips the
file; anything else voids the journal's facts of the file (``UploadVoided``) and uploads it
again. The default is "cannot confirm" (upload again); ``PresignedMultipart``, whose caller
owns the destination, is taken at its word.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from inspect import isawaitable
from typing import TYPE_CHECKING, Final, Literal, Protocol

from engine.config import UploadConfig
from engine.events import Event, Phase
from engine.journal import FileJournal, JournalKey, presigned_key
from engine.models import (
    FileInfo,
    PartLimits,
    PartRequest,
    PartResult,
    PartSpec,
    PresignedRemote,
    Remote,
    UploadResult,
)
from engine.plan import S3_LIMITS

if TYPE_CHECKING:
    import ssl

    import aiohttp

    from engine.clock import Clock
    from engine.retry import RetryPolicy

__all__ = [
    "CONFIRMED",
    "Confirmation",
    "HasServices",
    "OnChange",
    "PresignedMultipart",
    "Services",
    "Target",
    "TargetContext",
]

OnChange = Literal["restart", "refuse"]


@dataclass(frozen=True, slots=True)
class Confirmation:
    """The destination's word on a file the journal says is done: ``held`` when it still
    holds exactly that upload; otherwise ``why`` says what it answered instead, in words."""

    held: bool
    why: str = ""


CONFIRMED: Final = Confirmation(held=True)


class Services(Protocol):
    """What a provider may use while it works (one per ``Uploader``)."""

    @property
    def http(self) -> aiohttp.ClientSession:
        """The control-plane pool (data PUTs use the engine's own)."""
        ...

    @property
    def config(self) -> UploadConfig: ...

    @property
    def retry(self) -> RetryPolicy: ...

    @property
    def clock(self) -> Clock: ...

    @property
    def on_change(self) -> OnChange: ...

    @property
    def stopping(self) -> bool:
        """True once a graceful stop began: start nothing new, finish what is in flight."""
        ...

    @property
    def force(self) -> bool:
        """Upload again what the journal says is done (``--force``): a new upload, a new
        version or model, never a resumed one."""
        ...

    async def wait_stopping(self) -> None:
        """Return once a graceful stop begins (a wait that must end at once on Ctrl-C races
        this)."""
        ...

    def emit(self, event: Event) -> None: ...

    def journal(self, key: JournalKey) -> FileJournal: ...

    def begin(self, key: JournalKey, info: FileInfo) -> FileJournal:
        """The journal of ``key``, started for ``info`` (a changed file restarts or is refused
        by ``on_change``; a restart is reported once, as a ``Phase``)."""
        ...

    async def transfer(self, info: FileInfo, target: Target) -> UploadResult:
        """Send one file to ``target`` through the shared budget; one ``UploadError`` if not."""
        ...


class HasServices(Protocol):
    """What the platform entry points take: an open ``Uploader`` (or any holder of services)."""

    @property
    def services(self) -> Services: ...


@dataclass(frozen=True, slots=True)
class TargetContext:
    """What a target may use while it works on one file."""

    file: FileInfo
    services: Services
    journal: FileJournal

    @property
    def http(self) -> aiohttp.ClientSession:
        return self.services.http

    @property
    def config(self) -> UploadConfig:
        return self.services.config

    def emit(self, event: Event) -> None:
        self.services.emit(event)

    def phase(self, message: str, progress: float | None = None) -> None:
        self.services.emit(Phase(self.file.path, message, progress))


class Target(ABC):
    """Where one file goes. See the module docstring for the call order."""

    #: short name used in reports ("matterport", "speckle", "s3", "presigned")
    kind: str = "target"
    #: the type ``complete`` returns (rebuilt from the journal for a file already done)
    remote_type: type[Remote] = PresignedRemote

    def journal_key(self, file: FileInfo) -> JournalKey:
        """The file's key in the journal: one per (destination, file). Override to add the
        endpoint, account, organization or project, so the same file sent elsewhere is not
        "done"."""
        return JournalKey(self.kind, (file.key,))

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
    async def complete(self, parts: Sequence[PartResult], ctx: TargetContext) -> Remote: ...

    async def confirm(self, remote: Remote, ctx: TargetContext) -> Confirmation:
        """Whether the destination still holds ``remote``, the journaled result of this file
        (asked before a "done" in the journal skips it). Override to ask the server."""
        return Confirmation(False, f"a {self.kind} destination cannot confirm earlier uploads")

    def tls(self, ctx: TargetContext) -> ssl.SSLContext | None:
        """A TLS context for this target's data PUTs instead of the uploader's (its own CA
        bundle), or ``None``."""
        return None

    async def abandon(self, ctx: TargetContext) -> None:
        """The file stopped unfinished (cancelled or failed) and no journal on disk keeps its
        remote upload for a rerun: release what ``prepare`` started (S3: abort the multipart
        upload). Called once, shielded from cancellation; the default does nothing."""
        return None


MaybeAwaitable = Awaitable[str | PartRequest] | str | PartRequest
PartURL = Callable[[int], MaybeAwaitable]
Complete = Callable[
    [Sequence[PartResult]], Awaitable[Mapping[str, str] | None] | Mapping[str, str] | None
]


class PresignedMultipart(Target):
    """Any destination that can hand out a presigned URL per part and accept the ETags.

    ``part_url(n)`` returns (or awaits to) the URL or a ``PartRequest`` for 1-based part
    ``n``; it is called again for a fresh URL after an expiry. ``complete(parts)`` receives
    the ``PartResult`` list in part order and may return ids for the result
    (``UploadResult.remote.ids``). ``limits`` constrains planning (``PartLimits(single=True)``
    for a single presigned PUT)."""

    kind = "presigned"
    remote_type = PresignedRemote

    def __init__(
        self, part_url: PartURL, complete: Complete, *, limits: PartLimits = S3_LIMITS
    ) -> None:
        self._part_url = part_url
        self._complete = complete
        self._limits = limits

    def __repr__(self) -> str:
        return f"<PresignedMultipart single={self._limits.single}>"

    def journal_key(self, file: FileInfo) -> JournalKey:
        return presigned_key(file)

    async def prepare(self, ctx: TargetContext) -> PartLimits:
        return self._limits

    async def part_request(
        self, part: PartSpec, ctx: TargetContext, *, refresh: bool
    ) -> PartRequest:
        got = self._part_url(part.number)
        value = await got if isawaitable(got) else got
        return value if isinstance(value, PartRequest) else PartRequest(url=str(value))

    async def complete(self, parts: Sequence[PartResult], ctx: TargetContext) -> PresignedRemote:
        got = self._complete(parts)
        value = await got if isawaitable(got) else got
        return PresignedRemote(ids={str(k): str(v) for k, v in (value or {}).items()})

    async def confirm(self, remote: Remote, ctx: TargetContext) -> Confirmation:
        return CONFIRMED  # the caller owns the destination: its journal is taken at its word
