"""The Speckle control plane of the sandbox: ``POST /graphql`` for the file-ingestion flow.

It executes client documents against ``speckle.graphql`` (names and nullability from
specklesystems/speckle-server) with graphql-core, so a wrong field, type or variable is refused as
the real server refuses it. Each module keeps its own rules, each one the real server's unless
marked, and says them in its docstring:

* :mod:`.plane` — :class:`SpecklePlane`: the order at the door (rate limit, then the token),
  when an ingestion's verdict is decided and what it makes, no background tasks.
* :mod:`.http` — Apollo Server 4's HTTP answers.
* :mod:`.resolvers` — access, ids, generateUploadUrl, startFileIngestion (its order of checks),
  models.
* :mod:`.ingestion` — an ingestion's life as a function of time; the content check.
* :mod:`.schema` — the SDL, and the status interface that stands in for the real union.
* :mod:`.config` — :class:`SpeckleSandboxConfig`; forced statuses.
* :mod:`.records` — the state, model names, the status types.
* :mod:`.errors` — :class:`SpeckleApiError` and the ``extensions.code`` values.
* :mod:`.views` — the records as GraphQL fields; paging.

This is the sandbox's side of the wire: it shares no code with the client (``engine/*.py``).
"""

from __future__ import annotations

from engine.sandbox.blobstore import GiB as GiB
from engine.sandbox.speckle.config import SpeckleSandboxConfig
from engine.sandbox.speckle.errors import (
    ALREADY_REGISTERED_BLOB_ERROR,
    BAD_REQUEST,
    BAD_USER_INPUT,
    BRANCH_CREATE_ERROR,
    BRANCH_NAME_ERROR,
    FORBIDDEN,
    GRAPHQL_PARSE_FAILED,
    GRAPHQL_VALIDATION_FAILED,
    INVALID_TOKEN_BODY,
    MODEL_NOT_FOUND,
    NOT_FOUND,
    OPERATION_RESOLUTION_FAILURE,
    STORED_BLOB_ACCESS_ERROR,
    STREAM_NOT_FOUND,
    USER_INPUT_ERROR,
    SpeckleApiError,
)
from engine.sandbox.speckle.errors import INTERNAL_SERVER_ERROR as INTERNAL_SERVER_ERROR
from engine.sandbox.speckle.ingestion import (
    check_blob,
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
from engine.sandbox.speckle.schema import Resolver as Resolver

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
