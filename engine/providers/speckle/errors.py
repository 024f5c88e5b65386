"""What Speckle refuses, said once: GraphQL failures, credentials, and files it cannot take.

Rules:
- GraphQL failures are mapped once, in ``classify``: each answer becomes one ``RemoteError``
  subclass with the operation, the server's message and its code; ``None`` marks a failure
  worth retrying (``engine.graphql`` does the retrying). The codes are the server's
  (speckle-server ``modules/shared/errors/index.ts``, ``core/errors/*.ts``,
  ``blobstorage/errors``, ``fileuploads/helpers/errors.ts``): an unknown model is
  ``BRANCH_NOT_FOUND`` from ``project.model``/``modelByName`` (``core/graph/resolvers/models.ts``)
  and ``MODEL_NOT_FOUND`` from the file-import mutations; ``RATE_LIMIT_ERROR`` is transient;
- a refused completion that is about the file becomes an ``InputError`` (``input_refusal``):
  "File size exceeds …" / ``[FILE_SIZE_EXCEEDED]`` / ``FILE_SIZE_EXCEEDED`` a ``TooLargeError``
  (``blobstorage/services/presigned.ts``), ``UNSUPPORTED_FILE_TYPE`` a ``FormatError``
  (``fileuploads/services/management.ts``);
- the token goes in a header only and never appears in a ``repr``, a message or the journal;
- a file is refused locally, before any request (``check_local``): above 5 GiB (one PUT holds at
  most that) or above ``size_limit`` (``TooLargeError``); without an extension (the server tells
  a file's type by it: ``generateUploadUrl`` refuses a name without one); ``.ifc`` not opening
  with ``ISO-10303-21;`` or ``.e57`` not opening with ``ASTM-E57`` (``FormatError``). Other
  extensions go to the server, which decides what it imports (app.speckle.systems takes OBJ,
  STL, DWG, DXF, 3DM and more; a self-hosted server IFC only). The server's own limit
  (``blobSizeLimitBytes``) is checked once known (``check_server_limit``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from engine.errors import (
    AuthenticationError,
    ConflictError,
    FormatError,
    InputError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    RemoteError,
    TooLargeError,
)
from engine.formats import check_e57, check_ifc
from engine.graphql import GraphQLFailure
from engine.providers.speckle.documents import MAX_UPLOAD_SIZE

__all__ = [
    "SpeckleCredentials",
    "check_local",
    "check_server_limit",
    "classify",
    "input_refusal",
    "is_unsupported",
]

_INVALID_CODES: Final = frozenset(
    {
        "USER_INPUT_ERROR",
        "BAD_USER_INPUT",
        "BAD_REQUEST",
        "BAD_REQUEST_ERROR",
        "INVALID_ARGUMENT_ERROR",
        "GRAPHQL_VALIDATION_FAILED",
        "GRAPHQL_PARSE_FAILED",
    }
)
_TRANSIENT_CODES: Final = frozenset(
    {"INTERNAL_SERVER_ERROR", "RATE_LIMIT_ERROR", "RATE_LIMITED", "TOO_MANY_REQUESTS"}
)
_NOT_FOUND: Final[dict[str, str]] = {
    "STREAM_NOT_FOUND": "project not found",
    "BRANCH_NOT_FOUND": "model not found",
    "MODEL_NOT_FOUND": "model not found",
    "NOT_FOUND": "not found",
    "NOT_FOUND_ERROR": "not found",
    "COMMIT_NOT_FOUND": "version not found",
    "FILE_IMPORT_JOB_NOT_FOUND": "file import not found",
}
_REFUSED: Final[dict[str, tuple[type[RemoteError], str]]] = {
    "BRANCH_NAME_ERROR": (InvalidRequestError, "invalid model name"),
    "BRANCH_CREATE_ERROR": (ConflictError, "model not created"),
    "ALREADY_REGISTERED_BLOB_ERROR": (ConflictError, "file already registered"),
    "STORED_BLOB_ACCESS_ERROR": (InvalidRequestError, "the uploaded file is not in storage"),
    "FILE_SIZE_EXCEEDED": (InvalidRequestError, "file too large"),
    "UNSUPPORTED_FILE_TYPE": (InvalidRequestError, "file type not imported"),
}
_SIZE_WORDS: Final = ("File size exceeds", "[FILE_SIZE_EXCEEDED]", "File size limit reached")


def classify(failure: GraphQLFailure) -> RemoteError | None:
    """The error for a failed Speckle GraphQL call, or ``None`` when it is worth retrying."""
    op, code, message = failure.operation, failure.code, failure.message
    detail = f"{message} ({code})" if code else message
    if failure.status in (401, 403) and not code:
        # Refused before GraphQL ran: HTTP 403 {"error": "Your token is not valid."}
        return AuthenticationError(
            f"{op}: SPECKLE_TOKEN is not valid ({message or f'HTTP {failure.status}'})",
            code=f"HTTP {failure.status}",
        )
    if code in ("UNAUTHENTICATED", "UNAUTHORIZED"):
        return AuthenticationError(f"{op}: SPECKLE_TOKEN is not valid: {detail}", code=code)
    if code == "FORBIDDEN":
        return PermissionDeniedError(
            f"{op}: permission denied: {detail}; the token needs the streams:write scope and "
            "a Can edit role on the project",
            code=code,
        )
    if code in _NOT_FOUND:
        return NotFoundError(f"{op}: {_NOT_FOUND[code]}: {detail}", code=code)
    if code in _INVALID_CODES:
        return InvalidRequestError(f"{op}: request rejected: {detail}", code=code)
    if code in _REFUSED:
        error, what = _REFUSED[code]
        return error(f"{op}: {what}: {detail}", code=code)
    if code in _TRANSIENT_CODES:
        return None
    return RemoteError(f"{op}: {detail or f'HTTP {failure.status}'}", code=code)


def is_unsupported(exc: BaseException) -> bool:
    """True when the server's schema lacks what a document asked for: it ran nothing."""
    return isinstance(exc, InvalidRequestError) and exc.code == "GRAPHQL_VALIDATION_FAILED"


def input_refusal(exc: RemoteError, path: Path, size: int) -> InputError | None:
    """The ``InputError`` a refused completion stands for, when it is about the file."""
    text = str(exc)
    if exc.code == "FILE_SIZE_EXCEEDED" or any(w in text for w in _SIZE_WORDS):
        return TooLargeError(
            f"{path}: {size} bytes: the Speckle server refused it as too large: {text}"
        )
    if exc.code == "UNSUPPORTED_FILE_TYPE":
        return FormatError(
            f"{path}: {path.suffix}: not a format this Speckle server imports: {text}"
        )
    return None


@dataclass(frozen=True, slots=True)
class SpeckleCredentials:
    """A Speckle personal access token (scope ``streams:write``). Never shown by ``repr``."""

    token: str = field(repr=False)

    def __post_init__(self) -> None:
        token = self.token.strip()
        if not token:
            raise AuthenticationError("SPECKLE_TOKEN is empty; create a personal access token")
        if any(ch.isspace() for ch in token):
            raise AuthenticationError("SPECKLE_TOKEN is malformed: it contains whitespace")
        object.__setattr__(self, "token", token)

    def __repr__(self) -> str:
        return "SpeckleCredentials(token=<redacted>)"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> SpeckleCredentials:
        """Read ``SPECKLE_TOKEN`` from ``env`` (default ``os.environ``)."""
        token = (os.environ if env is None else env).get("SPECKLE_TOKEN", "")
        if not token.strip():
            raise AuthenticationError(
                "SPECKLE_TOKEN is not set; create a personal access token with the "
                "streams:write scope (Avatar > Profile > Personal Access Tokens) and export it"
            )
        return cls(token)

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


_CHECKS: Final = {".ifc": check_ifc, ".e57": check_e57}


def check_local(path: Path, size: int, size_limit: int | None = None) -> None:
    """Refuse what Speckle cannot take, before any request. Blocking: reads the file's head."""
    if size > MAX_UPLOAD_SIZE:
        raise TooLargeError(
            f"{path}: {size} bytes exceed the {MAX_UPLOAD_SIZE}-byte (5 GiB) limit of one "
            "Speckle upload"
        )
    if size_limit is not None and size > size_limit:
        raise TooLargeError(f"{path}: {size} bytes exceed the size limit of {size_limit} bytes")
    if not path.suffix or path.suffix == ".":
        raise FormatError(
            f"{path}: no extension: not a format Speckle can import (the server tells a file's "
            "type by its extension)"
        )
    check = _CHECKS.get(path.suffix.lower())
    if check is not None:
        check(path)


def check_server_limit(path: Path, size: int, limit: int | None) -> None:
    """Refuse a file above the server's ``blobSizeLimitBytes`` before any byte is sent."""
    if limit is not None and size > limit:
        raise TooLargeError(
            f"{path}: {size} bytes exceed this Speckle server's file size limit of {limit} "
            "bytes (serverInfo.configuration.blobSizeLimitBytes)"
        )
