"""The botocore clients behind the S3 storage: one that talks to S3, one that presigns.

Rules this module keeps:

* **Real SigV4 presigned URLs**, query-signed, path-style addressing, made by botocore
  (``generate_presigned_url``) for ``public_endpoint_url`` (default ``endpoint_url``); API calls
  go to ``endpoint_url`` (default AWS). No checksum parameters in the URLs: S3's MD5 ETags are
  what the planes check.
* **Credentials** come from botocore's standard chain only; without any, opening fails at once
  with ``NoCredentials`` instead of at the first request.
* botocore is imported only here and in :mod:`.errors`, when the storage is opened (it is the
  optional ``s3`` extra); calls are retried by botocore's standard mode, at most 3 attempts.
"""

from __future__ import annotations

from typing import Any

from engine.sandbox.s3store.errors import no_credentials
from engine.sandbox.s3store.location import S3Location

__all__ = ["make_clients"]


def make_clients(location: S3Location) -> tuple[Any, Any]:
    """``(api, signer)``: botocore S3 clients for ``endpoint_url`` and for presigning. Blocking."""
    import botocore.session
    from botocore.config import Config

    session = botocore.session.get_session()
    if session.get_credentials() is None:
        raise no_credentials()
    config = Config(
        signature_version="s3v4",
        s3={"addressing_style": "path"},
        retries={"max_attempts": 3, "mode": "standard"},
        # S3's MD5 ETags are what the planes check; no checksum parameters in the URLs
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    api = session.create_client(
        "s3", region_name=location.region, endpoint_url=location.endpoint_url, config=config
    )
    signer = session.create_client(
        "s3",
        region_name=location.region,
        endpoint_url=location.public_endpoint_url or location.endpoint_url,
        config=config,
    )
    return api, signer
