"""The Import API's records as its GraphQL types' fields.

Rules this module keeps:

* ``parts``/``numParts`` of a file show the part uploads requested while it is STARTED and are
  null otherwise (the guide's sample shows null for a COMPLETED file); parts are listed by part.
* A session lists its files in the order they were added; ``files=False`` gives ``files: []``,
  as commitImportSession answers in the guide's sample.
"""

from __future__ import annotations

from typing import Any

from engine.sandbox.matterport.records import ImportFileRecord, ImportSessionRecord

__all__ = ["file_view", "session_view"]


def file_view(file: ImportFileRecord) -> dict[str, Any]:
    started = file.status == "STARTED"
    return {
        "id": file.id,
        "clientId": file.client_id,
        "name": file.name,
        "type": file.type,
        "size": file.size,
        "uploadStatus": file.status,
        "numParts": len(file.requested) if started else None,
        "parts": [file.requested[i] for i in sorted(file.requested)] if started else None,
    }


def session_view(session: ImportSessionRecord, *, files: bool = True) -> dict[str, Any]:
    return {
        "id": session.id,
        "organizationId": session.organization_id,
        "userId": session.user_id,
        "name": session.name,
        "description": session.description,
        "processType": session.process_type,
        "created": session.created,
        "modified": session.modified,
        "committed": session.committed,
        "modelId": session.model_id,
        "files": [file_view(f) for f in session.files.values()] if files else [],
    }
