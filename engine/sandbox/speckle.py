"""The Speckle control plane of the sandbox: ``POST /graphql`` for the file-ingestion flow.

It executes client documents against ``speckle.graphql`` (names and nullability from
specklesystems/speckle-server) with graphql-core, so a wrong field, type or variable is refused as
the real server refuses it. Rules this module keeps, each one the real server's unless marked:

* **Order at the door.** Every ``POST /graphql`` passes the rate limiter first (sandbox rule:
  every ``rate_limit_every``-th request, counted from 1, gets HTTP 429 with a fractional
  ``Retry-After``), then authentication: ``Authorization: Bearer <token>`` naming a configured
  token, else HTTP 403 ``{"error": "Your token is not valid."}`` before any GraphQL runs.
* **Apollo Server 4's HTTP answers.** A body that is not a JSON object with a non-empty ``query``
  → 400 ``BAD_REQUEST``; a syntax error → 400 ``GRAPHQL_PARSE_FAILED``; a document the schema
  refuses → 400 ``GRAPHQL_VALIDATION_FAILED``; an unknown or ambiguous operation → 400
  ``OPERATION_RESOLUTION_FAILURE``; variables that do not fit their types → 200 ``BAD_USER_INPUT``
  (no ``data``); resolver errors → 200, ``data`` nulled as the schema's nullability dictates and
  ``errors[].extensions.code`` set.
* **Access.** A project not configured → ``STREAM_NOT_FOUND``; configured but not among the
  token's projects → ``FORBIDDEN``. The same rule guards reads and writes.
* **generateUploadUrl** refuses a file name without an extension (``USER_INPUT_ERROR``), draws a
  ``fileId`` of 10 lowercase hex characters (``crypto-random-string``'s default, as the real
  server), records the blob as *pending* and presigns one ``PUT`` of key
  ``speckle/<projectId>/<fileId>``. With ``additional_header`` configured, that header is returned
  in ``additionalRequestHeaders`` *and* signed into the URL, so the blob store refuses a PUT
  without it (403 ``SignatureDoesNotMatch``).
* **startFileIngestion** checks, in this order, each with its own error: ``etag`` not empty
  (``USER_INPUT_ERROR``); the blob was generated for this project (``USER_INPUT_ERROR``, "Please
  use mutation generateUploadUrl…"); the blob is still pending (``ALREADY_REGISTERED_BLOB_ERROR``:
  a second call for a fileId always fails, whether the first succeeded or failed on size); the
  object is stored (``STORED_BLOB_ACCESS_ERROR``); ``etag`` equals the stored ETag as raw
  strings, quotes included (``USER_INPUT_ERROR`` "ETag mismatch…"); ``0 < size <= size_limit``
  (``USER_INPUT_ERROR``, and the blob is marked failed for good). The blob is then registered;
  only after that is the model looked up (``MODEL_NOT_FOUND``), so a call with a wrong model
  consumes the blob, as on the real server.
* **Ingestion life** is a pure function of the time since ``startFileIngestion`` (``clock``):
  ``queued`` during the first ``step_delay``, then ``processing`` for ``processing_steps`` steps
  of ``step_delay`` each (``progress`` = k/(steps+1), rising), then terminal. The mutation's own
  answer is always ``queued``. The terminal verdict is decided once, by the first status query
  that needs it: a forced status (``force_status`` or the first matching ``status_rules``
  pattern) or else the content check, run in a worker thread: ``.ifc`` needs the
  ``ISO-10303-21;`` header, ``.e57`` must pass :func:`engine.sandbox.e57.validate_e57`, any other
  extension fails as unsupported (in discard mode, with no bytes kept, the extension alone
  decides). A successful ingestion creates exactly one version of its model.
* **Status types.** ``success`` → ``ModelIngestionSuccessStatus``; ``failed`` and ``timeout`` →
  ``ModelIngestionFailedStatus``; ``cancelled`` → ``ModelIngestionCancelledStatus``;
  ``invalidInput`` → ``ModelIngestionInvalidStatus``; every object carries ``__typename``.
  On the real server ``statusData`` is a union of these, which refuses ``statusData { status }``
  — yet the seed's StartFileIngestion document selects exactly that. The sandbox therefore
  declares ``ModelIngestionStatusData`` as an interface (``status``) that all six implement, so
  the seed's documents and fragment-style documents both run (sandbox rule);
  ``strict_status_union=True`` restores the real union to catch non-portable documents.
* **Models.** Each configured project starts with the models in ``initial_models`` (the real
  server makes ``main``). Names are trimmed, must not be empty or start with ``#``/``$``, start or
  end with ``/``, contain ``//``, ``,`` or ``\\`` (``BRANCH_NAME_ERROR``), and are unique per
  project, case-insensitively (``BRANCH_CREATE_ERROR``). Find one by name with
  ``project.modelByName(name)`` or ``project.models(filter: {search})``.
* **No background tasks.** Nothing runs between requests, so there is nothing to cancel at
  shutdown; all state belongs to the event loop thread.

This is the sandbox's side of the wire: it shares no code with the client (``engine/*.py``).
"""

from __future__ import annotations

import base64
import fnmatch
import inspect
import random
import secrets
from collections import Counter
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from time import monotonic
from types import MappingProxyType
from typing import Any, Final, Literal, TypeAlias, TypeVar, get_args

import anyio.to_thread
import orjson
from aiohttp import web
from graphql import (
    ExecutionResult,
    GraphQLError,
    GraphQLInterfaceType,
    GraphQLObjectType,
    GraphQLResolveInfo,
    GraphQLSchema,
    GraphQLUnionType,
    build_schema,
    execute,
    get_operation_ast,
    parse,
    validate,
)

from engine.sandbox.blobstore import BlobStore
from engine.sandbox.ifc import is_ifc_header

__all__ = [
    "ALREADY_REGISTERED_BLOB_ERROR",
    "BAD_REQUEST",
    "BAD_USER_INPUT",
    "BRANCH_CREATE_ERROR",
    "BRANCH_NAME_ERROR",
    "FORBIDDEN",
    "GRAPHQL_PARSE_FAILED",
    "GRAPHQL_VALIDATION_FAILED",
    "INVALID_TOKEN_BODY",
    "MODEL_NOT_FOUND",
    "NOT_FOUND",
    "OPERATION_RESOLUTION_FAILURE",
    "STORED_BLOB_ACCESS_ERROR",
    "STREAM_NOT_FOUND",
    "USER_INPUT_ERROR",
    "BlobRecord",
    "ForcedStatus",
    "IngestionRecord",
    "ModelRecord",
    "SpeckleApiError",
    "SpecklePlane",
    "SpeckleSandboxConfig",
    "StatusSnapshot",
    "TerminalStatus",
    "Verdict",
    "VersionRecord",
    "check_blob",
    "ingestion_phase",
    "snapshot_for_phase",
    "terminal_snapshot",
]

GiB: Final = 1024**3

# ---- error codes (extensions.code) -----------------------------------------------------------
FORBIDDEN: Final = "FORBIDDEN"
STREAM_NOT_FOUND: Final = "STREAM_NOT_FOUND"
MODEL_NOT_FOUND: Final = "MODEL_NOT_FOUND"
NOT_FOUND: Final = "NOT_FOUND"
USER_INPUT_ERROR: Final = "USER_INPUT_ERROR"
ALREADY_REGISTERED_BLOB_ERROR: Final = "ALREADY_REGISTERED_BLOB_ERROR"
STORED_BLOB_ACCESS_ERROR: Final = "STORED_BLOB_ACCESS_ERROR"
BRANCH_NAME_ERROR: Final = "BRANCH_NAME_ERROR"
BRANCH_CREATE_ERROR: Final = "BRANCH_CREATE_ERROR"
# Apollo Server 4's own codes.
BAD_REQUEST: Final = "BAD_REQUEST"
GRAPHQL_PARSE_FAILED: Final = "GRAPHQL_PARSE_FAILED"
GRAPHQL_VALIDATION_FAILED: Final = "GRAPHQL_VALIDATION_FAILED"
OPERATION_RESOLUTION_FAILURE: Final = "OPERATION_RESOLUTION_FAILURE"
BAD_USER_INPUT: Final = "BAD_USER_INPUT"
INTERNAL_SERVER_ERROR: Final = "INTERNAL_SERVER_ERROR"

INVALID_TOKEN_BODY: Final = {"error": "Your token is not valid."}
"""The JSON body of the HTTP 403 sent for a missing or unknown token."""

_RATE_LIMITED_MESSAGE: Final = (
    "You have sent too many requests. You are being rate limited. Please try again later."
)

ForcedStatus = Literal["failed", "cancelled", "timeout", "invalidInput"]
"""A terminal status the configuration can impose on an ingestion instead of the content check."""
_FORCED_STATUSES: Final = frozenset(get_args(ForcedStatus))

TerminalStatus = Literal["success", "failed", "cancelled", "timeout", "invalidInput"]

_FORCED_MESSAGES: Final[Mapping[str, str]] = {
    "failed": "The file importer failed to process the file (forced by the sandbox).",
    "cancelled": "The file import was cancelled (forced by the sandbox).",
    "timeout": "The file import timed out: no progress was reported in time (forced by the "
    "sandbox).",
    "invalidInput": "The file could not be imported: the input is invalid (forced by the sandbox).",
}

_SCHEMA_PATH: Final = Path(__file__).with_name("speckle.graphql")
_ID_ALPHABET: Final = "0123456789abcdef"
_BRANCH_NAME_RULE: Final = (
    'Branch names cannot start with "#", "$", start or end with "/", have multiple slashes next '
    'to each other (e.g., "//") or contain commas or backwards slashes.'
)
_MAX_PAGE: Final = 100
_T = TypeVar("_T")


# --------------------------------------------------------------------------------------------------
# Configuration.


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
                _check_model_name(name.strip())
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
        if self.force_status is not None and self.force_status not in _FORCED_STATUSES:
            raise ValueError(f"force_status must be one of {sorted(_FORCED_STATUSES)}")
        for pattern, status in self.status_rules.items():
            if not pattern or status not in _FORCED_STATUSES:
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


# --------------------------------------------------------------------------------------------------
# Records (frozen; the plane replaces them as state changes) and errors.


@dataclass(frozen=True, slots=True)
class ModelRecord:
    """A model. ``created_at``/``updated_at`` are RFC 3339 strings; ``order`` sorts by update."""

    id: str
    project_id: str
    name: str
    description: str | None
    created_at: str
    updated_at: str
    order: int


@dataclass(frozen=True, slots=True)
class BlobRecord:
    """A file announced by ``generateUploadUrl``. ``status``: pending → completed | error.

    ``size``, ``etag`` (quoted, as stored) and ``md5`` (hex) are known once registered.
    """

    file_id: str
    project_id: str
    file_name: str
    key: str
    created_at: str
    status: Literal["pending", "completed", "error"] = "pending"
    upload_error: str | None = None
    size: int | None = None
    etag: str | None = None
    md5: str | None = None


@dataclass(frozen=True, slots=True)
class Verdict:
    """How an ingestion ends: its terminal ``status`` and, unless success, why."""

    status: TerminalStatus
    message: str | None = None


@dataclass(frozen=True, slots=True)
class IngestionRecord:
    """One ingestion. ``started`` is a ``clock()`` reading (seconds); ``verdict`` and
    ``version_id`` are set once the terminal status has been decided."""

    id: str
    project_id: str
    model_id: str
    file_id: str
    file_name: str
    started: float
    created_at: str
    forced: ForcedStatus | None
    verdict: Verdict | None = None
    version_id: str | None = None


@dataclass(frozen=True, slots=True)
class VersionRecord:
    """A version created by a successful ingestion."""

    id: str
    project_id: str
    model_id: str
    ingestion_id: str
    file_id: str
    referenced_object: str
    message: str
    source_application: str
    created_at: str


@dataclass(frozen=True, slots=True)
class StatusSnapshot:
    """An ingestion's status at one instant; :meth:`to_graphql` gives the union member."""

    status: Literal[
        "queued", "processing", "success", "failed", "cancelled", "timeout", "invalidInput"
    ]
    progress_message: str | None = None
    progress: float | None = None
    version_id: str | None = None
    error_reason: str | None = None
    cancellation_message: str | None = None
    validation_message: str | None = None

    @property
    def typename(self) -> str:
        return {
            "queued": "ModelIngestionQueuedStatus",
            "processing": "ModelIngestionProcessingStatus",
            "success": "ModelIngestionSuccessStatus",
            "failed": "ModelIngestionFailedStatus",
            "timeout": "ModelIngestionFailedStatus",
            "cancelled": "ModelIngestionCancelledStatus",
            "invalidInput": "ModelIngestionInvalidStatus",
        }[self.status]

    @property
    def terminal(self) -> bool:
        return self.status not in ("queued", "processing")

    def to_graphql(self) -> dict[str, Any]:
        """The member of ``ModelIngestionStatusData``, ``__typename`` included."""
        out: dict[str, Any] = {"__typename": self.typename, "status": self.status}
        if self.status == "queued":
            out["progressMessage"] = self.progress_message
        elif self.status == "processing":
            out["progressMessage"] = self.progress_message
            out["progress"] = self.progress
        elif self.status == "success":
            out["versionId"] = self.version_id
        elif self.status in ("failed", "timeout"):
            out["errorReason"] = self.error_reason
            out["errorStacktrace"] = None
        elif self.status == "cancelled":
            out["cancellationMessage"] = self.cancellation_message
        else:
            out["validationMessage"] = self.validation_message
            out["validationOptions"] = None
        return out


class SpeckleApiError(Exception):
    """A resolver error; becomes ``errors[]`` with ``extensions.code == code`` (HTTP 200)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.extensions = {"code": code}


# --------------------------------------------------------------------------------------------------
# Pure decisions.


def ingestion_phase(elapsed: float, *, step_delay: float, steps: int) -> int:
    """0 = queued, 1..``steps`` = processing step k, ``steps + 1`` = terminal."""
    if step_delay <= 0:
        return steps + 1
    return max(0, min(int(elapsed // step_delay), steps + 1))


def snapshot_for_phase(phase: int, *, steps: int, file_name: str) -> StatusSnapshot:
    """The status of a non-terminal phase (0..``steps``)."""
    if phase <= 0:
        return StatusSnapshot("queued", progress_message=f"{file_name} is queued for import")
    if phase > steps:
        raise ValueError(f"phase {phase} is terminal; it needs a verdict")
    return StatusSnapshot(
        "processing",
        progress_message=f"Converting {file_name} ({phase}/{steps})",
        progress=phase / (steps + 1),
    )


def terminal_snapshot(verdict: Verdict, version_id: str | None) -> StatusSnapshot:
    """The status an ingestion ends with."""
    message = verdict.message or ""
    if verdict.status == "success":
        return StatusSnapshot("success", version_id=version_id)
    if verdict.status in ("failed", "timeout"):
        return StatusSnapshot(verdict.status, error_reason=message)
    if verdict.status == "cancelled":
        return StatusSnapshot("cancelled", cancellation_message=message)
    return StatusSnapshot("invalidInput", validation_message=message)


def check_blob(path: Path | None, file_name: str) -> str | None:
    """Why the stored file cannot be imported, or ``None`` if it can. May block (reads the file).

    ``path`` is ``None`` in discard mode: then only the extension is judged.
    """
    ext = file_name.rsplit(".", 1)[-1].lower() if "." in file_name else ""
    if ext not in ("ifc", "e57"):
        return f"Unsupported file type '.{ext}': this server imports IFC and E57 files"
    if path is None:
        return None
    try:
        with path.open("rb") as f:
            first = f.read(64)
    except OSError as exc:
        return f"The uploaded file could not be read: {exc.strerror or exc}"
    if ext == "ifc":
        if is_ifc_header(first):
            return None
        return f"{file_name} is not an IFC file: it does not start with ISO-10303-21;"
    try:
        from engine.sandbox.e57 import E57Error, validate_e57
    except ImportError:  # pragma: no cover - the E57 module ships with the sandbox
        return "E57 files cannot be checked by this sandbox"
    try:
        validate_e57(path)
    except E57Error as exc:
        return f"{file_name} is not a valid E57 file: {exc.reason}"
    except OSError as exc:
        return f"The uploaded file could not be read: {exc.strerror or exc}"
    return None


def _check_model_name(name: str) -> None:
    if not name:
        raise SpeckleApiError(BRANCH_NAME_ERROR, "Branch name is required")
    if (
        name.startswith(("/", "#", "$"))
        or name.endswith("/")
        or "//" in name
        or "," in name
        or "\\" in name
    ):
        raise SpeckleApiError(BRANCH_NAME_ERROR, _BRANCH_NAME_RULE)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _format_seconds(seconds: float) -> str:
    return f"{seconds:g}"


def _encode_cursor(offset: int) -> str:
    return base64.urlsafe_b64encode(f"offset:{offset}".encode()).decode()


def _decode_cursor(cursor: str | None) -> int:
    if not cursor:
        return 0
    try:
        kind, _, value = base64.urlsafe_b64decode(cursor.encode()).decode().partition(":")
        if kind == "offset" and int(value) >= 0:
            return int(value)
    except (ValueError, UnicodeDecodeError):
        pass
    raise SpeckleApiError(BAD_USER_INPUT, f"Invalid cursor {cursor!r}")


_STATUS_INTERFACE: Final = (
    "interface ModelIngestionStatusData {\n  status: ModelIngestionStatus!\n}\n"
)
_STATUS_UNION: Final = (
    "union ModelIngestionStatusData =\n"
    "  | ModelIngestionCancelledStatus\n"
    "  | ModelIngestionFailedStatus\n"
    "  | ModelIngestionInvalidStatus\n"
    "  | ModelIngestionProcessingStatus\n"
    "  | ModelIngestionQueuedStatus\n"
    "  | ModelIngestionSuccessStatus\n"
)
_IMPLEMENTS_STATUS: Final = " & ModelIngestionStatusData"


@cache
def _sdl(strict_status_union: bool) -> str:
    """The SDL; with ``strict_status_union`` the status interface becomes the real union."""
    text = _SCHEMA_PATH.read_text(encoding="utf-8")
    if strict_status_union:
        if text.count(_STATUS_INTERFACE) != 1 or text.count(_IMPLEMENTS_STATUS) != 6:
            raise RuntimeError("speckle.graphql no longer has the expected status interface")
        text = text.replace(_IMPLEMENTS_STATUS, "").replace(_STATUS_INTERFACE, _STATUS_UNION)
    return text


# --------------------------------------------------------------------------------------------------
# The plane.


@dataclass(frozen=True, slots=True)
class _Caller:
    """Who is asking: the token's projects."""

    projects: frozenset[str]


Resolver = Callable[..., Any]
_Info: TypeAlias = "GraphQLResolveInfo[_Caller]"


class SpecklePlane:
    """The Speckle control plane: ``register(app)`` adds ``POST /graphql``.

    Sizes in bytes, times in seconds. ``clock`` (monotonic seconds) drives ingestion progress.
    The mappings it exposes (``projects``, ``models``, ``blobs``, ``ingestions``, ``versions``,
    ``calls``, ``ingested_md5``) are read-only views for tests.
    """

    def __init__(
        self,
        config: SpeckleSandboxConfig | None,
        store: BlobStore,
        *,
        clock: Callable[[], float] = monotonic,
    ) -> None:
        self.config = config if config is not None else SpeckleSandboxConfig()
        self.store = store
        self._clock = clock
        self._rng = random.Random(self.config.seed) if self.config.seed is not None else None
        self._schema = self._build_schema()
        self._order = 0
        self._projects: dict[str, dict[str, Any]] = {}
        self._models: dict[str, ModelRecord] = {}
        self._blobs: dict[str, BlobRecord] = {}
        self._ingestions: dict[str, IngestionRecord] = {}
        self._versions: dict[str, VersionRecord] = {}
        self._judging: set[str] = set()
        self._calls: Counter[str] = Counter()
        self._operations: Counter[str] = Counter()
        self._http: Counter[str] = Counter()
        created = _now()
        for project_id in sorted(self.config.projects):
            self._projects[project_id] = {
                "id": project_id,
                "name": project_id,
                "description": None,
                "createdAt": created,
                "updatedAt": created,
            }
            for name in self.config.initial_models:
                self._add_model(project_id, name.strip(), None)

    def __repr__(self) -> str:
        return (
            f"SpecklePlane(projects={len(self._projects)}, models={len(self._models)}, "
            f"blobs={len(self._blobs)}, ingestions={len(self._ingestions)}, "
            f"versions={len(self._versions)}, requests={self._http['requests']})"
        )

    # ---- what tests look at ----------------------------------------------------------------------

    @property
    def projects(self) -> Mapping[str, Mapping[str, Any]]:
        return MappingProxyType(self._projects)

    @property
    def models(self) -> Mapping[str, ModelRecord]:
        return MappingProxyType(self._models)

    @property
    def blobs(self) -> Mapping[str, BlobRecord]:
        """By ``fileId``."""
        return MappingProxyType(self._blobs)

    @property
    def ingestions(self) -> Mapping[str, IngestionRecord]:
        return MappingProxyType(self._ingestions)

    @property
    def versions(self) -> Mapping[str, VersionRecord]:
        return MappingProxyType(self._versions)

    @property
    def calls(self) -> Mapping[str, int]:
        """How often each resolver ran (errors included): ``generateUploadUrl``,
        ``startFileIngestion``, ``modelMutations.create``, ``project``, ``project.ingestion``, …"""
        return MappingProxyType(self._calls)

    @property
    def ingested_md5(self) -> Mapping[str, str]:
        """MD5 hex of each registered blob, by ``fileId`` (``""`` if the store could not tell)."""
        return MappingProxyType(
            {b.file_id: b.md5 or "" for b in self._blobs.values() if b.status == "completed"}
        )

    def model_by_name(self, project_id: str, name: str) -> ModelRecord | None:
        """The model of ``project_id`` called ``name`` (case-insensitively), if any."""
        wanted = name.strip().lower()
        for model in self._models.values():
            if model.project_id == project_id and model.name.lower() == wanted:
                return model
        return None

    async def ingestion_status(self, ingestion_id: str) -> StatusSnapshot:
        """The status a query would see now (deciding the verdict if it is due)."""
        return await self._status(self._ingestions[ingestion_id])

    def stats(self) -> dict[str, Any]:
        """Counters, JSON-serialisable: HTTP outcomes, resolver calls, operations, objects."""
        ingestion_states: Counter[str] = Counter()
        for record in self._ingestions.values():
            snapshot = self._known_status(record)
            ingestion_states[snapshot.status] += 1
        return {
            "requests": self._http["requests"],
            "rate_limited": self._http["rate_limited"],
            "unauthenticated": self._http["unauthenticated"],
            "bad_requests": self._http["bad_requests"],
            "calls": dict(self._calls),
            "operations": dict(self._operations),
            "projects": len(self._projects),
            "models": len(self._models),
            "blobs": dict(Counter(b.status for b in self._blobs.values())),
            "ingestions": dict(ingestion_states),
            "versions": len(self._versions),
        }

    # ---- HTTP ------------------------------------------------------------------------------------

    def register(self, app: web.Application) -> None:
        """Add ``POST /graphql`` to ``app``."""
        app.router.add_post("/graphql", self.handle_graphql)

    async def handle_graphql(self, request: web.Request) -> web.Response:
        self._http["requests"] += 1
        every = self.config.rate_limit_every
        if every is not None and self._http["requests"] % every == 0:
            self._http["rate_limited"] += 1
            return _json(
                {"err": _RATE_LIMITED_MESSAGE},
                status=429,
                headers={"Retry-After": _format_seconds(self.config.retry_after)},
            )
        caller = self._authenticate(request.headers.get("Authorization"))
        if caller is None:
            self._http["unauthenticated"] += 1
            return _json(INVALID_TOKEN_BODY, status=403)
        body = await request.read()
        status, payload = await self._run(body, request.content_type, caller)
        if status == 400:
            self._http["bad_requests"] += 1
        return _json(payload, status=status)

    def _authenticate(self, header: str | None) -> _Caller | None:
        scheme, _, token = (header or "").strip().partition(" ")
        if scheme.lower() != "bearer":
            return None
        projects = self.config.tokens.get(token.strip())
        return None if projects is None else _Caller(frozenset(projects))

    async def _run(
        self, body: bytes, content_type: str, caller: _Caller
    ) -> tuple[int, dict[str, Any]]:
        """Execute one GraphQL request body; return ``(HTTP status, JSON payload)``."""
        request = _parse_request(body, content_type)
        if isinstance(request, str):
            return 400, _errors_payload([_plain_error(request, BAD_REQUEST)])
        query, variables, operation_name = request
        try:
            document = parse(query)
        except GraphQLError as exc:
            return 400, _errors_payload([_formatted(exc, GRAPHQL_PARSE_FAILED)])
        problems = validate(self._schema, document)
        if problems:
            return 400, _errors_payload(
                [_formatted(e, GRAPHQL_VALIDATION_FAILED) for e in problems]
            )
        operation = get_operation_ast(document, operation_name)
        if operation is None:
            message = (
                f'Unknown operation named "{operation_name}".'
                if operation_name
                else "Must provide operation name if query contains multiple operations."
            )
            return 400, _errors_payload([_plain_error(message, OPERATION_RESOLUTION_FAILURE)])
        self._operations[operation.name.value if operation.name else "(anonymous)"] += 1
        outcome = execute(
            self._schema,
            document,
            variable_values=variables,
            operation_name=operation_name,
            context_value=caller,
        )
        result = await outcome if inspect.isawaitable(outcome) else outcome
        assert isinstance(result, ExecutionResult)
        if result.data is None and result.errors and all(not e.path for e in result.errors):
            # Variable coercion failed: nothing ran (Apollo 4: 200 BAD_USER_INPUT, no data).
            return 200, _errors_payload([_formatted(e, BAD_USER_INPUT) for e in result.errors])
        payload: dict[str, Any] = {}
        if result.errors:
            payload["errors"] = [_formatted(e, INTERNAL_SERVER_ERROR) for e in result.errors]
        payload["data"] = result.data
        return 200, payload

    # ---- schema ----------------------------------------------------------------------------------

    def _build_schema(self) -> GraphQLSchema:
        schema = build_schema(_sdl(self.config.strict_status_union))
        resolvers: dict[str, dict[str, Resolver]] = {
            "Query": {"project": self._query_project},
            "Mutation": {
                "fileUploadMutations": lambda *_: {},
                "modelMutations": lambda *_: {},
            },
            "FileUploadMutations": {
                "generateUploadUrl": self._generate_upload_url,
                "startFileIngestion": self._start_file_ingestion,
            },
            "ModelMutations": {"create": self._create_model},
            "Project": {
                "model": self._project_model,
                "modelByName": self._project_model_by_name,
                "models": self._project_models,
                "version": self._project_version,
                "ingestion": self._project_ingestion,
            },
            "Model": {
                "version": self._model_version,
                "versions": self._model_versions,
                "latestIngestion": self._model_latest_ingestion,
            },
            "Version": {"model": self._version_model},
            "ModelIngestion": {"statusData": self._ingestion_status_data},
        }
        for type_name, fields in resolvers.items():
            gql_type = schema.get_type(type_name)
            if not isinstance(gql_type, GraphQLObjectType):  # pragma: no cover - SDL is fixed
                raise TypeError(f"{type_name} is not an object type in speckle.graphql")
            for field_name, resolver in fields.items():
                gql_type.fields[field_name].resolve = resolver
        for abstract in schema.type_map.values():
            if isinstance(abstract, GraphQLUnionType | GraphQLInterfaceType):
                abstract.resolve_type = _typename_of
        return schema

    # ---- access ----------------------------------------------------------------------------------

    def _authorize(self, info: _Info, project_id: str) -> dict[str, Any]:
        project = self._projects.get(project_id)
        if project is None:
            raise SpeckleApiError(STREAM_NOT_FOUND, f"Project {project_id} not found")
        if project_id not in info.context.projects:
            raise SpeckleApiError(FORBIDDEN, "You do not have the required privileges.")
        return project

    def _new_id(self, taken: Collection[str]) -> str:
        while True:
            if self._rng is None:
                candidate = secrets.token_hex(5)
            else:
                candidate = "".join(self._rng.choice(_ID_ALPHABET) for _ in range(10))
            if candidate not in taken:
                return candidate

    # ---- Query.project and Project fields --------------------------------------------------------

    def _query_project(self, _parent: Any, info: _Info, id: str) -> dict[str, Any]:
        self._calls["project"] += 1
        return self._authorize(info, id)

    def _project_model(self, parent: Mapping[str, Any], _info: _Info, id: str) -> dict[str, Any]:
        self._calls["project.model"] += 1
        model = self._models.get(id)
        if model is None or model.project_id != parent["id"]:
            raise SpeckleApiError(MODEL_NOT_FOUND, "Model not found")
        return _model_view(model)

    def _project_model_by_name(
        self, parent: Mapping[str, Any], _info: _Info, name: str
    ) -> dict[str, Any]:
        self._calls["project.modelByName"] += 1
        model = self.model_by_name(parent["id"], name)
        if model is None:
            raise SpeckleApiError(MODEL_NOT_FOUND, f"Model {name!r} not found")
        return _model_view(model)

    def _project_models(
        self,
        parent: Mapping[str, Any],
        _info: _Info,
        limit: int,
        cursor: str | None = None,
        filter: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        self._calls["project.models"] += 1
        wanted = filter or {}
        search = (wanted.get("search") or "").strip().lower()
        ids = wanted.get("ids")
        exclude = set(wanted.get("excludeIds") or ())
        with_versions = {v.model_id for v in self._versions.values()}
        items = [
            m
            for m in self._models.values()
            if m.project_id == parent["id"]
            and (not search or search in m.name.lower())
            and (ids is None or m.id in ids)
            and m.id not in exclude
            and (not wanted.get("onlyWithVersions") or m.id in with_versions)
        ]
        items.sort(key=lambda m: m.order, reverse=True)
        return _page(items, limit, cursor, _model_view)

    def _project_version(self, parent: Mapping[str, Any], _info: _Info, id: str) -> dict[str, Any]:
        self._calls["project.version"] += 1
        version = self._versions.get(id)
        if version is None or version.project_id != parent["id"]:
            raise SpeckleApiError(NOT_FOUND, "Version not found")
        return _version_view(version)

    def _project_ingestion(
        self, parent: Mapping[str, Any], _info: _Info, id: str
    ) -> dict[str, Any]:
        self._calls["project.ingestion"] += 1
        ingestion = self._ingestions.get(id)
        if ingestion is None or ingestion.project_id != parent["id"]:
            raise SpeckleApiError(NOT_FOUND, f"Model ingestion {id} not found")
        return _ingestion_view(ingestion)

    # ---- Model and Version fields ----------------------------------------------------------------

    def _model_version(self, parent: Mapping[str, Any], _info: _Info, id: str) -> dict[str, Any]:
        version = self._versions.get(id)
        if version is None or version.model_id != parent["id"]:
            raise SpeckleApiError(NOT_FOUND, "Version not found")
        return _version_view(version)

    def _model_versions(
        self,
        parent: Mapping[str, Any],
        _info: _Info,
        limit: int,
        cursor: str | None = None,
    ) -> dict[str, Any]:
        items = [v for v in self._versions.values() if v.model_id == parent["id"]]
        items.reverse()  # newest first
        return _page(items, limit, cursor, _version_view)

    def _model_latest_ingestion(
        self, parent: Mapping[str, Any], _info: _Info
    ) -> dict[str, Any] | None:
        latest = None
        for ingestion in self._ingestions.values():
            if ingestion.model_id == parent["id"]:
                latest = ingestion
        return None if latest is None else _ingestion_view(latest)

    def _version_model(self, parent: Mapping[str, Any], _info: _Info) -> Any:
        return _model_view(self._models[parent["modelId"]])

    # ---- ModelMutations.create -------------------------------------------------------------------

    def _create_model(self, _parent: Any, info: _Info, input: Mapping[str, Any]) -> dict[str, Any]:
        self._calls["modelMutations.create"] += 1
        project_id = str(input["projectId"])
        self._authorize(info, project_id)
        name = str(input["name"]).strip()
        _check_model_name(name)
        if self.model_by_name(project_id, name) is not None:
            raise SpeckleApiError(BRANCH_CREATE_ERROR, "A branch with this name already exists")
        return _model_view(self._add_model(project_id, name, input.get("description")))

    def _add_model(self, project_id: str, name: str, description: str | None) -> ModelRecord:
        self._order += 1
        now = _now()
        model = ModelRecord(
            id=self._new_id(self._models),
            project_id=project_id,
            name=name,
            description=description,
            created_at=now,
            updated_at=now,
            order=self._order,
        )
        self._models[model.id] = model
        return model

    # ---- FileUploadMutations ---------------------------------------------------------------------

    def _generate_upload_url(
        self, _parent: Any, info: _Info, input: Mapping[str, Any]
    ) -> dict[str, Any]:
        self._calls["generateUploadUrl"] += 1
        project_id = str(input["projectId"])
        file_name = str(input["fileName"])
        self._authorize(info, project_id)
        extension = file_name.rsplit(".", 1)[-1]
        if not extension or extension == file_name:
            raise SpeckleApiError(USER_INPUT_ERROR, "File name must have a valid extension")
        file_id = self._new_id(self._blobs)
        key = f"speckle/{project_id}/{file_id}"
        extra = self.config.additional_header
        url = self.store.presign_put(
            key,
            expires_in=self.config.url_expiry,
            required_headers=None if extra is None else {extra[0]: extra[1]},
        )
        self._blobs[file_id] = BlobRecord(
            file_id=file_id,
            project_id=project_id,
            file_name=file_name,
            key=key,
            created_at=_now(),
        )
        headers = [] if extra is None else [{"header": extra[0], "value": extra[1]}]
        return {"url": url, "fileId": file_id, "additionalRequestHeaders": headers}

    def _start_file_ingestion(
        self, _parent: Any, info: _Info, input: Mapping[str, Any]
    ) -> dict[str, Any]:
        self._calls["startFileIngestion"] += 1
        project_id = str(input["projectId"])
        file_id = str(input["fileId"])
        etag = str(input["etag"])
        self._authorize(info, project_id)
        if not etag:
            raise SpeckleApiError(
                USER_INPUT_ERROR, "ETag is required to register a completed upload"
            )
        blob = self._blobs.get(file_id)
        if blob is None or blob.project_id != project_id:
            raise SpeckleApiError(
                USER_INPUT_ERROR,
                "Please use mutation generateUploadUrl to create a blob before registering a "
                "completed upload",
            )
        if blob.status == "completed":
            raise SpeckleApiError(
                ALREADY_REGISTERED_BLOB_ERROR, "Blob already registered and completed"
            )
        if blob.status == "error":
            raise SpeckleApiError(
                ALREADY_REGISTERED_BLOB_ERROR,
                blob.upload_error or "Blob already registered with an error",
            )
        stored = self.store.head(blob.key)
        if stored is None:
            raise SpeckleApiError(
                STORED_BLOB_ACCESS_ERROR,
                f"Failed to get blob metadata for blob {file_id} in project {project_id}",
            )
        if stored.etag != etag:
            # Like the real server: the stored ETag is the proof of upload, never echoed.
            raise SpeckleApiError(USER_INPUT_ERROR, f"ETag mismatch: expected {etag}")
        if stored.size <= 0 or stored.size > self.config.size_limit:
            self._blobs[file_id] = replace(
                blob,
                status="error",
                upload_error="[FILE_SIZE_EXCEEDED] File size exceeds maximum allowed size for "
                "the project at the time of upload",
                size=stored.size,
                etag=stored.etag,
            )
            raise SpeckleApiError(
                USER_INPUT_ERROR,
                f"File size exceeds maximum allowed size of {self.config.size_limit} bytes. "
                f"Actual size: {stored.size} bytes",
            )
        self._blobs[file_id] = replace(
            blob, status="completed", size=stored.size, etag=stored.etag, md5=stored.md5
        )
        model_id = str(input["modelId"])
        model = self._models.get(model_id)
        if model is None or model.project_id != project_id:
            raise SpeckleApiError(MODEL_NOT_FOUND, "Attempting to work with a non-existant model")
        ingestion = IngestionRecord(
            id=self._new_id(self._ingestions),
            project_id=project_id,
            model_id=model_id,
            file_id=file_id,
            file_name=blob.file_name,
            started=self._clock(),
            created_at=_now(),
            forced=self.config.forced_status_for(blob.file_name),
        )
        self._ingestions[ingestion.id] = ingestion
        view = _ingestion_view(ingestion)
        queued = snapshot_for_phase(0, steps=self.config.processing_steps, file_name=blob.file_name)
        view["statusData"] = queued.to_graphql()
        return view

    # ---- ingestion status ------------------------------------------------------------------------

    async def _ingestion_status_data(
        self, parent: Mapping[str, Any], _info: _Info
    ) -> dict[str, Any]:
        if "statusData" in parent:  # the mutation's own answer: always queued
            return dict(parent["statusData"])
        snapshot = await self._status(self._ingestions[parent["id"]])
        return snapshot.to_graphql()

    def _phase(self, record: IngestionRecord) -> int:
        return ingestion_phase(
            self._clock() - record.started,
            step_delay=self.config.step_delay,
            steps=self.config.processing_steps,
        )

    def _known_status(self, record: IngestionRecord) -> StatusSnapshot:
        """The status without deciding anything: a due but undecided verdict shows as the last
        processing step."""
        steps = self.config.processing_steps
        if record.verdict is not None:
            return terminal_snapshot(record.verdict, record.version_id)
        phase = min(self._phase(record), steps)
        return snapshot_for_phase(phase, steps=steps, file_name=record.file_name)

    async def _status(self, record: IngestionRecord) -> StatusSnapshot:
        if record.verdict is not None or self._phase(record) <= self.config.processing_steps:
            return self._known_status(record)
        if record.id in self._judging:  # another request is checking the file right now
            return self._known_status(record)
        self._judging.add(record.id)
        try:
            verdict = await self._judge(record)
        finally:
            self._judging.discard(record.id)
        return self._known_status(self._settle(record.id, verdict))

    async def _judge(self, record: IngestionRecord) -> Verdict:
        if record.forced is not None:
            return Verdict(record.forced, _FORCED_MESSAGES[record.forced])
        key = self._blobs[record.file_id].key

        def check() -> str | None:  # object_path may download (S3 storage): off the loop
            return check_blob(self.store.object_path(key), record.file_name)

        reason = await anyio.to_thread.run_sync(check)
        return Verdict("success") if reason is None else Verdict("failed", reason)

    def _settle(self, ingestion_id: str, verdict: Verdict) -> IngestionRecord:
        record = self._ingestions[ingestion_id]
        if record.verdict is not None:
            return record
        version_id = None
        if verdict.status == "success":
            version_id = self._new_id(self._versions)
            now = _now()
            ext = record.file_name.rsplit(".", 1)[-1].upper()
            self._versions[version_id] = VersionRecord(
                id=version_id,
                project_id=record.project_id,
                model_id=record.model_id,
                ingestion_id=record.id,
                file_id=record.file_id,
                referenced_object=secrets.token_hex(16),
                message=f"Imported from {record.file_name}",
                source_application=ext,
                created_at=now,
            )
            self._order += 1
            model = self._models[record.model_id]
            self._models[model.id] = replace(model, updated_at=now, order=self._order)
        record = replace(record, verdict=verdict, version_id=version_id)
        self._ingestions[ingestion_id] = record
        return record


# --------------------------------------------------------------------------------------------------
# Views and HTTP helpers.


def _typename_of(value: Any, _info: _Info, _abstract: Any) -> str | None:
    return value.get("__typename") if isinstance(value, Mapping) else None


def _model_view(model: ModelRecord) -> dict[str, Any]:
    return {
        "id": model.id,
        "name": model.name,
        "displayName": model.name.rsplit("/", 1)[-1],
        "description": model.description,
        "projectId": model.project_id,
        "createdAt": model.created_at,
        "updatedAt": model.updated_at,
    }


def _version_view(version: VersionRecord) -> dict[str, Any]:
    return {
        "id": version.id,
        "referencedObject": version.referenced_object,
        "message": version.message,
        "sourceApplication": version.source_application,
        "createdAt": version.created_at,
        "modelId": version.model_id,
    }


def _ingestion_view(ingestion: IngestionRecord) -> dict[str, Any]:
    return {
        "id": ingestion.id,
        "modelId": ingestion.model_id,
        "projectId": ingestion.project_id,
        "createdAt": ingestion.created_at,
        "updatedAt": ingestion.created_at,
        "cancellationRequested": False,
    }


def _page(
    items: Sequence[_T], limit: int, cursor: str | None, view: Callable[[_T], dict[str, Any]]
) -> dict[str, Any]:
    start = _decode_cursor(cursor)
    size = max(0, min(limit, _MAX_PAGE))
    chunk = items[start : start + size]
    end = start + len(chunk)
    return {
        "totalCount": len(items),
        "cursor": _encode_cursor(end) if end < len(items) else None,
        "items": [view(item) for item in chunk],
    }


def _parse_request(body: bytes, content_type: str) -> tuple[str, dict[str, Any], str | None] | str:
    """``(query, variables, operationName)`` from a POST body, or why it is a bad request."""
    if content_type != "application/json":
        return "POST body missing, invalid Content-Type, or JSON object has no keys."
    try:
        request = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        return f"POST body is not valid JSON: {exc}"
    if not isinstance(request, dict) or not request:
        return "POST body missing, invalid Content-Type, or JSON object has no keys."
    query = request.get("query")
    if not isinstance(query, str) or not query.strip():
        return (
            "GraphQL operations must contain a non-empty `query` or a `persistedQuery` extension."
        )
    variables = request.get("variables")
    if variables is None:
        variables = {}
    if not isinstance(variables, dict):
        return "`variables` in a POST body should be provided as an object if provided."
    operation_name = request.get("operationName")
    if operation_name is not None and not isinstance(operation_name, str):
        return "`operationName` in a POST body should be provided as a string if provided."
    return query, variables, operation_name


def _plain_error(message: str, code: str) -> dict[str, Any]:
    return {"message": message, "extensions": {"code": code}}


def _formatted(error: GraphQLError, default_code: str) -> dict[str, Any]:
    out: dict[str, Any] = {"message": error.message}
    if error.locations:
        out["locations"] = [{"line": loc.line, "column": loc.column} for loc in error.locations]
    if error.path:
        out["path"] = list(error.path)
    extensions = dict(error.extensions or {})
    extensions.setdefault("code", default_code)
    out["extensions"] = extensions
    return out


def _errors_payload(errors: list[dict[str, Any]]) -> dict[str, Any]:
    return {"errors": errors}


def _json(
    payload: Any, *, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.Response(
        status=status,
        body=orjson.dumps(payload),
        content_type="application/json",
        headers=headers,
    )
