"""The Speckle plane's state: models, blobs, ingestions and versions, and an ingestion's status.

Rules this module keeps:

* **Records are frozen**; the plane replaces them as state changes, on the event loop thread.
* **Model names** (``modules/core/graph/resolvers/models.ts``, ``ModelMutations.create``, and
  ``validateBranchName``/``createBranchFactory`` in ``modules/core/repositories/branches.ts``):
  the input is split on ``/``, each part trimmed, empty parts dropped (:func:`sanitize_model_name`);
  the name is stored lower-cased; it must not be empty (``Model name is required``) or start with
  ``#``/``$``, start or end with ``/``, contain ``//``, ``,`` or ``\\`` (``BRANCH_NAME_ERROR``).
* **Status types.** ``success`` → ``ModelIngestionSuccessStatus``; ``failed`` and ``timeout`` →
  ``ModelIngestionFailedStatus``; ``cancelled`` → ``ModelIngestionCancelledStatus``;
  ``invalidInput`` → ``ModelIngestionInvalidStatus``; ``queued`` and ``processing`` their own;
  every object carries ``__typename`` and only its own type's fields.
* Times are RFC 3339 strings in UTC with milliseconds (``...Z``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Literal, TypeAlias

from graphql import GraphQLResolveInfo

from engine.sandbox.speckle.errors import BRANCH_NAME_ERROR, SpeckleApiError

__all__ = [
    "BlobRecord",
    "Caller",
    "ForcedStatus",
    "Info",
    "IngestionRecord",
    "ModelRecord",
    "StatusSnapshot",
    "TerminalStatus",
    "Verdict",
    "VersionRecord",
    "check_model_name",
    "now",
    "sanitize_model_name",
]

ForcedStatus = Literal["failed", "cancelled", "timeout", "invalidInput"]
"""A terminal status the configuration can impose on an ingestion instead of the content check."""

TerminalStatus = Literal["success", "failed", "cancelled", "timeout", "invalidInput"]

_BRANCH_NAME_RULE: Final = (
    'Model names cannot start with "#", "$", start or end with "/", have multiple slashes next '
    'to each other (e.g., "//") or contain commas or backwards slashes.'
)


def sanitize_model_name(name: str) -> str:
    """``ModelMutations.create``'s input name: parts between ``/`` trimmed, empty parts dropped."""
    return "/".join(part.strip() for part in name.split("/") if part.strip())


def check_model_name(name: str) -> None:
    """``BRANCH_NAME_ERROR`` unless ``name`` is a valid model name (``validateBranchName``)."""
    name = name.strip()
    if not name:
        raise SpeckleApiError(BRANCH_NAME_ERROR, "Model name is required")
    if (
        name.startswith(("/", "#", "$"))
        or name.endswith("/")
        or "//" in name
        or "," in name
        or "\\" in name
    ):
        raise SpeckleApiError(BRANCH_NAME_ERROR, _BRANCH_NAME_RULE)


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is asking: the token's projects and its user (``user_id`` None: no token at all, an
    anonymous caller, as ``createAuthContextFromToken`` lets through)."""

    projects: frozenset[str]
    user_id: str | None = None

    @property
    def anonymous(self) -> bool:
        return self.user_id is None


Info: TypeAlias = "GraphQLResolveInfo[Caller]"


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
    user_id: str
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
    """One ingestion (``kind="ingestion"``, v3) or file upload (``kind="upload"``, v2: its id is
    the blob's). ``started`` is a ``clock()`` reading (seconds); ``verdict`` and ``version_id``
    are set once the terminal status has been decided; ``settled_at`` is when (RFC 3339)."""

    id: str
    project_id: str
    model_id: str
    file_id: str
    file_name: str
    started: float
    created_at: str
    forced: ForcedStatus | None
    user_id: str
    kind: Literal["ingestion", "upload"] = "ingestion"
    file_size: int | None = None
    verdict: Verdict | None = None
    version_id: str | None = None
    settled_at: str | None = None


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
