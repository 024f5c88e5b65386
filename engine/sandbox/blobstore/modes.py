"""Storage modes: which real store the blob store answers as (``BlobStore(mode=...)``,
``SandboxConfig.storage_mode``, ``sandbox serve --storage-mode``).

A mode decides how URLs are signed and checked, which headers a PUT must carry, the ETag and the
headers of a stored body, and the error documents. Rules each mode keeps:

* ``s3`` (default): plain S3, as :mod:`.signing`, :mod:`.http` and :mod:`.records` describe:
  ETags are the quoted MD5 hex of the bytes, a multipart object's ``md5(etag(p1)‖…)-N``.
* ``kms``: a bucket with default SSE-KMS encryption. Every PUT and UploadPart answers an ETag of
  32 hex digits that is **not** the MD5 of the bytes, with ``x-amz-server-side-encryption:
  aws:kms`` and ``x-amz-server-side-encryption-aws-kms-key-id``. "Objects … encrypted by SSE-C
  or SSE-KMS, have ETags that are not an MD5 digest of their object data"
  (https://docs.aws.amazon.com/AmazonS3/latest/API/API_Object.html, ETag); the two response
  headers are PutObject's and UploadPart's
  (https://docs.aws.amazon.com/AmazonS3/latest/API/API_PutObject.html,
  https://docs.aws.amazon.com/AmazonS3/latest/API/API_UploadPart.html, Response Syntax). The
  ETag is an HMAC-MD5 of the write's sequence number and the bytes' MD5 under a key derived from
  the store's secret: a fresh one for every write (as ciphertext under a fresh data key would
  be), never the MD5. A completed multipart object keeps S3's ``-N`` form, ``md5`` over the
  parts' (non-MD5) ETags, so no client can verify it from the bytes ("If an object is created by
  … Multipart Upload … the ETag is not an MD5 digest, regardless of the method of encryption").
* ``sse-c``: uploads with customer-provided keys. A multipart upload is taken as initiated with
  the store's customer key (:meth:`SseCMode.client_headers`), so every part PUT must carry
  ``x-amz-server-side-encryption-customer-algorithm: AES256``, ``…-customer-key`` (base64 of 32
  bytes) and ``…-customer-key-MD5`` (base64 MD5 of the key): "If you specified SSE-C encryption
  for the CreateMultipartUpload request, you must also include the following request headers in
  each UploadPart request" (UploadPart, Request headers; also
  https://docs.aws.amazon.com/AmazonS3/latest/userguide/specifying-s3-c-encryption.html). A part
  without them answers 400 ``InvalidRequest`` "The multipart upload initiate requested
  encryption. Subsequent part requests must include the appropriate encryption parameters." (S3's
  answer as quoted in aws/aws-sdk-php#1312). A single PUT may carry a key or not: with one it is
  encrypted (opaque ETag), without one it is stored as plain S3 stores it (MD5 ETag). An
  encrypted PUT answers ``…-customer-algorithm`` and ``…-customer-key-MD5`` ("the response will
  include this header confirming the encryption algorithm used", UploadPart).
* ``azure``: Azure Blob Storage's Put Blob behind a SAS, see :mod:`.azure`.

Every mode records the true MD5 of what it stores (``StoredObject.md5``) for tests.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, ClassVar, Final

from aiohttp import web

from engine.sandbox.blobstore.errors import BlobError, error_body
from engine.sandbox.blobstore.records import GiB, PutTarget, composite_etag, quoted
from engine.sandbox.blobstore.signing import Headers, Signer, check_expiry
from engine.sandbox.blobstore.stats import Counters

if TYPE_CHECKING:
    from multidict import CIMultiDictProxy, MultiMapping

    from engine.sandbox.blobstore.crc64 import Crc64

__all__ = ["MODES", "KmsMode", "SseCMode", "StorageMode", "make_mode"]

MODES: Final = ("s3", "kms", "sse-c", "azure")
DEFAULT_KMS_KEY_ID: Final = (
    "arn:aws:kms:us-east-1:000000000000:key/00000000-0000-4000-8000-00000000cafe"
)
SSE_C_ALGORITHM: Final = "x-amz-server-side-encryption-customer-algorithm"
SSE_C_KEY: Final = "x-amz-server-side-encryption-customer-key"
SSE_C_KEY_MD5: Final = "x-amz-server-side-encryption-customer-key-MD5"


class StorageMode:
    """Plain S3 (``s3``); the base of the other modes."""

    name: ClassVar[str] = "s3"
    request_id_header: ClassVar[str] = "x-amz-request-id"
    multipart: ClassVar[bool] = True  # whether CreateMultipartUpload/UploadPart exist
    max_single_put: ClassVar[int] = 5 * GiB  # PutObject's limit

    def __init__(self, secret: bytes) -> None:
        self._signer = Signer(secret)

    # ---- URLs ------------------------------------------------------------------------------------

    def presign(
        self, base_url: str, key: str, params: dict[str, str], expires_in: float, headers: Headers
    ) -> str:
        return self._signer.presign(base_url, key, params, expires_in, headers)

    def verify(
        self, key: str, query: MultiMapping[str], headers: CIMultiDictProxy[str]
    ) -> dict[str, str]:
        """The request's query parameters (signature checked, then expiry), or BlobError."""
        params = self._signer.verify(key, query, headers)
        check_expiry(params)
        return params

    # ---- checks before the body ------------------------------------------------------------------

    def too_large(self, limit: int) -> BlobError:
        return BlobError("EntityTooLarge", "Your proposed upload exceeds the maximum allowed size.")

    def missing_length(self) -> BlobError:
        return BlobError("MissingContentLength", "You must provide the Content-Length HTTP header.")

    def check_headers(
        self, target: PutTarget, headers: CIMultiDictProxy[str], params: Mapping[str, str]
    ) -> PutTarget:
        """``target`` as this mode will store it; BlobError if a header it needs is wrong."""
        return target

    def body_checksum(self) -> Crc64 | None:
        """A checksum to compute over the body besides its MD5 (``None``: only the MD5)."""
        return None

    def client_headers(self) -> dict[str, str]:
        """Headers every PUT must carry in this mode (for a control plane to hand out)."""
        return {}

    # ---- answers ---------------------------------------------------------------------------------

    def etag(self, digest: bytes, target: PutTarget) -> str:
        """The quoted ETag of a stored body whose MD5 is ``digest``."""
        return quoted(digest.hex())

    def composite(self, part_etags: list[str]) -> str:
        return composite_etag(part_etags)

    def answer(
        self, target: PutTarget, digest: bytes, etag: str, checksum: Crc64 | None
    ) -> tuple[int, dict[str, str]]:
        """Status and headers of a stored body's answer."""
        return 200, {"ETag": etag, **dict(target.answer_headers)}

    def request_id(self, seq: int) -> str:
        return f"{seq:016X}"

    def error_response(
        self,
        error: BlobError,
        request_id: str,
        counters: Counters,
        headers: Mapping[str, str] | None = None,
    ) -> web.Response:
        """This store's XML answer to ``error``, counted by status and by code."""
        counters.responses[error.status] += 1
        counters.errors[error.code] += 1
        return web.Response(
            status=error.status,
            reason=self.error_reason(error),
            body=self.error_document(error, request_id),
            content_type="application/xml",
            headers={**self.error_headers(error, request_id), **(headers or {})},
        )

    def error_document(self, error: BlobError, request_id: str) -> bytes:
        return error_body(error.code, error.message, request_id)

    def error_headers(self, error: BlobError, request_id: str) -> dict[str, str]:
        return {self.request_id_header: request_id}

    def error_reason(self, error: BlobError) -> str | None:
        """The status line's reason phrase (``None``: the standard one)."""
        return None

    def describe(self) -> dict[str, str]:
        """What ``BlobStore.stats()`` reports about the mode."""
        return {"mode": self.name}


class _OpaqueETags:
    """ETags of 32 hex digits that are not the MD5: HMAC-MD5 of a write counter and the MD5."""

    def __init__(self, secret: bytes, label: bytes) -> None:
        self._key = hmac.new(secret, label, hashlib.sha256).digest()
        self._writes = 0

    def next_etag(self, digest: bytes) -> str:
        self._writes += 1
        mac = hmac.new(self._key, self._writes.to_bytes(8, "big") + digest, hashlib.md5)
        return quoted(mac.hexdigest())


class KmsMode(StorageMode):
    """A bucket with default SSE-KMS encryption (see the module docstring)."""

    name = "kms"

    def __init__(self, secret: bytes, key_id: str = DEFAULT_KMS_KEY_ID) -> None:
        super().__init__(secret)
        self.key_id = key_id
        self._etags = _OpaqueETags(secret, b"sandbox sse-kms data key")

    def etag(self, digest: bytes, target: PutTarget) -> str:
        return self._etags.next_etag(digest)

    def answer(
        self, target: PutTarget, digest: bytes, etag: str, checksum: Crc64 | None
    ) -> tuple[int, dict[str, str]]:
        status, headers = super().answer(target, digest, etag, checksum)
        headers["x-amz-server-side-encryption"] = "aws:kms"
        headers["x-amz-server-side-encryption-aws-kms-key-id"] = self.key_id
        return status, headers

    def describe(self) -> dict[str, str]:
        return {**super().describe(), "kms_key_id": self.key_id}


class SseCMode(StorageMode):
    """Uploads with a customer-provided key (see the module docstring)."""

    name = "sse-c"

    def __init__(self, secret: bytes, customer_key: bytes | None = None) -> None:
        super().__init__(secret)
        if customer_key is None:
            customer_key = hashlib.sha256(b"sandbox sse-c customer key:" + secret).digest()
        if len(customer_key) != 32:
            raise ValueError("an SSE-C key is 32 bytes (AES-256)")
        self._customer_key = customer_key
        self._etags = _OpaqueETags(secret, b"sandbox sse-c")

    def client_headers(self) -> dict[str, str]:
        """The three headers every part PUT must carry: the key multipart uploads use."""
        return {
            SSE_C_ALGORITHM: "AES256",
            SSE_C_KEY: base64.b64encode(self._customer_key).decode(),
            SSE_C_KEY_MD5: _b64_md5(self._customer_key),
        }

    def check_headers(
        self, target: PutTarget, headers: CIMultiDictProxy[str], params: Mapping[str, str]
    ) -> PutTarget:
        given = [headers.get(name) for name in (SSE_C_ALGORITHM, SSE_C_KEY, SSE_C_KEY_MD5)]
        if all(value is None for value in given):
            if target.upload_id is not None:
                raise BlobError(
                    "InvalidRequest",
                    "The multipart upload initiate requested encryption. Subsequent part "
                    "requests must include the appropriate encryption parameters.",
                )
            return target  # a single PUT without a key is stored as plain S3 stores it
        algorithm, raw_key, key_md5 = given
        key = _customer_key(algorithm, raw_key, key_md5)
        if target.upload_id is not None and not hmac.compare_digest(key, self._customer_key):
            raise BlobError(
                "InvalidRequest",
                "The provided encryption parameters did not match the ones used originally.",
            )
        echoed = ((SSE_C_ALGORITHM, "AES256"), (SSE_C_KEY_MD5, _b64_md5(key)))
        return replace(target, encrypted=True, answer_headers=echoed)

    def etag(self, digest: bytes, target: PutTarget) -> str:
        return self._etags.next_etag(digest) if target.encrypted else super().etag(digest, target)


def _customer_key(algorithm: str | None, raw_key: str | None, key_md5: str | None) -> bytes:
    """The 32-byte key the three SSE-C headers give, or the error S3 answers."""
    if algorithm != "AES256":
        raise BlobError(
            "InvalidEncryptionAlgorithmError",
            "The Encryption request you specified is not valid. Supported value: AES256.",
        )
    try:
        key = base64.b64decode((raw_key or "").strip(), validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != 32:
        raise BlobError(
            "InvalidArgument", "The secret key was invalid for the specified algorithm."
        )
    if key_md5 is None or not hmac.compare_digest(key_md5.strip(), _b64_md5(key)):
        raise BlobError(
            "InvalidArgument",
            "The calculated MD5 hash of the key did not match the hash that was provided.",
        )
    return key


def _b64_md5(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode()


def make_mode(name: str, secret: bytes) -> StorageMode:
    """The mode called ``name`` (one of :data:`MODES`), signing with ``secret``."""
    if name == "s3":
        return StorageMode(secret)
    if name == "kms":
        return KmsMode(secret)
    if name == "sse-c":
        return SseCMode(secret)
    if name == "azure":
        from engine.sandbox.blobstore.azure import AzureMode

        return AzureMode(secret)
    raise ValueError(f"unknown storage mode {name!r} (one of {', '.join(MODES)})")
