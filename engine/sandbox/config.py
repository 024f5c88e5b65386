"""How to run the sandbox: :class:`SandboxConfig`, checked when it is made.

Rules this module keeps:

* A config is an immutable value, checked in ``__post_init__``: a port in ``0..65535``, a
  non-empty secret, ``0 <= min_part_size <= max_part_size``, and a ``storage_url`` that
  :meth:`~engine.sandbox.s3store.S3Location.parse` accepts; a refusal is a ``ValueError``
  saying why.
* **Fault injection applies to the sandbox's own blob store only**: a ``storage_url`` together
  with an active :class:`~engine.sandbox.faults.FaultPlan` (faults or latency) is refused; so is
  a ``storage_mode`` other than ``s3`` (the modes are the own store's, see
  :mod:`engine.sandbox.blobstore.modes`), which must be one of ``s3``, ``kms``, ``sse-c``,
  ``azure``. ``max_object_size`` (the largest single PUT; ``None``: the mode's, 5 GiB for S3,
  5000 MiB for Azure's Put Blob) must be positive.
* ``control_latency`` (seconds, a finite number ``>= 0``) is a **simulation knob, not a service
  behaviour**: every control-plane request (both GraphQL endpoints, Speckle's REST upload and
  subscription upgrade) is answered that much later, as over a wide-area link. It is kept apart
  from the blob store's ``faults.latency`` (data requests), and applies with external storage too.
* The presigning secret is random per process unless given, and never shown in ``repr``.
* Importing this module is cheap: it imports neither the server nor a control plane (the S3
  storage module only when a ``storage_url`` is checked).
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from engine.sandbox.blobstore import MiB
from engine.sandbox.blobstore.modes import MODES
from engine.sandbox.faults import FaultPlan

__all__ = ["SandboxConfig"]

_PROCESS_SECRET: Final = secrets.token_bytes(32)


@dataclass(frozen=True, kw_only=True)
class SandboxConfig:
    """How to run the sandbox. Sizes in bytes.

    ``data_dir=None`` uses a temporary directory removed on exit (none at all with ``discard``).
    ``port=0`` binds an ephemeral port. ``secret`` signs presigned URLs (random per process).
    ``matterport`` / ``speckle`` are the control planes' own configs (``None``: their defaults).
    ``storage_url``: keep blobs in S3-compatible storage instead (``s3://BUCKET[/PREFIX]?
    endpoint_url=...``, see :mod:`engine.sandbox.s3store`); ``data_dir`` then holds validation
    copies, and ``faults`` must be empty: fault injection does not apply to external storage.
    ``storage_mode``: which real store the own blob store answers as (``s3``, ``kms``, ``sse-c``,
    ``azure``); ``max_object_size``: its largest single PUT (``None``: the mode's).
    ``control_latency``: seconds added before every control-plane answer (a simulation of a
    wide-area round trip, not a behaviour of either service; 0: none).
    """

    data_dir: Path | None = None
    host: str = "127.0.0.1"
    port: int = 0
    secret: bytes = field(default=_PROCESS_SECRET, repr=False)
    discard: bool = False
    faults: FaultPlan = field(default_factory=FaultPlan)
    min_part_size: int = 5 * MiB
    max_part_size: int = 5 * 1024 * MiB
    matterport: Any = None
    speckle: Any = None
    storage_url: str | None = None
    storage_mode: str = "s3"
    max_object_size: int | None = None
    control_latency: float = 0.0

    def __post_init__(self) -> None:
        if not (0 <= self.port <= 65535):
            raise ValueError(f"port must be in 0..65535, got {self.port}")
        if not self.secret:
            raise ValueError("secret must not be empty")
        if not (0 <= self.min_part_size <= self.max_part_size):
            raise ValueError("need 0 <= min_part_size <= max_part_size")
        if self.storage_mode not in MODES:
            raise ValueError(
                f"storage_mode must be one of {', '.join(MODES)}, not {self.storage_mode!r}"
            )
        if self.max_object_size is not None and self.max_object_size <= 0:
            raise ValueError(f"max_object_size must be positive, got {self.max_object_size}")
        if not (self.control_latency >= 0.0 and math.isfinite(self.control_latency)):
            raise ValueError(
                f"control_latency must be a finite number of seconds >= 0, got "
                f"{self.control_latency}"
            )
        if self.storage_url is not None:
            from engine.sandbox.s3store import S3Location

            S3Location.parse(self.storage_url)  # raises ValueError with the reason
            if self.storage_mode != "s3":
                raise ValueError(
                    "storage modes are the sandbox's own blob store's, not external storage's "
                    "(storage_url)"
                )
            if self.faults.active:
                raise ValueError(
                    "fault injection applies to the sandbox's own blob store only, not to "
                    "external storage (storage_url)"
                )
