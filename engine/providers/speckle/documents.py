"""The Speckle wire vocabulary: the GraphQL documents, the status names, the limits.

The documents go out as written (``POST {server}/graphql``). Their operation names are the
words ``GraphQLClient.calls`` records and every error message opens with. The status queries
ask for ``__typename`` next to each status type's own fields: a failure is known by its type
even when its ``status`` string is one this client has never seen. Constants only: no I/O and
no decisions live here.
"""

from __future__ import annotations

from typing import Final

from engine.models import MAX_PUT_SIZE

__all__ = [
    "CREATE_MODEL",
    "DEFAULT_SERVER",
    "FAILURE_TYPES",
    "GENERATE_UPLOAD_URL",
    "INGESTION",
    "MAX_UPLOAD_SIZE",
    "MODEL_BY_ID",
    "MODEL_BY_NAME",
    "MODEL_INGESTION_HISTORY",
    "MODEL_LATEST_INGESTION",
    "PLATFORM",
    "START_FILE_INGESTION",
    "TERMINAL_FAILURES",
]

MAX_UPLOAD_SIZE: Final = MAX_PUT_SIZE  # one presigned PUT of the whole file
"""Bytes one presigned PUT may carry: the largest file Speckle can ingest this way."""

DEFAULT_SERVER: Final = "https://app.speckle.systems"
PLATFORM: Final = "Speckle"  # how malformed answers name the platform

#: ``status`` values that end an ingestion without a version.
TERMINAL_FAILURES: Final = frozenset({"failed", "invalidInput", "cancelled", "timeout"})
#: ``statusData.__typename`` values that end an ingestion without a version.
FAILURE_TYPES: Final = frozenset(
    {"ModelIngestionFailedStatus", "ModelIngestionCancelledStatus", "ModelIngestionInvalidStatus"}
)

# ---- GraphQL documents ---------------------------------------------------------------------------

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

CREATE_MODEL: Final = """
mutation CreateModel($input: CreateModelInput!) {
  modelMutations {
    create(input: $input) { id name }
  }
}"""

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
