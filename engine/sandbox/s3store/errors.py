"""What the S3 server answers, as the sandbox's planes understand it: errors and ETags.

Rules this module keeps:

* **Errors.** botocore failures become :class:`~engine.sandbox.blobstore.BlobError` with S3's
  code, message and status (``NoSuchUpload``, ``InvalidPart``, ``EntityTooSmall``, ...; a bare
  404 is ``NoSuchKey``); missing credentials are ``NoCredentials`` (500); an unreachable endpoint
  is ``ServiceUnavailable`` (503); other botocore errors are ``InternalError`` (500). Messages are
  one line and never carry credentials or URL signatures.
* **ETags** are compared unquoted and answered quoted, as S3 lists them (``""`` stays empty); an
  ETag is a whole-object MD5 only when it is 32 hex digits (single PUT), not ``<hex>-N``.
"""

from __future__ import annotations

import re
from typing import Final

from engine.sandbox.blobstore import BlobError
from engine.sandbox.s3store.location import S3Location

__all__ = ["UNREACHABLE", "is_md5", "no_credentials", "quoted", "translate", "unquoted"]

UNREACHABLE: Final = "ServiceUnavailable"


def no_credentials() -> BlobError:
    return BlobError(
        "NoCredentials",
        "no credentials for the S3 storage: set AWS_ACCESS_KEY_ID and "
        "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)",
        500,
    )


def translate(exc: BaseException, location: S3Location) -> BlobError:
    """A botocore failure as a ``BlobError`` (S3's code, message and status; one line)."""
    from botocore import exceptions as bx

    if isinstance(exc, BlobError):
        return exc
    if isinstance(exc, bx.ClientError):
        err = exc.response.get("Error", {})
        meta = exc.response.get("ResponseMetadata", {})
        status = int(meta.get("HTTPStatusCode", 0) or 0) or 500
        code = str(err.get("Code", "") or "") or str(status)
        if code == "404":
            code = "NoSuchKey"
        message = str(err.get("Message", "") or code).splitlines()[0]
        return BlobError(code, message, status)
    if isinstance(exc, bx.NoCredentialsError | bx.PartialCredentialsError):
        return no_credentials()
    if isinstance(exc, bx.EndpointConnectionError | bx.ConnectionError):
        return BlobError(
            UNREACHABLE, f"cannot reach the S3 storage at {location.endpoint_url or 'AWS'}", 503
        )
    if isinstance(exc, bx.BotoCoreError):
        text = str(exc).splitlines()[0] if str(exc) else ""
        return BlobError("InternalError", f"{type(exc).__name__}: {text}".rstrip(": "), 500)
    return BlobError("InternalError", f"{type(exc).__name__}", 500)


def quoted(etag: str) -> str:
    value = unquoted(etag)
    return f'"{value}"' if value else ""


def unquoted(etag: str) -> str:
    value = etag.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1]
    return value


def is_md5(etag: str) -> bool:
    return bool(re.fullmatch(r"[0-9a-f]{32}", unquoted(etag).lower()))
