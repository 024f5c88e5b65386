"""Azure Blob Storage's Put Blob behind a service SAS: the blob store's ``azure`` mode.

Rules this module keeps (pages cited next to each; guesses are in the README's table):

* **URLs are SAS-shaped**: ``{base_url}/blob/{key}?sv=…&se=…&sr=b&sp=cw&sig=…``, ``se`` the expiry
  in ISO 8601 UTC, ``sig`` a base64 HMAC-SHA256 (service SAS,
  https://learn.microsoft.com/en-us/rest/api/storageservices/create-service-sas). A SAS binds no
  request header: headers a plane asks for are returned to the client, not signed. There are no
  multipart uploads (Put Block / Put Block List are not modelled): one Put Blob per blob.
* **A PUT is checked** (after the key): ``sig`` and the fields present and the signature valid,
  else 403 ``AuthenticationFailed``; ``sp`` granting create or write, else 403
  ``AuthorizationPermissionMismatch``; then the time: an expired SAS answers 403
  ``AuthenticationFailed`` with ``AuthenticationErrorDetail`` "Signed expiry time [se] must be
  after signed start time [now]", as Azure answers a SAS without ``st`` (blrchen/azure-speed-test
  #12, elastic/elasticsearch#107617, floci-io/floci-az#89; the sandbox issues no ``st``, and a
  client cannot add one without breaking the signature); then ``Content-Length`` (411
  ``MissingContentLengthHeader``); then the size: above ``max_object_size`` (5000 MiB by default,
  "The maximum size for a block blob created via Put Blob is 5000 MiB" for version 2019-12-12 and
  later, https://learn.microsoft.com/en-us/rest/api/storageservices/put-blob) is 413
  ``RequestBodyTooLarge`` with ``MaxLimit`` (the shape of Azure's answers in
  Azure/azure-storage-python#672); then ``x-ms-blob-type`` ("Required. Specifies the type of blob
  to create", Put Blob, Request headers): missing is 400 ``MissingRequiredHeader`` with
  ``HeaderName`` (Azure's answer in mercuretechnologies/xprem#26), anything but ``BlockBlob`` 400
  ``InvalidHeaderValue``.
* **A stored blob answers 201 Created** ("A successful operation returns status code 201
  (Created)", Put Blob, Response) with an opaque quoted ``"0x8D…"`` ETag (15 uppercase hex
  digits after ``0x``, new for every write, as Azurite's ``newEtag`` mimics the service),
  ``Content-MD5`` (base64 of the body's MD5, computed by the service even when the request sent
  none), ``x-ms-content-crc64`` (Azure's CRC-64 of the body, :mod:`.crc64`; the 201 header the
  Azure SDK for Go's swagger directive "Fix CRC Response Header in PutBlob response" adds),
  ``Last-Modified``, ``x-ms-request-server-encrypted: true``, ``x-ms-request-id`` and
  ``x-ms-version`` (the request's ``x-ms-version``, else the SAS's ``sv``).
* **Errors** are Azure's documents: ``<?xml version="1.0" encoding="utf-8"?><Error><Code>…
  </Code><Message>…\\nRequestId:…\\nTime:…</Message>`` plus the detail elements, with
  ``x-ms-error-code`` and the message as the status line's reason
  (https://learn.microsoft.com/en-us/rest/api/storageservices/status-and-error-codes2).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import math
import time
import uuid
from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime
from email.utils import formatdate
from typing import TYPE_CHECKING, Final
from urllib.parse import quote

from engine.sandbox.blobstore.crc64 import Crc64, crc64_header
from engine.sandbox.blobstore.errors import BlobError
from engine.sandbox.blobstore.modes import StorageMode
from engine.sandbox.blobstore.records import MiB, PutTarget
from engine.sandbox.blobstore.signing import BLOB_PREFIX, Headers, canonical_query, single_params

if TYPE_CHECKING:
    from multidict import CIMultiDictProxy, MultiMapping

__all__ = ["SAS_VERSION", "AzureMode", "azure_error_body"]

SAS_VERSION: Final = "2024-11-04"  # a current x-ms-version (the one Azure answered in #31744)
_SAS_FIELDS: Final = ("sv", "se", "sr", "sp")
_AUTH_FAILED: Final = (
    "Server failed to authenticate the request. Make sure the value of Authorization header is "
    "formed correctly including the signature."
)


class AzureMode(StorageMode):
    """Put Blob behind a service SAS (see the module docstring)."""

    name = "azure"
    request_id_header = "x-ms-request-id"
    multipart = False
    max_single_put = 5000 * MiB

    def __init__(self, secret: bytes) -> None:
        super().__init__(secret)
        self._etag_key = hmac.new(secret, b"sandbox azure etags", hashlib.sha256).digest()
        self._writes = 0

    # ---- URLs ------------------------------------------------------------------------------------

    def presign(
        self, base_url: str, key: str, params: dict[str, str], expires_in: float, headers: Headers
    ) -> str:
        if params:
            raise ValueError(
                "azure mode serves Put Blob only (one PUT per blob): there are no part URLs"
            )
        expiry = datetime.fromtimestamp(math.ceil(time.time() + expires_in), UTC)
        fields = {"sv": SAS_VERSION, "se": _iso(expiry), "sr": "b", "sp": "cw"}
        sig = self._sign(key, fields)
        return (
            f"{base_url}{BLOB_PREFIX}{quote(key, safe='/')}?{canonical_query(fields.items())}"
            f"&sig={quote(sig, safe='')}"
        )

    def _sign(self, key: str, fields: Mapping[str, str]) -> str:
        digest = bytes.fromhex(self._signer.sign("PUT", key, fields.items(), ()))
        return base64.b64encode(digest).decode()

    def verify(
        self, key: str, query: MultiMapping[str], headers: CIMultiDictProxy[str]
    ) -> dict[str, str]:
        params = single_params(query, "InvalidQueryParameterValue")
        sig = params.pop("sig", None)
        fields = {name: value for name, value in params.items() if name in _SAS_FIELDS}
        if not sig or any(name not in fields for name in _SAS_FIELDS):
            raise _auth_failed("sv, se, sr, sp and sig are required in a service SAS.")
        if not hmac.compare_digest(self._sign(key, fields), sig):
            raise _auth_failed("Signature did not match.")
        if not {"c", "w"} & set(fields["sp"]):
            raise BlobError(
                "AuthorizationPermissionMismatch",
                "This request is not authorized to perform this operation using this permission.",
                403,
            )
        _check_time(fields)
        return params

    # ---- checks before the body ------------------------------------------------------------------

    def too_large(self, limit: int) -> BlobError:
        return BlobError(
            "RequestBodyTooLarge",
            "The request body is too large and exceeds the maximum permissible limit.",
            detail=(("MaxLimit", str(limit)),),
        )

    def missing_length(self) -> BlobError:
        return BlobError(
            "MissingContentLengthHeader", "The Content-Length header was not specified."
        )

    def check_headers(
        self, target: PutTarget, headers: CIMultiDictProxy[str], params: Mapping[str, str]
    ) -> PutTarget:
        blob_type = headers.get("x-ms-blob-type")
        if blob_type is None:
            raise BlobError(
                "MissingRequiredHeader",
                "An HTTP header that's mandatory for this request is not specified.",
                detail=(("HeaderName", "x-ms-blob-type"),),
            )
        if blob_type.strip() != "BlockBlob":
            raise BlobError(
                "InvalidHeaderValue",
                "The value for one of the HTTP headers is not in the correct format.",
                detail=(("HeaderName", "x-ms-blob-type"), ("HeaderValue", blob_type)),
            )
        version = headers.get("x-ms-version") or params.get("sv", SAS_VERSION)
        return replace(target, answer_headers=(("x-ms-version", version),))

    def body_checksum(self) -> Crc64:
        return Crc64()

    def client_headers(self) -> dict[str, str]:
        return {"x-ms-blob-type": "BlockBlob"}

    # ---- answers ---------------------------------------------------------------------------------

    def etag(self, digest: bytes, target: PutTarget) -> str:
        self._writes += 1
        mac = hmac.new(self._etag_key, self._writes.to_bytes(8, "big") + digest, hashlib.sha256)
        return f'"0x8D{mac.hexdigest()[:13].upper()}"'

    def answer(
        self, target: PutTarget, digest: bytes, etag: str, checksum: Crc64 | None
    ) -> tuple[int, dict[str, str]]:
        headers = {
            "ETag": etag,
            "Last-Modified": formatdate(usegmt=True),
            "Content-MD5": base64.b64encode(digest).decode(),
            "x-ms-request-server-encrypted": "true",
            **dict(target.answer_headers),
        }
        if checksum is not None:
            headers["x-ms-content-crc64"] = crc64_header(checksum.digest())
        return 201, headers

    def request_id(self, seq: int) -> str:
        return str(uuid.UUID(int=seq))

    def error_document(self, error: BlobError, request_id: str) -> bytes:
        return azure_error_body(error, request_id)

    def error_headers(self, error: BlobError, request_id: str) -> dict[str, str]:
        return {
            "x-ms-request-id": request_id,
            "x-ms-error-code": error.code,
            "x-ms-version": SAS_VERSION,
        }

    def error_reason(self, error: BlobError) -> str | None:
        return error.message  # Azure's status line carries the message


def azure_error_body(error: BlobError, request_id: str) -> bytes:
    """Azure's XML error document for ``error``."""
    moment = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f0Z")
    message = f"{error.message}\nRequestId:{request_id}\nTime:{moment}"
    details = "".join(
        f"<{name}>{html.escape(text, quote=False)}</{name}>" for name, text in error.detail
    )
    return (
        '<?xml version="1.0" encoding="utf-8"?><Error>'
        f"<Code>{html.escape(error.code)}</Code><Message>{html.escape(message, quote=False)}"
        f"</Message>{details}</Error>"
    ).encode()


def _auth_failed(detail: str) -> BlobError:
    return BlobError(
        "AuthenticationFailed", _AUTH_FAILED, 403, detail=(("AuthenticationErrorDetail", detail),)
    )


def _check_time(fields: Mapping[str, str]) -> None:
    """403 ``AuthenticationFailed`` unless now is before ``se`` (the SAS has no ``st``: the
    request's time is its start)."""
    try:
        expiry = datetime.fromisoformat(fields["se"].replace("Z", "+00:00"))
    except ValueError:
        raise _auth_failed(f"se is not an ISO 8601 UTC time: {fields['se']!r}") from None
    if expiry.tzinfo is None:
        expiry = expiry.replace(tzinfo=UTC)
    now = datetime.now(UTC)
    if now >= expiry:
        raise _auth_failed(
            f"Signed expiry time [{_http_date(expiry)}] must be after signed start time "
            f"[{_http_date(now)}]"
        )


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _http_date(moment: datetime) -> str:
    return formatdate(moment.timestamp(), usegmt=True)
