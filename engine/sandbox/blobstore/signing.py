"""Presigned URLs: how the blob store signs them and checks the requests that use them.

Rules this module keeps:

* **URLs are signed.** ``{base_url}/blob/{key}?[uploadId&partNumber&]X-Expires&[X-SignedHeaders&]
  X-Signature``. The signature is HMAC-SHA256(secret) over the method, ``/blob/`` + the *decoded*
  key, the canonical query (decoded pairs without ``X-Signature``, sorted, each side percent-encoded
  with only ``A-Za-z0-9-_.~`` left bare) and ``name:value`` of every signed header (names lowercase,
  sorted, values stripped; repeated headers joined by ``,``). Signing decoded values keeps the check
  indifferent to how a client library re-encodes the URL.
* **A request is checked in this order:** no query parameter twice (400 ``InvalidArgument``),
  signature present and valid, with every signed header present and equal (403
  ``SignatureDoesNotMatch``), then expiry (403 ``AccessDenied`` / ``Request has expired``).
* **Required headers** are named once each, case-insensitively, with no ``;``, ``:``, CR or LF in
  the name (:func:`signed_headers`; the S3 storage also refuses spaces and ``host``); a name that
  breaks this is a ``ValueError`` when presigning, not a URL that can never work.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import time
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Final, TypeAlias
from urllib.parse import quote

from engine.sandbox.blobstore.errors import BlobError

if TYPE_CHECKING:
    from multidict import CIMultiDictProxy, MultiMapping

__all__ = [
    "BLOB_PREFIX",
    "Headers",
    "Signer",
    "canonical_query",
    "check_expiry",
    "signed_headers",
    "single_params",
]

BLOB_PREFIX: Final = "/blob/"

Headers: TypeAlias = Mapping[str, str]
"""Header names to values: headers a presigned URL requires."""
_SAFE_QUERY: Final = "-_.~"


def canonical_query(pairs: Iterable[tuple[str, str]]) -> str:
    return "&".join(
        f"{quote(name, safe=_SAFE_QUERY)}={quote(value, safe=_SAFE_QUERY)}"
        for name, value in sorted(pairs)
    )


def _string_to_sign(
    method: str, key: str, query: Iterable[tuple[str, str]], headers: Sequence[tuple[str, str]]
) -> bytes:
    lines = [method, BLOB_PREFIX + key, canonical_query(query)]
    lines.extend(f"{name}:{value}" for name, value in headers)
    return "\n".join(lines).encode("utf-8", "surrogatepass")


def signed_headers(
    required: Headers | None, *, forbidden: str = ";:\r\n", reserved: Collection[str] = ()
) -> dict[str, str]:
    """``required`` with names lowercased and values stripped; ``ValueError`` for a bad name."""
    headers: dict[str, str] = {}
    for name, value in (required or {}).items():
        lowered = name.strip().lower()
        if not lowered or any(ch in lowered for ch in forbidden) or lowered in reserved:
            raise ValueError(f"invalid header name {name!r}")
        if lowered in headers:
            raise ValueError(f"header {lowered!r} given twice")
        headers[lowered] = value.strip()
    return headers


def single_params(query: MultiMapping[str], code: str) -> dict[str, str]:
    """The query's parameters; BlobError ``code`` (400) if one is given twice."""
    pairs = list(query.items())
    params = dict(pairs)
    if len(params) != len(pairs):
        raise BlobError(code, "A query parameter was given more than once.")
    return params


def check_expiry(params: Mapping[str, str]) -> None:
    """403 ``AccessDenied`` unless ``X-Expires`` is a Unix time still in the future."""
    try:
        expires = int(params["X-Expires"])
    except ValueError:
        raise BlobError("AccessDenied", "X-Expires is not a Unix timestamp.") from None
    if time.time() >= expires:
        raise BlobError("AccessDenied", "Request has expired")


class Signer:
    """Signs presigned URLs with one secret and checks the signature of requests made with them."""

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def sign(
        self,
        method: str,
        key: str,
        query: Iterable[tuple[str, str]],
        headers: Sequence[tuple[str, str]],
    ) -> str:
        message = _string_to_sign(method, key, query, headers)
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    def presign(
        self,
        base_url: str,
        key: str,
        params: dict[str, str],
        expires_in: float,
        headers: Headers,
    ) -> str:
        """An absolute ``PUT`` URL for ``key`` with ``params``, valid ``expires_in`` seconds,
        that only works with ``headers`` (lowercase names, see :func:`signed_headers`)."""
        params["X-Expires"] = str(math.ceil(time.time() + expires_in))
        if headers:
            params["X-SignedHeaders"] = ";".join(sorted(headers))
        signed = [(name, headers[name]) for name in sorted(headers)]
        signature = self.sign("PUT", key, params.items(), signed)
        query = f"{canonical_query(params.items())}&X-Signature={signature}"
        return f"{base_url}{BLOB_PREFIX}{quote(key, safe='/')}?{query}"

    def verify(
        self, key: str, query: MultiMapping[str], headers: CIMultiDictProxy[str]
    ) -> dict[str, str]:
        """Check a ``PUT`` of ``key``'s signature; return its query parameters but the signature."""
        params = single_params(query, "InvalidArgument")
        signature = params.pop("X-Signature", None)
        if not signature or "X-Expires" not in params:
            raise BlobError(
                "SignatureDoesNotMatch",
                "Query-string authentication requires the X-Signature and X-Expires parameters.",
            )
        signed = _signed_values(params.get("X-SignedHeaders", ""), headers)
        expected = self.sign("PUT", key, params.items(), signed)
        if not hmac.compare_digest(expected, signature):
            raise BlobError(
                "SignatureDoesNotMatch",
                "The request signature we calculated does not match the signature you provided. "
                "Check the URL and the signed headers.",
            )
        return params


def _signed_values(names: str, headers: CIMultiDictProxy[str]) -> list[tuple[str, str]]:
    """``(name, value)`` of each signed header as the request carries it, in signed order."""
    signed: list[tuple[str, str]] = []
    for name in (name for name in names.split(";") if name):
        values = headers.getall(name, [])
        if not values:
            raise BlobError(
                "SignatureDoesNotMatch",
                f"The request is missing the signed header {name!r}.",
            )
        signed.append((name, ",".join(value.strip() for value in values)))
    return signed
