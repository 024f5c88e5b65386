"""The Speckle plane's errors: :class:`SpeckleApiError`, the ``extensions.code`` values, the bodies.

Rules this module keeps (specklesystems/speckle-server, ``packages/server``):

* **Resolver errors** are HTTP 200 with ``errors[].extensions`` holding the error class's
  ``code`` and its ``statusCode``: ``buildErrorFormatter`` (``modules/core/graph/setup.ts``)
  merges ``VError.info`` — which ``BaseError`` (``modules/shared/errors/base.ts``) fills with both
  — into the extensions. :data:`STATUS_CODES` holds each class's ``statusCode``.
* **Apollo Server 4's own codes** for requests that never reach a resolver: ``BAD_REQUEST``,
  ``GRAPHQL_PARSE_FAILED``, ``GRAPHQL_VALIDATION_FAILED``, ``OPERATION_RESOLUTION_FAILURE``,
  ``BAD_USER_INPUT``; ``INTERNAL_SERVER_ERROR`` for any other error. They carry no statusCode.
* **Refusals at the door are not GraphQL**: HTTP 403 :data:`INVALID_TOKEN_BODY` for a token that
  is not valid (``modules/shared/middleware/index.ts``, ``authContextMiddleware``); HTTP 429
  :func:`rate_limited_body` (``modules/core/rest/defaultErrorHandler.ts`` renders the
  ``RateLimitError`` of ``modules/core/errors/ratelimit.ts``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

# ---- error codes (extensions.code) and the classes they come from ------------------------------
FORBIDDEN: Final = "FORBIDDEN"
"""``ForbiddenError`` (modules/shared/errors/index.ts): a project the caller may not use."""
UNAUTHORIZED: Final = "UNAUTHORIZED"
"""``UnauthorizedError``: a mutation without any token (``@hasServerRole``)."""
STREAM_NOT_FOUND: Final = "STREAM_NOT_FOUND"
"""``StreamNotFoundError`` (modules/core/errors/stream.ts): a project that does not exist."""
BRANCH_NOT_FOUND: Final = "BRANCH_NOT_FOUND"
"""``BranchNotFoundError`` (modules/core/errors/branch.ts): ``project.model``/``modelByName``."""
MODEL_NOT_FOUND: Final = "MODEL_NOT_FOUND"
"""``ModelNotFoundError`` (modules/core/errors/model.ts): the model of a file import."""
COMMIT_NOT_FOUND: Final = "COMMIT_NOT_FOUND"
"""``CommitNotFoundError`` (modules/core/errors/commit.ts): an unknown version."""
USER_INPUT_ERROR: Final = "USER_INPUT_ERROR"
"""``UserInputError`` (modules/core/errors/userinput.ts): a file name without extension, an
empty or wrong ETag, an empty object or one over the size limit, a fileId that generateUploadUrl
did not make for the project."""
ALREADY_REGISTERED_BLOB_ERROR: Final = "ALREADY_REGISTERED_BLOB_ERROR"
"""``AlreadyRegisteredBlobError`` (modules/blobstorage/errors/index.ts): a second completion."""
STORED_BLOB_ACCESS_ERROR: Final = "STORED_BLOB_ACCESS_ERROR"
"""``StoredBlobAccessError``: a completion for a file that is not stored."""
BRANCH_NAME_ERROR: Final = "BRANCH_NAME_ERROR"
"""``BranchNameError``: a model name that breaks the naming rules."""
BRANCH_CREATE_ERROR: Final = "BRANCH_CREATE_ERROR"
"""``BranchCreateError``: a model name already taken in the project."""
UNSUPPORTED_FILE_TYPE: Final = "UNSUPPORTED_FILE_TYPE"
"""``UnsupportedFileTypeError`` (modules/fileuploads/helpers/errors.ts): no importer queue
takes the file's extension."""
BAD_REQUEST_ERROR: Final = "BAD_REQUEST_ERROR"
"""``BadRequestError``: e.g. a legacy upload that is not multipart (busboy refuses it)."""
RATE_LIMIT_ERROR: Final = "RATE_LIMIT_ERROR"
"""``RateLimitError`` (modules/core/errors/ratelimit.ts)."""
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
"""HTTP 400 (``status400ForVariableCoercionErrors: true`` in app.ts): variables that do not fit
their types; also a cursor that does not decode (a resolver error, HTTP 200)."""
INTERNAL_SERVER_ERROR: Final = "INTERNAL_SERVER_ERROR"
"""A resolver error that carries no code of its own."""

STATUS_CODES: Final[Mapping[str, int]] = {
    FORBIDDEN: 403,
    UNAUTHORIZED: 401,
    STREAM_NOT_FOUND: 404,
    BRANCH_NOT_FOUND: 404,
    MODEL_NOT_FOUND: 404,
    COMMIT_NOT_FOUND: 404,
    USER_INPUT_ERROR: 400,
    ALREADY_REGISTERED_BLOB_ERROR: 400,
    STORED_BLOB_ACCESS_ERROR: 400,
    BRANCH_NAME_ERROR: 400,
    BRANCH_CREATE_ERROR: 400,
    UNSUPPORTED_FILE_TYPE: 400,
    BAD_REQUEST_ERROR: 400,
    RATE_LIMIT_ERROR: 429,
}
"""The ``statusCode`` of each server error class (Apollo's own codes have none)."""

INVALID_TOKEN_BODY: Final = {"error": "Your token is not valid."}
"""The JSON body of the HTTP 403 sent for a token that is not valid."""

RATE_LIMITED_MESSAGE: Final = (
    "You have sent too many requests. You are being rate limited. Please try again later."
)


def rate_limited_body() -> dict[str, Any]:
    """The JSON body of an HTTP 429: ``resolveErrorInfo`` of a ``RateLimitError`` outside dev."""
    return {"error": {"message": RATE_LIMITED_MESSAGE, "code": RATE_LIMIT_ERROR}}


def rest_error_body(code: str, message: str) -> dict[str, Any]:
    """A REST route's error as ``defaultErrorHandler`` renders a ``BaseError`` outside dev."""
    return {"error": {"message": message, "code": code}}


class SpeckleApiError(Exception):
    """A resolver error; becomes ``errors[]`` with ``extensions.code == code`` (HTTP 200)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.extensions: dict[str, Any] = {"code": code}
        if code in STATUS_CODES:
            self.extensions["statusCode"] = STATUS_CODES[code]
