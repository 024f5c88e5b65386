"""The Speckle control plane of the sandbox: ``/graphql`` and the legacy REST upload.

It executes client documents against ``speckle.graphql`` (names and nullability from
specklesystems/speckle-server and the Speckle SDKs) with graphql-core, so a wrong field, type or
variable is refused as the real server refuses it. It answers as one of three APIs
(``SpeckleSandboxConfig.speckle_api``: ``v3``, ``v2``, ``legacy``) and two server kinds
(``server_kind``: ``app``, ``self-hosted``). Each module keeps its own rules, each one the real
server's unless marked, and says them in its docstring:

* :mod:`.plane` — :class:`SpecklePlane`: its routes, the order at the door (rate limit, then the
  token).
* :mod:`.http` — Apollo Server 4's HTTP answers for ``POST /graphql``.
* :mod:`.live` — the ``projectModelIngestionUpdated`` subscription over a WebSocket.
* :mod:`.rest` — ``POST /api/file/{fileType}/{projectId}[/{modelName}]``.
* :mod:`.ratelimit` — the server's bursty rate limiter and its HTTP 429.
* :mod:`.fileuploads` — generateUploadUrl, startFileIngestion, startFileImport (their checks).
* :mod:`.resolvers` — access, projects, models, versions, uploads, ingestion history.
* :mod:`.state` — the records, ids, and when an ingestion's verdict is decided.
* :mod:`.ingestion` — an ingestion's life as a function of time; a file upload's view of it.
* :mod:`.formats` — what each server kind ingests; the content check.
* :mod:`.schema` — the SDL per API, and the lenient status interface.
* :mod:`.config` — :class:`SpeckleSandboxConfig`; forced statuses.
* :mod:`.records` — the records, model names, the status types.
* :mod:`.errors` — :class:`SpeckleApiError`, the ``extensions.code`` values, the bodies.
* :mod:`.views` — the records as GraphQL fields; paging.

This is the sandbox's side of the wire: it shares no code with the client (``engine/*.py``).
"""

from __future__ import annotations

from engine.sandbox.blobstore import GiB as GiB
from engine.sandbox.speckle.config import SpeckleSandboxConfig
from engine.sandbox.speckle.errors import (
    ALREADY_REGISTERED_BLOB_ERROR,
    BAD_REQUEST,
    BAD_REQUEST_ERROR,
    BAD_USER_INPUT,
    BRANCH_CREATE_ERROR,
    BRANCH_NAME_ERROR,
    BRANCH_NOT_FOUND,
    COMMIT_NOT_FOUND,
    FORBIDDEN,
    GRAPHQL_PARSE_FAILED,
    GRAPHQL_VALIDATION_FAILED,
    INVALID_TOKEN_BODY,
    MODEL_NOT_FOUND,
    OPERATION_RESOLUTION_FAILURE,
    RATE_LIMIT_ERROR,
    STORED_BLOB_ACCESS_ERROR,
    STREAM_NOT_FOUND,
    UNAUTHORIZED,
    UNSUPPORTED_FILE_TYPE,
    USER_INPUT_ERROR,
    SpeckleApiError,
)
from engine.sandbox.speckle.errors import INTERNAL_SERVER_ERROR as INTERNAL_SERVER_ERROR
from engine.sandbox.speckle.formats import RHINO_EXTENSIONS, accepted_extensions, check_blob
from engine.sandbox.speckle.ingestion import (
    ingestion_phase,
    snapshot_for_phase,
    terminal_snapshot,
)
from engine.sandbox.speckle.plane import SpecklePlane
from engine.sandbox.speckle.records import (
    BlobRecord,
    ForcedStatus,
    IngestionRecord,
    ModelRecord,
    StatusSnapshot,
    TerminalStatus,
    Verdict,
    VersionRecord,
)
from engine.sandbox.speckle.rest import UPLOAD_REQUEST_ERROR
from engine.sandbox.speckle.schema import Resolver as Resolver

__all__ = [
    "ALREADY_REGISTERED_BLOB_ERROR",
    "BAD_REQUEST",
    "BAD_REQUEST_ERROR",
    "BAD_USER_INPUT",
    "BRANCH_CREATE_ERROR",
    "BRANCH_NAME_ERROR",
    "BRANCH_NOT_FOUND",
    "COMMIT_NOT_FOUND",
    "FORBIDDEN",
    "GRAPHQL_PARSE_FAILED",
    "GRAPHQL_VALIDATION_FAILED",
    "INVALID_TOKEN_BODY",
    "MODEL_NOT_FOUND",
    "OPERATION_RESOLUTION_FAILURE",
    "RATE_LIMIT_ERROR",
    "RHINO_EXTENSIONS",
    "STORED_BLOB_ACCESS_ERROR",
    "STREAM_NOT_FOUND",
    "UNAUTHORIZED",
    "UNSUPPORTED_FILE_TYPE",
    "UPLOAD_REQUEST_ERROR",
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
    "accepted_extensions",
    "check_blob",
    "ingestion_phase",
    "snapshot_for_phase",
    "terminal_snapshot",
]
