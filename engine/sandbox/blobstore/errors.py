"""S3's errors as the blob store (and the S3 storage behind the sandbox) raise and answer them.

Rules this module keeps:

* An error is a :class:`BlobError`: S3's ``code`` (e.g. ``NoSuchUpload``), its ``message`` and the
  HTTP ``status`` S3 answers it with (looked up by code unless given; 400 for unknown codes), and
  optional ``detail`` elements that a store's error document adds after ``Message`` (Azure's
  ``AuthenticationErrorDetail``, ``HeaderName``, ``MaxLimit``).
* An answer is an S3-style XML ``<Error>`` document with ``Code``, ``Message`` and ``RequestId``,
  every value XML-escaped.
* The messages S3 uses for a missing upload and for a completion already in progress are
  written once, here, and shared by every store.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from typing import Final

__all__ = ["NO_SUCH_UPLOAD", "OPERATION_ABORTED", "BlobError", "error_body", "no_such_upload"]

_STATUS_BY_CODE: Final[Mapping[str, int]] = {
    "AccessDenied": 403,
    "SignatureDoesNotMatch": 403,
    "InvalidKey": 400,
    "InvalidArgument": 400,
    "InvalidPart": 400,
    "InvalidPartOrder": 400,
    "EntityTooSmall": 400,
    "EntityTooLarge": 400,
    "MalformedXML": 400,
    "BadDigest": 400,
    "InvalidDigest": 400,
    "IncompleteBody": 400,
    "MissingContentLength": 411,
    "NoSuchUpload": 404,
    "NoSuchKey": 404,
    "OperationAborted": 409,
    "InternalError": 500,
    "NotImplemented": 501,
    "InvalidRequest": 400,
    "InvalidEncryptionAlgorithmError": 400,
    # Azure Blob Storage's codes (azure mode), statuses from its common error-code list:
    # https://learn.microsoft.com/en-us/rest/api/storageservices/common-rest-api-error-codes
    "AuthenticationFailed": 403,
    "MissingRequiredHeader": 400,
    "InvalidHeaderValue": 400,
    "RequestBodyTooLarge": 413,
    "MissingContentLengthHeader": 411,
}

NO_SUCH_UPLOAD: Final = (
    "The specified upload does not exist. The upload ID may be invalid, or the upload may have "
    "been aborted or completed."
)
OPERATION_ABORTED: Final = (
    "A conflicting conditional operation is currently in progress against this resource. "
    "Please try again."
)


class BlobError(Exception):
    """A store error: ``code`` (e.g. ``NoSuchUpload``), ``message``, the HTTP ``status`` and the
    ``detail`` elements (``(name, text)``) the error document adds after the message."""

    code: str
    message: str
    status: int
    detail: tuple[tuple[str, str], ...]

    def __init__(
        self,
        code: str,
        message: str,
        status: int | None = None,
        *,
        detail: Sequence[tuple[str, str]] = (),
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status if status is not None else _STATUS_BY_CODE.get(code, 400)
        self.detail = tuple(detail)


def no_such_upload() -> BlobError:
    """S3's ``NoSuchUpload`` (404), for an unknown, aborted or completed upload."""
    return BlobError("NoSuchUpload", NO_SUCH_UPLOAD)


def error_body(code: str, message: str, request_id: str) -> bytes:
    """An S3-style XML error document."""
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{html.escape(code)}</Code><Message>{html.escape(message)}</Message>"
        f"<RequestId>{html.escape(request_id)}</RequestId></Error>"
    ).encode()
