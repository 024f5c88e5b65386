"""An S3-faithful blob store behind presigned URLs: the storage side of the sandbox (and, in its
other modes, an SSE-KMS or SSE-C bucket, or Azure's Put Blob).

Every rule it keeps is something real S3 does, and the client must cope with. Each module keeps
its own and says them in its docstring:

* :mod:`.store` — :class:`BlobStore`: nothing partial is ever visible, discard mode, state,
  faults, the layout under ``data_dir``.
* :mod:`.signing` — presigned URLs: what is signed and how a request's signature is checked.
* :mod:`.http` — the order in which a ``PUT`` is checked before a byte is read, S3's answers.
* :mod:`.body` — bodies are streamed, hashed and written on the way, never buffered whole.
* :mod:`.multipart` — which completions S3 accepts, retried completions, assembling the object.
* :mod:`.records` — parts, uploads, objects and S3's ETags.
* :mod:`.modes` — which real store it answers as: plain S3 (default), an SSE-KMS bucket, SSE-C
  uploads; :mod:`.azure` — Azure Blob Storage's Put Blob behind a SAS; :mod:`.crc64` — Azure's
  CRC-64 (``x-ms-content-crc64``).
* :mod:`.keys` — which object keys are safe and the file name each is stored under.
* :mod:`.errors` — :class:`BlobError` and S3's XML error documents.
* :mod:`.stats` — the counters :meth:`BlobStore.stats` reports.
"""

from __future__ import annotations

from engine.sandbox.blobstore.errors import BlobError
from engine.sandbox.blobstore.errors import error_body as error_body
from engine.sandbox.blobstore.keys import MAX_KEY_BYTES as MAX_KEY_BYTES
from engine.sandbox.blobstore.keys import validate_key
from engine.sandbox.blobstore.records import GiB as GiB
from engine.sandbox.blobstore.records import KiB as KiB
from engine.sandbox.blobstore.records import MiB as MiB
from engine.sandbox.blobstore.records import StoredObject, StoredPart
from engine.sandbox.blobstore.signing import BLOB_PREFIX as BLOB_PREFIX
from engine.sandbox.blobstore.store import BlobStore

__all__ = [
    "BlobError",
    "BlobStore",
    "StoredObject",
    "StoredPart",
    "validate_key",
]
