"""The Speckle wire vocabulary: the GraphQL documents, the status names, the limits.

The documents go out as written (``POST {server}/graphql``). Their operation names are the
words ``GraphQLClient.calls`` records and every error message opens with. Constants only: no
I/O and no decisions live here. Where each comes from:

- the v3 ingestion API (``startFileIngestion``, ``Project.ingestion``, the
  ``projectModelIngestionUpdated`` subscription): the ingestion guide and the SDKs
  (specklepy ``core/api/resources/current/{model_ingestion,subscription}_resource.py``,
  speckle-sharp-sdk ``Api/GraphQL/Resources/{ModelIngestion,Subscription}Resource.cs``).
  ``statusData`` is a union there: the status documents select fields through fragments on
  its members only, and ``__typename``, so a failure is known by its type even when its
  ``status`` is one this client has never seen;
- the v2 file-import API (``startFileImport``, ``Model.uploads`` with ``convertedStatus``):
  speckle-server ``assets/fileuploads/typedefs/fileuploads.graphql``;
- ``serverInfo.configuration.blobSizeLimitBytes`` and ``Project.blob``: speckle-server
  ``assets/blobstorage/typedefs/blobstorage.graphql``; the models: ``assets/core/typedefs``.
"""

from __future__ import annotations

from typing import Final

from engine.models import MAX_PUT_SIZE

__all__ = [
    "API_CHOICES",
    "API_MARKERS",
    "CONVERTED_STATUS",
    "CREATE_MODEL",
    "DEFAULT_SERVER",
    "FAILURE_TYPES",
    "GENERATE_UPLOAD_URL",
    "GENERATE_UPLOAD_URL_V2",
    "INGESTION",
    "INGESTION_UPDATED",
    "MAX_UPLOAD_SIZE",
    "MODEL_BY_ID",
    "MODEL_BY_NAME",
    "MODEL_INGESTION_HISTORY",
    "MODEL_LATEST_INGESTION",
    "MODEL_SEARCH",
    "MODEL_UPLOADS",
    "PLATFORM",
    "PROJECT_BLOB",
    "PROJECT_VERSION",
    "REST_UPLOAD_PATH",
    "SERVER",
    "SERVER_API",
    "SERVER_VERSION",
    "START_FILE_IMPORT",
    "START_FILE_INGESTION",
    "STREAM_FILE_UPLOAD",
    "STREAM_FILE_UPLOADS",
    "TERMINAL_FAILURES",
    "WS_PROTOCOL",
]

MAX_UPLOAD_SIZE: Final = MAX_PUT_SIZE  # one presigned PUT of the whole file
"""Bytes one presigned PUT may carry: the largest file Speckle can ingest this way."""

DEFAULT_SERVER: Final = "https://app.speckle.systems"
PLATFORM: Final = "Speckle"  # how malformed answers name the platform
#: the APIs ``--speckle-api`` / ``Speckle(api=...)`` take (``auto``: ask the server)
API_CHOICES: Final = ("auto", "v3", "v2", "rest")

#: The legacy upload route (speckle-server ``modules/fileuploads/rest/router.ts``:
#: ``POST /api/file/:fileType/:streamId/:branchName?``, multipart/form-data, 201
#: ``{"uploadResults": [...]}``); ``autodetect`` lets the server tell the type by extension.
REST_UPLOAD_PATH: Final = "/api/file/autodetect/{project}/{model}"

#: subscriptions-transport-ws, what the server's ``SubscriptionServer`` speaks (``app.ts``)
WS_PROTOCOL: Final = "graphql-ws"

#: ``status`` values that end an ingestion without a version.
TERMINAL_FAILURES: Final = frozenset({"failed", "invalidInput", "cancelled", "timeout"})
#: ``statusData.__typename`` values that end an ingestion without a version.
FAILURE_TYPES: Final = frozenset(
    {"ModelIngestionFailedStatus", "ModelIngestionCancelledStatus", "ModelIngestionInvalidStatus"}
)
#: ``FileUpload.convertedStatus`` (fileuploads.graphql: "0 = queued, 1 = processing,
#: 2 = success, 3 = error") as the ingestion statuses they stand for.
CONVERTED_STATUS: Final = {0: "queued", 1: "processing", 2: "success", 3: "failed"}

#: What the introspection of the server's schema must show for each capability:
#: (type, field). The API is v3 with ``startFileIngestion``, v2 with ``startFileImport``.
API_MARKERS: Final = {
    "ingestion": ("FileUploadMutations", "startFileIngestion"),
    "file_import": ("FileUploadMutations", "startFileImport"),
    "presigned": ("FileUploadMutations", "generateUploadUrl"),
    "live": ("Subscription", "projectModelIngestionUpdated"),
    "history": ("Model", "ingestionHistory"),
    "uploads": ("Model", "uploads"),
    "headers": ("GenerateFileUploadUrlOutput", "additionalRequestHeaders"),
    "blob": ("Project", "blob"),
}

# ---- the server ----------------------------------------------------------------------------------

_TYPES: Final = "".join(
    f'\n  {t}: __type(name: "{t}") {{ fields(includeDeprecated: true) {{ name }} }}'
    for t in sorted({t for t, _ in API_MARKERS.values()})
)

SERVER: Final = f"""
query SpeckleServer {{
  serverInfo {{ version configuration {{ blobSizeLimitBytes }} }}{_TYPES}
}}"""
"""The server's version, its blob size limit and which API fields its schema has: one request."""

SERVER_API: Final = f"""
query SpeckleServerApi {{{_TYPES}
}}"""
"""Introspection alone, for a server without ``configuration.blobSizeLimitBytes``."""

SERVER_VERSION: Final = """
query SpeckleServerVersion {
  serverInfo { version }
}"""

# ---- models --------------------------------------------------------------------------------------

MODEL_BY_ID: Final = """
query ProjectModel($projectId: String!, $modelId: String!) {
  project(id: $projectId) {
    model(id: $modelId) { id name }
  }
}"""

MODEL_BY_NAME: Final = """
query ProjectModelByName($projectId: String!, $name: String!) {
  project(id: $projectId) {
    modelByName(name: $name) { id name }
  }
}"""

MODEL_SEARCH: Final = """
query ProjectModelSearch($projectId: String!, $search: String!) {
  project(id: $projectId) {
    models(limit: 100, filter: { search: $search }) { items { id name } }
  }
}"""
"""Models whose name holds ``search``, case-insensitively (``Project.models``): where
``modelByName`` misses a model whose name differs only in case (its dataloader keys the rows
by their stored name: ``core/graph/dataloaders/index.ts``) while a create of that name is
refused as taken."""

PROJECT_VERSION: Final = """
query ProjectVersion($projectId: String!, $versionId: String!) {
  project(id: $projectId) {
    version(id: $versionId) { id model { id } }
  }
}"""
"""A version, to confirm that a file the journal says is done still has it
(``COMMIT_NOT_FOUND`` when it is gone)."""

CREATE_MODEL: Final = """
mutation CreateModel($input: CreateModelInput!) {
  modelMutations {
    create(input: $input) { id name }
  }
}"""

# ---- the upload ----------------------------------------------------------------------------------

GENERATE_UPLOAD_URL: Final = """
mutation GenerateFileUploadUrl($input: GenerateFileUploadUrlInput!) {
  fileUploadMutations {
    generateUploadUrl(input: $input) {
      url
      fileId
      additionalRequestHeaders { header value }
    }
  }
}"""

GENERATE_UPLOAD_URL_V2: Final = """
mutation GenerateFileUploadUrl($input: GenerateFileUploadUrlInput!) {
  fileUploadMutations {
    generateUploadUrl(input: $input) { url fileId }
  }
}"""
"""For servers whose ``GenerateFileUploadUrlOutput`` has no ``additionalRequestHeaders``."""

PROJECT_BLOB: Final = """
query ProjectBlob($projectId: String!, $blobId: String!) {
  project(id: $projectId) {
    blob(id: $blobId) { id uploadStatus uploadError fileSize }
  }
}"""
"""A blob's state: ``uploadStatus`` 0 pending, 1 completed (registered), 2 error
(speckle-server ``packages/shared/src/blobs`` ``BlobUploadStatus``)."""

# ---- v3: the ingestion API -----------------------------------------------------------------------

_STATUS_FIELDS: Final = """
      statusData {
        __typename
        ... on ModelIngestionQueuedStatus { status progressMessage }
        ... on ModelIngestionProcessingStatus { status progressMessage progress }
        ... on ModelIngestionSuccessStatus { status versionId }
        ... on ModelIngestionFailedStatus { status errorReason }
        ... on ModelIngestionCancelledStatus { status cancellationMessage }
        ... on ModelIngestionInvalidStatus { status validationMessage }
      }"""

START_FILE_INGESTION: Final = f"""
mutation StartFileIngestion($input: StartFileImportInput!) {{
  fileUploadMutations {{
    startFileIngestion(input: $input) {{
      id{_STATUS_FIELDS}
    }}
  }}
}}"""

INGESTION: Final = f"""
query Ingestion($ingestionId: ID!, $projectId: String!) {{
  project(id: $projectId) {{
    ingestion(id: $ingestionId) {{
      id{_STATUS_FIELDS}
    }}
  }}
}}"""

INGESTION_UPDATED: Final = f"""
subscription IngestionUpdated($input: ProjectModelIngestionSubscriptionInput!) {{
  projectModelIngestionUpdated(input: $input) {{
    type
    modelIngestion {{
      id{_STATUS_FIELDS}
    }}
  }}
}}"""
"""``input``: ``{projectId, ingestionReference: {ingestionId}}`` (a ``@oneOf`` reference:
an ingestion id or a model id, not both)."""

MODEL_INGESTION_HISTORY: Final = """
query ModelIngestionHistory($projectId: String!, $modelId: String!, $limit: Int!) {
  project(id: $projectId) {
    model(id: $modelId) {
      ingestionHistory(input: { limit: $limit }) {
        items {
          id
          handler { ... on ModelIngestionFileUploadHandler { blobId } }
        }
      }
    }
  }
}"""

MODEL_LATEST_INGESTION: Final = """
query ModelLatestIngestion($projectId: String!, $modelId: String!) {
  project(id: $projectId) {
    model(id: $modelId) {
      latestIngestion { id createdAt }
    }
  }
}"""

# ---- v2: the file-import API ---------------------------------------------------------------------

_UPLOAD_FIELDS: Final = "id fileName convertedStatus convertedMessage convertedVersionId uploadDate"

START_FILE_IMPORT: Final = f"""
mutation StartFileImport($input: StartFileImportInput!) {{
  fileUploadMutations {{
    startFileImport(input: $input) {{ {_UPLOAD_FIELDS} }}
  }}
}}"""
"""The answer is the ``FileUpload``; its ``id`` is the blob's ``fileId``."""

MODEL_UPLOADS: Final = f"""
query ModelUploads($projectId: String!, $modelId: String!, $limit: Int!) {{
  project(id: $projectId) {{
    model(id: $modelId) {{
      uploads(input: {{ limit: $limit }}) {{
        items {{ {_UPLOAD_FIELDS} }}
      }}
    }}
  }}
}}"""

STREAM_FILE_UPLOAD: Final = f"""
query StreamFileUpload($projectId: String!, $uploadId: String!) {{
  stream(id: $projectId) {{
    fileUpload(id: $uploadId) {{ {_UPLOAD_FIELDS} }}
  }}
}}"""
"""One upload by id, for servers older than ``Model.uploads`` (2.25.8): deprecated, not gone."""

STREAM_FILE_UPLOADS: Final = f"""
query StreamFileUploads($projectId: String!) {{
  stream(id: $projectId) {{
    fileUploads {{ {_UPLOAD_FIELDS} modelId }}
  }}
}}"""
