"""The Speckle plane's errors: :class:`SpeckleApiError` and the ``extensions.code`` values.

Rules this module keeps:

* **Resolver errors** are HTTP 200 with ``errors[].extensions.code`` set to the real server's
  code: ``FORBIDDEN``, ``STREAM_NOT_FOUND``, ``MODEL_NOT_FOUND``, ``NOT_FOUND``,
  ``USER_INPUT_ERROR``, ``ALREADY_REGISTERED_BLOB_ERROR``, ``STORED_BLOB_ACCESS_ERROR``,
  ``BRANCH_NAME_ERROR``, ``BRANCH_CREATE_ERROR``.
* **Apollo Server 4's own codes** for requests that never reach a resolver: ``BAD_REQUEST``,
  ``GRAPHQL_PARSE_FAILED``, ``GRAPHQL_VALIDATION_FAILED``, ``OPERATION_RESOLUTION_FAILURE``,
  ``BAD_USER_INPUT``; ``INTERNAL_SERVER_ERROR`` for any other error.
* Refusals at the door are not GraphQL: HTTP 403 :data:`INVALID_TOKEN_BODY` for a bad token,
  HTTP 429 ``{"err": …}`` when rate limited.
"""

from __future__ import annotations

from typing import Final

# Every name here is public: the codes, the two bodies and the error class.

# ---- error codes (extensions.code) -----------------------------------------------------------
FORBIDDEN: Final = "FORBIDDEN"
"""A configured project that is not among the token's projects."""
STREAM_NOT_FOUND: Final = "STREAM_NOT_FOUND"
"""A project that is not configured."""
MODEL_NOT_FOUND: Final = "MODEL_NOT_FOUND"
"""No such model in the project (by id or by name)."""
NOT_FOUND: Final = "NOT_FOUND"
"""No such version or ingestion in the project (or version of the model)."""
USER_INPUT_ERROR: Final = "USER_INPUT_ERROR"
"""A bad argument: a file name without extension, an empty or wrong ETag, an empty object or one
over the size limit, a fileId that generateUploadUrl did not make for the project."""
ALREADY_REGISTERED_BLOB_ERROR: Final = "ALREADY_REGISTERED_BLOB_ERROR"
"""startFileIngestion for a fileId that was already registered (or refused)."""
STORED_BLOB_ACCESS_ERROR: Final = "STORED_BLOB_ACCESS_ERROR"
"""startFileIngestion for a file that is not stored."""
BRANCH_NAME_ERROR: Final = "BRANCH_NAME_ERROR"
"""A model name that breaks the naming rules."""
BRANCH_CREATE_ERROR: Final = "BRANCH_CREATE_ERROR"
"""A model name already taken in the project (case-insensitively)."""
# Apollo Server 4's own codes.
BAD_REQUEST: Final = "BAD_REQUEST"
"""HTTP 400: the body is not a JSON object with a non-empty ``query``."""
GRAPHQL_PARSE_FAILED: Final = "GRAPHQL_PARSE_FAILED"
"""HTTP 400: the document does not parse."""
GRAPHQL_VALIDATION_FAILED: Final = "GRAPHQL_VALIDATION_FAILED"
"""HTTP 400: the schema refuses the document."""
OPERATION_RESOLUTION_FAILURE: Final = "OPERATION_RESOLUTION_FAILURE"
"""HTTP 400: an unknown operation name, or several operations and no name."""
BAD_USER_INPUT: Final = "BAD_USER_INPUT"
"""Variables that do not fit their types (HTTP 200, no ``data``); a cursor that does not decode."""
INTERNAL_SERVER_ERROR: Final = "INTERNAL_SERVER_ERROR"
"""A resolver error that carries no code of its own."""

INVALID_TOKEN_BODY: Final = {"error": "Your token is not valid."}
"""The JSON body of the HTTP 403 sent for a missing or unknown token."""

RATE_LIMITED_MESSAGE: Final = (
    "You have sent too many requests. You are being rate limited. Please try again later."
)


class SpeckleApiError(Exception):
    """A resolver error; becomes ``errors[]`` with ``extensions.code == code`` (HTTP 200)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.extensions = {"code": code}
