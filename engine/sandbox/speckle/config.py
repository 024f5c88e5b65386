"""How the Speckle plane behaves: :class:`SpeckleSandboxConfig`.

Rules this module keeps:

* A config is an immutable value, checked when made (``ValueError`` saying why): tokens are
  non-empty without spaces; projects a non-empty collection of non-empty strings; initial model
  names valid (see :func:`.records.check_model_name`); an ``additional_header`` a header name
  without whitespace or ``:`` and a value without CR/LF; positive ``size_limit``,
  ``url_expiry``, ``ws_keepalive`` and rates; ``step_delay >= 0``, ``processing_steps >= 1``,
  ``rate_limit_every`` ``>= 1`` or ``None``, ``retry_after >= 0``; forced statuses among
  :data:`.records.ForcedStatus`; ``speckle_api`` and ``server_kind`` among their values.
* **Defaults are the public server's** (``packages/server/modules/shared/helpers/envHelper.ts``
  and ``modules/core/utils/ratelimiter.ts``): ``FILE_SIZE_LIMIT_MB`` 100, ``FILE_UPLOAD_URL_EXPIRY_
  MINUTES`` 1440, the rate limiter on (``RATELIMITER_ENABLED`` true) with ``POST /graphql`` at 50
  a second and a burst of 200 a minute; ``server_kind`` is ``app`` for the v3 API (only
  app.speckle.systems is known to serve it) and ``self-hosted`` otherwise.
* **Forced statuses.** ``status_rules`` (``fnmatch`` patterns on the file name, first match in
  order) win over ``force_status``; with neither, the content check decides. A forced ingestion
  ends with its status and the message in :data:`FORCED_MESSAGES`.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final, Literal, get_args

from engine.sandbox.blobstore import MiB
from engine.sandbox.speckle.errors import SpeckleApiError
from engine.sandbox.speckle.formats import SERVER_KINDS, ServerKind, accepted_extensions
from engine.sandbox.speckle.records import ForcedStatus, check_model_name

__all__ = [
    "FORCED_MESSAGES",
    "FORCED_STATUSES",
    "SPECKLE_APIS",
    "SpeckleApi",
    "SpeckleSandboxConfig",
]

FORCED_STATUSES: Final = frozenset(get_args(ForcedStatus))

SpeckleApi = Literal["v3", "v2", "legacy"]
SPECKLE_APIS: Final = ("v3", "v2", "legacy")

_VERSIONS: Final[Mapping[str, str]] = {
    "v3": "3.0.23",  # sandbox guess: the SDKs name 3.0.3+ (ingestion API) and ~3.0.23
    "v2": "2.31.14",  # the newest public speckle-server tag
    "legacy": "2.25.7",  # the last tag before presigned uploads (2.25.8)
}

FORCED_MESSAGES: Final[Mapping[str, str]] = {
    "failed": "The file importer failed to process the file (forced by the sandbox).",
    "cancelled": "The file import was cancelled (forced by the sandbox).",
    "timeout": "The file import timed out: no progress was reported in time (forced by the "
    "sandbox).",
    "invalidInput": "The file could not be imported: the input is invalid (forced by the sandbox).",
}


@dataclass(frozen=True, kw_only=True)
class SpeckleSandboxConfig:
    """How the Speckle plane behaves. Sizes in bytes, times in seconds, rates in requests.

    * ``tokens``: token → ids of the projects it may read and write.
    * ``projects``: the projects that exist (each named after its id).
    * ``initial_models``: model names every project starts with.
    * ``speckle_api``: ``v3`` (app.speckle.systems: generateUploadUrl with
      additionalRequestHeaders, startFileIngestion, Project.ingestion, Model.ingestionHistory,
      the projectModelIngestionUpdated subscription); ``v2`` (the public speckle-server since
      2.25.8: generateUploadUrl, startFileImport, Model.uploads, the legacy REST upload);
      ``legacy`` (before 2.25.8: no fileUploadMutations, only the REST upload).
    * ``server_kind``: ``app`` (IFC and the Rhino importer's formats) or ``self-hosted`` (IFC
      only); ``None``: ``app`` for v3, ``self-hosted`` otherwise.
    * ``server_version``: ``serverInfo.version``; ``None``: one per API (see ``_VERSIONS``).
    * ``additional_header``: ``(name, value)`` returned by v3's ``generateUploadUrl`` and signed
      into the URL, so the PUT must carry it; ``None`` returns an empty list.
    * ``size_limit``: ``blobSizeLimitBytes``, the largest file a completion (or the REST upload)
      accepts. GraphQL's ``Int`` is 32-bit: above 2 GiB - 1 the field errors, as on the server.
    * ``url_expiry``: lifetime of an upload URL.
    * ``step_delay``, ``processing_steps``: an ingestion is queued for one step, processing for
      ``processing_steps`` steps, then terminal; ``step_delay=0`` makes it terminal at once.
    * ``rate_limit_per_second``, ``rate_limit_burst``: ``POST /graphql`` allows this many requests
      a second per token (or address), then ``rate_limit_burst`` more a minute; every other route
      500 and 2000. ``None`` switches the limiter off.
    * ``rate_limit_every``: fault injection (sandbox rule): answer every N-th ``POST /graphql``
      with 429 and ``Retry-After: <retry_after>``; ``None`` never.
    * ``force_status``, ``status_rules``: impose a terminal status (``status_rules``:
      ``{fnmatch pattern on fileName: status}``, first match wins, before ``force_status``).
    * ``status_interface``: the sandbox's old lenient schema: ``ModelIngestionStatusData`` as an
      interface every status type implements, so ``statusData { status }`` executes; by default
      it is the real server's union, which refuses that selection.
    * ``ws_keepalive``: seconds between ``ka`` messages on a subscription socket.
    * ``seed``: draw ids from ``random.Random(seed)`` (reproducible) instead of ``secrets``.
    """

    tokens: Mapping[str, Collection[str]] = field(
        default_factory=lambda: {"sandbox-token": frozenset({"sandbox-project"})}
    )
    projects: Collection[str] = frozenset({"sandbox-project"})
    initial_models: tuple[str, ...] = ("main",)
    speckle_api: SpeckleApi = "v3"
    server_kind: ServerKind | None = None
    server_version: str | None = None
    additional_header: tuple[str, str] | None = None
    size_limit: int = 100 * MiB
    url_expiry: float = 1440 * 60.0
    step_delay: float = 0.05
    processing_steps: int = 3
    rate_limit_per_second: int | None = 50
    rate_limit_burst: int = 200
    rate_limit_every: int | None = None
    retry_after: float = 0.2
    force_status: ForcedStatus | None = None
    status_rules: Mapping[str, ForcedStatus] = field(default_factory=dict)
    status_interface: bool = False
    ws_keepalive: float = 30.0
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
                check_model_name(name)
            except SpeckleApiError as exc:
                raise ValueError(f"bad initial model name {name!r}: {exc}") from None
        self._check_values()
        kind = self.server_kind or ("app" if self.speckle_api == "v3" else "self-hosted")
        object.__setattr__(self, "server_kind", kind)
        object.__setattr__(self, "server_version", self.server_version or _VERSIONS[self.api])
        object.__setattr__(self, "tokens", MappingProxyType(tokens))
        object.__setattr__(self, "projects", projects)
        object.__setattr__(self, "status_rules", MappingProxyType(dict(self.status_rules)))

    def _check_values(self) -> None:
        if self.speckle_api not in SPECKLE_APIS:
            raise ValueError(f"speckle_api must be one of {', '.join(SPECKLE_APIS)}")
        if self.server_kind is not None and self.server_kind not in SERVER_KINDS:
            raise ValueError(f"server_kind must be one of {', '.join(SERVER_KINDS)}")
        if self.additional_header is not None:
            name, value = self.additional_header
            if not name or any(c in name for c in " \t\r\n:") or any(c in value for c in "\r\n"):
                raise ValueError(f"bad additional_header {self.additional_header!r}")
        for name in ("size_limit", "url_expiry", "ws_keepalive", "rate_limit_burst"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.rate_limit_per_second is not None and self.rate_limit_per_second < 1:
            raise ValueError("rate_limit_per_second must be >= 1 or None")
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

    @property
    def api(self) -> SpeckleApi:
        return self.speckle_api

    @property
    def kind(self) -> ServerKind:
        """The server kind (``server_kind`` resolved)."""
        return self.server_kind or "app"

    @property
    def version(self) -> str:
        """``serverInfo.version`` (``server_version`` resolved)."""
        return self.server_version or _VERSIONS[self.api]

    @property
    def accepted_extensions(self) -> frozenset[str]:
        """What this server ingests (lower case, no dot)."""
        return accepted_extensions(self.kind)

    def forced_status_for(self, file_name: str) -> ForcedStatus | None:
        """The status imposed on an ingestion of ``file_name``, or ``None`` (content decides)."""
        for pattern, status in self.status_rules.items():
            if fnmatch.fnmatchcase(file_name, pattern):
                return status
        return self.force_status
