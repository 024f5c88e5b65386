"""An ingestion's life: its fields, its status at any instant, and how a file upload shows it.

Rules this module keeps:

* **Ingestion life** is a pure function of the time since ``startFileIngestion`` (or
  ``startFileImport``, or the legacy REST upload): ``queued`` during the first ``step_delay``,
  then ``processing`` for ``processing_steps`` steps of ``step_delay`` each (``progress`` =
  k/(steps+1), rising), then terminal; with ``step_delay=0`` terminal at once. The content check
  that decides the verdict is :func:`.formats.check_blob`.
* An ingestion's ``updatedAt`` is its ``createdAt``, and cancellation is never requested;
  ``statusData`` is resolved when asked for, from the time (the mutation's own answer: queued).
* A terminal verdict maps to one status: success (with its version), failed/timeout (with
  ``errorReason``), cancelled (``cancellationMessage``) or invalidInput (``validationMessage``).
* **A file upload** (v2, ``FileUpload``, ``packages/server/assets/fileuploads/typedefs``) shows the
  same life as ``convertedStatus`` 0 = queued, 1 = processing, 2 = success, 3 = error (any other
  terminal status); ``convertedMessage`` is ``File converted successfully`` on success (the
  importer's words, ``packages/fileimport-service/src/controller/daemon.ts``), the reason on error,
  null before; ``fileType`` is the extension lower-cased (``saveUploadFileFactoryV2``).
"""

from __future__ import annotations

from typing import Any, Final

from engine.sandbox.speckle.formats import extension_of
from engine.sandbox.speckle.records import IngestionRecord, ModelRecord, StatusSnapshot, Verdict
from engine.sandbox.speckle.views import model_view

__all__ = [
    "file_upload_view",
    "ingestion_phase",
    "ingestion_view",
    "snapshot_for_phase",
    "terminal_snapshot",
]

CONVERTED_STATUS: Final = {"queued": 0, "processing": 1, "success": 2}
CONVERTED_ERROR: Final = 3


def ingestion_view(ingestion: IngestionRecord) -> dict[str, Any]:
    """The fields of a ``ModelIngestion`` but ``statusData`` (resolved when asked for)."""
    created = ingestion.created_at
    return {
        "id": ingestion.id,
        "modelId": ingestion.model_id,
        "projectId": ingestion.project_id,
        "userId": ingestion.user_id,
        "createdAt": created,
        "updatedAt": created,  # the sandbox never reports an update
        "cancellationRequested": False,
    }


def file_upload_view(
    upload: IngestionRecord, snapshot: StatusSnapshot, model: ModelRecord
) -> dict[str, Any]:
    """The fields of a ``FileUpload`` (``model`` included) at ``snapshot``."""
    version_id = snapshot.version_id if snapshot.status == "success" else None
    if snapshot.status == "success":
        message: str | None = "File converted successfully"
    elif snapshot.terminal:
        message = snapshot.error_reason or snapshot.cancellation_message
        message = message or snapshot.validation_message
    else:
        message = None
    updated = upload.settled_at or upload.created_at
    return {
        "id": upload.id,
        "projectId": upload.project_id,
        "streamId": upload.project_id,
        "modelName": model.name,
        "branchName": model.name,
        "convertedCommitId": version_id,
        "convertedVersionId": version_id,
        "userId": upload.user_id,
        "convertedStatus": CONVERTED_STATUS.get(snapshot.status, CONVERTED_ERROR),
        "convertedMessage": message,
        "fileName": upload.file_name,
        "fileType": extension_of(upload.file_name).lower(),
        "fileSize": upload.file_size or 0,
        "uploadComplete": True,
        "uploadDate": upload.created_at,
        "convertedLastUpdate": updated,
        "modelId": upload.model_id,
        "updatedAt": updated,
        "model": model_view(model),
    }


def ingestion_phase(elapsed: float, *, step_delay: float, steps: int) -> int:
    """0 = queued, 1..``steps`` = processing step k, ``steps + 1`` = terminal."""
    if step_delay <= 0:
        return steps + 1
    return max(0, min(int(elapsed // step_delay), steps + 1))


def snapshot_for_phase(phase: int, *, steps: int, file_name: str) -> StatusSnapshot:
    """The status of a non-terminal phase (0..``steps``)."""
    if phase <= 0:
        return StatusSnapshot("queued", progress_message=f"{file_name} is queued for import")
    if phase > steps:
        raise ValueError(f"phase {phase} is terminal; it needs a verdict")
    return StatusSnapshot(
        "processing",
        progress_message=f"Converting {file_name} ({phase}/{steps})",
        progress=phase / (steps + 1),
    )


def terminal_snapshot(verdict: Verdict, version_id: str | None) -> StatusSnapshot:
    """The status an ingestion ends with."""
    message = verdict.message or ""
    if verdict.status == "success":
        return StatusSnapshot("success", version_id=version_id)
    if verdict.status in ("failed", "timeout"):
        return StatusSnapshot(verdict.status, error_reason=message)
    if verdict.status == "cancelled":
        return StatusSnapshot("cancelled", cancellation_message=message)
    return StatusSnapshot("invalidInput", validation_message=message)
