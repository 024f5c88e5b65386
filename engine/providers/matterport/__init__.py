"""Matterport Import API: several E57 files, one import session, one model.

The package, by job (each module opens with the rules it keeps):

- ``documents``: the wire vocabulary: the seed's GraphQL documents verbatim, the endpoint,
  the statuses, and the flow they make;
- ``errors``: what Matterport refuses (``classify``) and the credentials it takes;
- ``target``: one file of a session, driven by the engine (``MatterportFileTarget``), and
  where it landed (``MatterportFileRemote``);
- ``session``: one import (``Matterport.import_files``): open or resume the session, add the
  files, send them through the uploader's services, commit, wait for the model.

It uses only ``engine.target.Services``, reached through the ``HasServices`` it is handed (an
open ``Uploader``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from engine.lazy import exports

if TYPE_CHECKING:
    from engine.providers.matterport.documents import (
        ADD_E57_OBJECT,
        ADD_IMPORT_SESSION,
        BEGIN_UPLOAD,
        COMMIT_IMPORT_SESSION,
        COMPLETE_UPLOAD,
        ENDPOINT,
        IMPORT_FILE_PARTS_UPLOAD_STATUS,
        IMPORT_SESSION,
        LIST_IMPORT_SESSIONS,
        REQUEST_PART_UPLOAD,
    )
    from engine.providers.matterport.errors import MatterportCredentials, classify
    from engine.providers.matterport.session import Matterport, MatterportResult
    from engine.providers.matterport.target import (
        MatterportFile,
        MatterportFileRemote,
        MatterportFileTarget,
    )

__all__ = [
    "ADD_E57_OBJECT",
    "ADD_IMPORT_SESSION",
    "BEGIN_UPLOAD",
    "COMMIT_IMPORT_SESSION",
    "COMPLETE_UPLOAD",
    "ENDPOINT",
    "IMPORT_FILE_PARTS_UPLOAD_STATUS",
    "IMPORT_SESSION",
    "LIST_IMPORT_SESSIONS",
    "REQUEST_PART_UPLOAD",
    "Matterport",
    "MatterportCredentials",
    "MatterportFile",
    "MatterportFileRemote",
    "MatterportFileTarget",
    "MatterportResult",
    "classify",
]

#: the modules of the names above, for the interpreter (mypy reads the imports)
_HOMES = {
    "engine.providers.matterport.documents": "ADD_E57_OBJECT ADD_IMPORT_SESSION BEGIN_UPLOAD "
    "COMMIT_IMPORT_SESSION COMPLETE_UPLOAD ENDPOINT IMPORT_FILE_PARTS_UPLOAD_STATUS IMPORT_SESSION "
    "LIST_IMPORT_SESSIONS REQUEST_PART_UPLOAD",
    "engine.providers.matterport.errors": "MatterportCredentials classify",
    "engine.providers.matterport.session": "Matterport MatterportResult",
    "engine.providers.matterport.target": "MatterportFile MatterportFileRemote "
    "MatterportFileTarget",
}

if not TYPE_CHECKING:  # a module __getattr__ seen by mypy would make every name Any
    __getattr__, __dir__ = exports(__name__, _HOMES)
