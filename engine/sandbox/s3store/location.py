"""Where the S3 storage is: the ``s3://`` URL of ``SandboxConfig(storage_url=...)``.

Rules this module keeps:

* **URL syntax.** ``s3://BUCKET[/PREFIX]`` with query parameters ``endpoint_url`` (where the
  sandbox reaches S3; default AWS), ``public_endpoint_url`` (the host put into presigned URLs, for
  when clients reach S3 by another name than the sandbox does, e.g. ``minio:9000`` inside
  docker compose and ``localhost:9000`` outside; default ``endpoint_url``) and ``region``
  (default ``us-east-1``). Plane keys become ``PREFIX/key``. No other parameter, none twice.
* **Credentials never go in the URL** (it is printed and may sit in argv): neither in the
  ``s3://`` URL nor in an endpoint URL. botocore's standard chain supplies them
  (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``, shared files).
* Bucket names follow S3's rules (3 to 63 of ``a-z0-9.-``, no ``..``); a prefix must be a valid
  object key (:func:`~engine.sandbox.blobstore.validate_key`); endpoints are http(s) URLs.
  Anything else is a ``ValueError`` saying why.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final
from urllib.parse import parse_qsl, urlsplit

from engine.sandbox.blobstore import BlobError, validate_key

__all__ = ["S3Location"]

_PARAMS: Final = frozenset({"endpoint_url", "public_endpoint_url", "region"})
_BUCKET_RE: Final = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


@dataclass(frozen=True, kw_only=True)
class S3Location:
    """Where the blobs go: a bucket, a key prefix and how to reach the server (see the module
    docstring for the URL syntax). Holds no credentials."""

    bucket: str
    prefix: str = ""
    endpoint_url: str | None = None
    public_endpoint_url: str | None = None
    region: str = "us-east-1"

    def __post_init__(self) -> None:
        if not _BUCKET_RE.match(self.bucket) or ".." in self.bucket:
            raise ValueError(f"not a valid S3 bucket name: {self.bucket!r}")
        if self.prefix:
            try:
                validate_key(self.prefix.rstrip("/"))
            except BlobError as exc:
                raise ValueError(f"bad key prefix {self.prefix!r}: {exc.message}") from None
        for name in ("endpoint_url", "public_endpoint_url"):
            value = getattr(self, name)
            if value is None:
                continue
            parts = urlsplit(value)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"{name} must be an http(s) URL, got {value!r}")
            if parts.username or parts.password or parts.query:
                raise ValueError(
                    f"{name} must not carry credentials or a query; credentials come from "
                    "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY"
                )
        if not self.region or not re.fullmatch(r"[a-z0-9-]+", self.region):
            raise ValueError(f"not a valid region: {self.region!r}")

    @classmethod
    def parse(cls, url: str) -> S3Location:
        """``s3://bucket/prefix?endpoint_url=...&public_endpoint_url=...&region=...``."""
        parts = urlsplit(url)
        if parts.scheme != "s3" or not parts.netloc:
            raise ValueError(f"storage URL must look like s3://BUCKET[/PREFIX]?..., got {url!r}")
        if "@" in parts.netloc:
            raise ValueError(
                "the storage URL must not carry credentials; set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) instead"
            )
        params: dict[str, str] = {}
        for name, value in parse_qsl(parts.query, keep_blank_values=True, strict_parsing=False):
            if name not in _PARAMS:
                raise ValueError(
                    f"unknown storage URL parameter {name!r}; expected one of {sorted(_PARAMS)}"
                )
            if name in params:
                raise ValueError(f"storage URL parameter {name!r} given twice")
            params[name] = value
        prefix = parts.path.strip("/")
        return cls(
            bucket=parts.netloc,
            prefix=f"{prefix}/" if prefix else "",
            endpoint_url=params.get("endpoint_url") or None,
            public_endpoint_url=params.get("public_endpoint_url") or None,
            region=params.get("region") or "us-east-1",
        )

    def __str__(self) -> str:
        where = self.endpoint_url or "AWS"
        return f"s3://{self.bucket}/{self.prefix} at {where}"
