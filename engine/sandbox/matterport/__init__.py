"""The Matterport Import API control plane of the sandbox: ``POST /api/import/graph``.

Documents are executed with graphql-core against ``matterport.graphql`` (written from Matterport's
Import API guide), so a wrong field, argument or variable type is refused as the real server would.
Bytes go to the sandbox :class:`~engine.sandbox.blobstore.BlobStore` through presigned URLs; this
package never touches them except to check the assembled files at commit.

Each module keeps its own rules and says them in its docstring:

* :mod:`.plane` — :class:`MatterportPlane`: HTTP answers and authentication, when injected
  faults strike, shutdown.
* :mod:`.resolvers` — the operations: identifiers, the state machine per file, part limits,
  listing, completeUpload and commitImportSession.
* :mod:`.sessions` — session ids, the quota, when and whether a session's model appears.
* :mod:`.checks` — which completeUpload is accepted; the E57 check at commit.
* :mod:`.config` — :class:`MatterportSandboxConfig` and the faults it injects.
* :mod:`.errors` — :class:`ApiError` and the ``extensions.code`` values.
* :mod:`.records` — the state (sessions, objects, files) and who owns it.
* :mod:`.schema` — the SDL and its ``Long``/``DateTime`` scalars.
* :mod:`.views` — the records as the GraphQL types' fields.
"""

from __future__ import annotations

from engine.sandbox.blobstore import GiB as GiB
from engine.sandbox.blobstore import KiB as KiB
from engine.sandbox.blobstore import MiB as MiB
from engine.sandbox.matterport.checks import check_completion, normalize_etag
from engine.sandbox.matterport.config import ENDPOINT, OPERATIONS, MatterportSandboxConfig
from engine.sandbox.matterport.errors import INTERNAL as INTERNAL
from engine.sandbox.matterport.errors import INVALID as INVALID
from engine.sandbox.matterport.errors import NOT_FOUND as NOT_FOUND
from engine.sandbox.matterport.errors import NOT_UNIQUE as NOT_UNIQUE
from engine.sandbox.matterport.errors import QUOTA_EXCEEDED as QUOTA_EXCEEDED
from engine.sandbox.matterport.errors import UNAUTHENTICATED as UNAUTHENTICATED
from engine.sandbox.matterport.errors import UNAUTHORIZED as UNAUTHORIZED
from engine.sandbox.matterport.errors import ApiError
from engine.sandbox.matterport.plane import MatterportPlane
from engine.sandbox.matterport.records import E57ObjectRecord as E57ObjectRecord
from engine.sandbox.matterport.records import ImportFileRecord, ImportSessionRecord
from engine.sandbox.matterport.records import UploadStatus as UploadStatus
from engine.sandbox.matterport.resolvers import Handler as Handler
from engine.sandbox.matterport.schema import LONG_MAX as LONG_MAX
from engine.sandbox.matterport.schema import LONG_MIN as LONG_MIN
from engine.sandbox.matterport.schema import SDL_PATH

__all__ = [
    "ENDPOINT",
    "OPERATIONS",
    "SDL_PATH",
    "ApiError",
    "ImportFileRecord",
    "ImportSessionRecord",
    "MatterportPlane",
    "MatterportSandboxConfig",
    "check_completion",
    "normalize_etag",
]
