"""How the Speckle plane behaves: :class:`SpeckleSandboxConfig`.

Rules this module keeps:

* A config is an immutable value, checked when made (``ValueError`` saying why): tokens are
  non-empty without spaces; projects a non-empty collection of non-empty strings; initial model
  names valid (see :func:`.records.check_model_name`); an ``additional_header`` a header name
  without whitespace or ``:`` and a value without CR/LF; positive ``size_limit`` and
  ``url_expiry``; ``step_delay >= 0``, ``processing_steps >= 1``, ``rate_limit_every`` ``>= 1``
  or ``None``, ``retry_after >= 0``; forced statuses among :data:`.records.ForcedStatus`.
* **Forced statuses.** ``status_rules`` (``fnmatch`` patterns on the file name, first match in
  order) win over ``force_status``; with neither, the content check decides. A forced ingestion
  ends with its status and the message in :data:`FORCED_MESSAGES`.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final, get_args

from engine.sandbox.blobstore import GiB
from engine.sandbox.speckle.errors import SpeckleApiError
from engine.sandbox.speckle.records import ForcedStatus, check_model_name

__all__ = ["FORCED_MESSAGES", "FORCED_STATUSES", "SpeckleSandboxConfig"]

FORCED_STATUSES: Final = frozenset(get_args(ForcedStatus))

FORCED_MESSAGES: Final[Mapping[str, str]] = {
    "failed": "The file importer failed to process the file (forced by the sandbox).",
    "cancelled": "The file import was cancelled (forced by the sandbox).",
    "timeout": "The file import timed out: no progress was reported in time (forced by the "
    "sandbox).",
    "invalidInput": "The file could not be imported: the input is invalid (forced by the sandbox).",
}


@dataclass(frozen=True, kw_only=True)
class SpeckleSandboxConfig:
    """How the Speckle plane behaves. Sizes in bytes, times in seconds.

    * ``tokens``: token → ids of the projects it may read and write.
    * ``projects``: the projects that exist (each named after its id).
    * ``initial_models``: model names every project starts with.
    * ``additional_header``: ``(name, value)`` returned by ``generateUploadUrl`` and signed into
      the URL, so the PUT must carry it; ``None`` returns an empty list.
    * ``size_limit``: the largest object ``startFileIngestion`` accepts.
    * ``url_expiry``: lifetime of an upload URL.
    * ``step_delay``, ``processing_steps``: an ingestion is queued for one step, processing for
      ``processing_steps`` steps, then terminal; ``step_delay=0`` makes it terminal at once.
    * ``rate_limit_every``: answer every N-th ``POST /graphql`` (N = 1 refuses all) with 429 and
      ``Retry-After: <retry_after>``; ``None`` never.
    * ``force_status``: impose this terminal status on every ingestion (no content check).
    * ``status_rules``: ``{fnmatch pattern on fileName: status}``; the first match (in order)
      imposes its status; checked before ``force_status``.
    * ``strict_status_union``: declare ``ModelIngestionStatusData`` as the real server's union,
      which refuses ``statusData { status }``; by default it is an interface that every status
      type implements, so the seed's own StartFileIngestion document (which selects ``status``
      directly) executes.
    * ``seed``: draw ids from ``random.Random(seed)`` (reproducible) instead of ``secrets``.
    """

    tokens: Mapping[str, Collection[str]] = field(
        default_factory=lambda: {"sandbox-token": frozenset({"sandbox-project"})}
    )
    projects: Collection[str] = frozenset({"sandbox-project"})
    initial_models: tuple[str, ...] = ("main",)
    additional_header: tuple[str, str] | None = None
    size_limit: int = 5 * GiB
    url_expiry: float = 3600.0
    step_delay: float = 0.05
    processing_steps: int = 3
    rate_limit_every: int | None = None
    retry_after: float = 0.2
    force_status: ForcedStatus | None = None
    status_rules: Mapping[str, ForcedStatus] = field(default_factory=dict)
    strict_status_union: bool = False
    seed: int | None = None

    def __post_init__(self) -> None:
        tokens = {str(token): frozenset(ids) for token, ids in self.tokens.items()}
        for token in tokens:
            if not token or token != token.strip() or " " in token:
                raise ValueError(f"a token must be non-empty without spaces, got {token!r}")
        projects = frozenset(self.projects)
        if not projects or any(not p or not isinstance(p, str) for p in projects):
            raise ValueError("projects must be a non-empty collection of non-empty strings")
        for name in self.initial_models:
            try:
                check_model_name(name.strip())
            except SpeckleApiError as exc:
                raise ValueError(f"bad initial model name {name!r}: {exc}") from None
        if self.additional_header is not None:
            name, value = self.additional_header
            if not name or any(c in name for c in " \t\r\n:") or any(c in value for c in "\r\n"):
                raise ValueError(f"bad additional_header {self.additional_header!r}")
        if self.size_limit <= 0:
            raise ValueError(f"size_limit must be positive, got {self.size_limit}")
        if self.url_expiry <= 0:
            raise ValueError(f"url_expiry must be positive, got {self.url_expiry}")
        if self.step_delay < 0 or self.processing_steps < 1:
            raise ValueError("need step_delay >= 0 and processing_steps >= 1")
        if self.rate_limit_every is not None and self.rate_limit_every < 1:
            raise ValueError(f"rate_limit_every must be >= 1 or None, got {self.rate_limit_every}")
        if self.retry_after < 0:
            raise ValueError(f"retry_after must be >= 0, got {self.retry_after}")
        if self.force_status is not None and self.force_status not in FORCED_STATUSES:
            raise ValueError(f"force_status must be one of {sorted(FORCED_STATUSES)}")
        for pattern, status in self.status_rules.items():
            if not pattern or status not in FORCED_STATUSES:
                raise ValueError(f"bad status rule {pattern!r}: {status!r}")
        object.__setattr__(self, "tokens", MappingProxyType(tokens))
        object.__setattr__(self, "projects", projects)
        object.__setattr__(self, "status_rules", MappingProxyType(dict(self.status_rules)))

    def forced_status_for(self, file_name: str) -> ForcedStatus | None:
        """The status imposed on an ingestion of ``file_name``, or ``None`` (content decides)."""
        for pattern, status in self.status_rules.items():
            if fnmatch.fnmatchcase(file_name, pattern):
                return status
        return self.force_status
