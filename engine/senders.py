"""Who else may move a part's bytes for the scheduler (``engine.transfer``): the seams.

- ``PartSender``: another process or machine (``engine.cluster``: the workers of a Dask
  cluster); the scheduler's limiter is then the sender's ``slots`` big;
- ``DataLoops``: other threads of this process that take some PUTs (HTTPS on several cores):
  worker threads on blocking sockets (``engine.tlsthreads``, the default), or event loops
  (``engine.loops``).

Either only sends: the scheduler keeps the limiter, part URLs, retries, ETag checks and the
journal, and the caller's loop runs all of it.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from engine.models import FileInfo, PartRequest, PartSpec
from engine.transport import PutOutcome

__all__ = ["DataLoops", "PartPut", "PartSender"]


@dataclass(frozen=True, slots=True)
class PartPut:
    """One PUT the engine wants made: ``part`` of ``info``'s file, as ``request`` says.
    ``md5``: hash the bytes sent; ``tls``: the target's own TLS context, if it has one."""

    info: FileInfo
    part: PartSpec
    request: PartRequest
    md5: bool
    tls: ssl.SSLContext | None = None


class DataLoops(Protocol):
    """Other event loops of this process that move some PUTs (``engine.loops``: HTTPS on
    several cores). ``takes`` says which; ``put`` is ``put_range`` on one of them."""

    def takes(self, request: PartRequest) -> bool: ...

    async def put(
        self,
        request: PartRequest,
        fd: int,
        part: PartSpec,
        *,
        chunk_size: int,
        stall_timeout: float,
        on_progress: Callable[[int], None],
        md5: bool,
        tls: ssl.SSLContext | None,
    ) -> PutOutcome: ...


class PartSender(Protocol):
    """Moves parts' bytes for the engine from elsewhere (``engine.cluster``). It only sends:
    the engine keeps the limiter (``slots`` PUTs at once), retries, ETag checks and the journal.
    ``send`` returns what ``put_range`` returns or raises ``AttemptFailed``; it may be asked for
    the same part again, and reports bytes through ``on_progress`` as ``put_range`` does."""

    @property
    def slots(self) -> int: ...

    async def send(self, put: PartPut, on_progress: Callable[[int], None]) -> PutOutcome: ...
