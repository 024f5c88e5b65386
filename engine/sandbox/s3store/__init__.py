"""Real S3-compatible storage behind the sandbox: the planes' blob-store interface over a bucket.

``SandboxConfig(storage_url="s3://BUCKET[/PREFIX]?endpoint_url=http://127.0.0.1:9000")`` (or
``upload-engine sandbox serve --storage s3://...``) keeps the sandbox's blobs in a real
S3-compatible server (MinIO, moto, AWS) instead of its own :class:`BlobStore`. Both control
planes run unchanged: :class:`S3BlobStore` offers the methods they call (``create_multipart``,
``presign_part``, ``presign_put``, ``list_parts``, ``complete_multipart(_async)``, ``head``,
``object_path``) with the same meaning.

Each module keeps its own rules and says them in its docstring:

* :mod:`.store` — :class:`S3BlobStore`: the bytes never pass through the sandbox, S3's rules are
  S3's, fault injection does not apply, what blocks, state.
* :mod:`.location` — :class:`S3Location`: the ``s3://`` URL syntax; no credentials in URLs.
* :mod:`.clients` — the botocore clients: SigV4 presigning, credentials.
* :mod:`.copies` — validation copies of the objects, for the planes' content checks.
* :mod:`.errors` — botocore failures as :class:`~engine.sandbox.blobstore.BlobError`; ETags.
"""

from __future__ import annotations

from engine.sandbox.s3store.location import S3Location
from engine.sandbox.s3store.store import S3BlobStore

__all__ = ["S3BlobStore", "S3Location"]
