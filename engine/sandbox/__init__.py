"""The other side of the wire: a local emulator of S3-style blob storage and of both platforms.

Rules this package keeps:

* It shares no code with the client side (``engine/*.py`` outside ``engine/sandbox/``), so a bug
  cannot hide by agreeing with itself; it uses only the stdlib, aiohttp, anyio, orjson,
  graphql-core (the control planes), crc32c (E57 pages) and botocore (S3 storage, on demand).
* Everything runs in the caller's event loop: ``async with Sandbox(SandboxConfig(...)) as sb``.
* Faults are seeded and deterministic (:class:`FaultPlan`), so a failing test replays exactly.
* Importing the package is cheap: the server (and with it both control planes) is imported on
  first use of :class:`Sandbox`, :class:`SandboxConfig` or :func:`serve`, which also keeps
  ``python -m engine.sandbox.server`` free of double-import warnings.

Where things are: :mod:`.server` (the aiohttp application, :class:`Sandbox`, :func:`serve`),
:mod:`.config` (:class:`SandboxConfig`), :mod:`.options` (the serve options both entry points
share), :mod:`.blobstore` (the S3-faithful blob store), :mod:`.s3store` (real S3 storage behind
the planes), :mod:`.matterport` and :mod:`.speckle` (the control planes, SDL in
``matterport.graphql``/``speckle.graphql``), :mod:`.faults`, :mod:`.e57`, :mod:`.ifc`,
:mod:`.responses` (JSON answers).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from engine.sandbox.blobstore import BlobError, BlobStore, StoredObject, StoredPart
from engine.sandbox.faults import FaultPlan

if TYPE_CHECKING:
    from engine.sandbox.server import Sandbox, SandboxConfig, serve

__all__ = [
    "BlobError",
    "BlobStore",
    "FaultPlan",
    "Sandbox",
    "SandboxConfig",
    "StoredObject",
    "StoredPart",
    "serve",
]

_FROM_SERVER = frozenset({"Sandbox", "SandboxConfig", "serve"})


def __getattr__(name: str) -> Any:
    if name in _FROM_SERVER:
        from engine.sandbox import server

        return getattr(server, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
