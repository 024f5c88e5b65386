"""The Matterport Import API's wire vocabulary: the GraphQL documents, the statuses, the names.

The flow (seed ``000``; the documents below are the seed's, verbatim)::

    addImportSession(organizationId, processType: E57, name, description)     -> session id
    AddE57Object(e57: {id, file: {clientId, name, type, size}})               one per file
    -- per file, every file at once under the Uploader's one budget (``target``):
    beginUpload                                          PENDING -> STARTED
    requestPartUpload(part: 0, size: <file size>)        minSize/maxSize: the part limits
    requestPartUpload(part: n - 1, size: <part size>)    per part: url, method, headers
    PUT the bytes, keep each ETag                        (the engine)
    completeUpload(completedParts: [{headers: [{key: "ETag", value}]}, ...])  part order
    --
    commitImportSession                                  the platform builds the model
    importSession                                        polled until modelId is set

Rules:
- the documents are sent exactly as written here; the operation name of each is what
  ``GraphQLClient.calls`` lists and what error messages start with;
- ``importFileId`` is the file's ``clientId`` (seed, step 3);
- nothing here does I/O or decides anything: it is the vocabulary the other modules share.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "ADD_E57_OBJECT",
    "ADD_IMPORT_SESSION",
    "BEGIN_UPLOAD",
    "COMMIT_IMPORT_SESSION",
    "COMPLETED",
    "COMPLETE_UPLOAD",
    "ENDPOINT",
    "FILE_TYPE",
    "IMPORT_FILE_PARTS_UPLOAD_STATUS",
    "IMPORT_SESSION",
    "LIST_IMPORT_SESSIONS",
    "PENDING",
    "PLATFORM",
    "PROCESS_TYPE",
    "REQUEST_PART_UPLOAD",
    "STARTED",
]

ENDPOINT: Final = "https://api.matterport.com/api/import/graph"
PLATFORM: Final = "Matterport"  # as named in error messages
PROCESS_TYPE: Final = "E57"
FILE_TYPE: Final = "application/octet-stream"

#: a file's ``uploadStatus``
PENDING: Final = "PENDING"
STARTED: Final = "STARTED"
COMPLETED: Final = "COMPLETED"

# ---- the seed's documents, verbatim ------------------------------------------------------------

ADD_IMPORT_SESSION: Final = """\
mutation addImportSession(
  $organizationId: ID!
  $processType: ProcessType!
  $name: String
  $description: String
) {
  addImportSession(
    organizationId: $organizationId
    processType: $processType
    name: $name
    description: $description
  ) {
    id
    organizationId
    created
    modified
    processType
    name
    description
  }
}
"""

ADD_E57_OBJECT: Final = """\
mutation AddE57Object($importSessionId: ID!, $e57: E57ObjectInput!) {
  addE57Object(importSessionId: $importSessionId, e57: $e57) {
    id
    clientId
    files {
      id
      clientId
      name
      type
      size
      uploadStatus
    }
  }
}
"""

BEGIN_UPLOAD: Final = """\
mutation beginUpload($importSessionId: ID!, $importFileId: ID!) {
  beginUpload(importSessionId: $importSessionId, importFileId: $importFileId) {
    id
    clientId
    name
    type
    size
    uploadStatus
  }
}
"""

REQUEST_PART_UPLOAD: Final = """\
mutation requestPartUpload(
  $importSessionId: ID!
  $importFileId: ID!
  $part: Int!
  $size: Long!
) {
  requestPartUpload(
    importSessionId: $importSessionId
    importFileId: $importFileId
    part: $part
    size: $size
  ) {
    url
    minSize
    maxSize
    headers {
      key
      value
    }
    method
    completed
    partNumber
  }
}
"""

COMPLETE_UPLOAD: Final = """\
mutation completeUpload(
  $importSessionId: ID!
  $importFileId: ID!
  $completedParts: [CompletedPartInput!]!
) {
  completeUpload(
    importSessionId: $importSessionId
    importFileId: $importFileId
    completedParts: $completedParts
  ) {
    id
    clientId
    name
    type
    size
    uploadStatus
  }
}
"""

COMMIT_IMPORT_SESSION: Final = """\
mutation commitImportSession($importSessionId: ID!) {
  commitImportSession(importSessionId: $importSessionId) {
    id
    name
    description
    created
    organizationId
    userId
    processType
    files {
      id
      clientId
      name
      type
      size
      uploadStatus
      numParts
    }
  }
}
"""

IMPORT_SESSION: Final = """\
query importSession($importSessionId: ID!) {
  importSession(importSessionId: $importSessionId) {
    id
    name
    description
    created
    organizationId
    userId
    modelId
    processType
    files {
      id
      clientId
      name
      type
      size
      uploadStatus
      numParts
      parts {
        minSize
        maxSize
        headers {
          key
          value
        }
      }
    }
  }
}
"""

LIST_IMPORT_SESSIONS: Final = """\
query listImportSessions($modelId: ID) {
  listImportSessions(modelId: $modelId) {
    results {
      id
      name
      created
      modified
      organizationId
      userId
      processType
      committed
    }
  }
}
"""

IMPORT_FILE_PARTS_UPLOAD_STATUS: Final = """\
query importFilePartsUploadStatus(
  $importSessionId: ID!
  $importFileId: ID!
) {
  importFilePartsUploadStatus(
    importSessionId: $importSessionId
    importFileId: $importFileId
  ) {
    eTag
    size
    partNumber
  }
}
"""
