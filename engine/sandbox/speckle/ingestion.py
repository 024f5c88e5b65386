"""An ingestion's life: its fields, its status at any instant, and the content check that ends it.

Rules this module keeps:

* **Ingestion life** is a pure function of the time since ``startFileIngestion``:
  ``queued`` during the first ``step_delay``, then ``processing`` for ``processing_steps`` steps
  of ``step_delay`` each (``progress`` = k/(steps+1), rising), then terminal; with
  ``step_delay=0`` terminal at once.
* **The content check** (may block: it reads the file): ``.ifc`` needs the ``ISO-10303-21;``
  header, ``.e57`` must pass :func:`engine.sandbox.e57.validate_e57`, any other extension fails
  as unsupported (in discard mode, with no bytes kept, the extension alone decides). A file that
  cannot be read fails with the reason.
* An ingestion's ``updatedAt`` is its ``createdAt``, and cancellation is never requested;
  ``statusData`` is resolved when asked for, from the time (the mutation's own answer: queued).
* A terminal verdict maps to one status: success (with its version), failed/timeout (with
  ``errorReason``), cancelled (``cancellationMessage``) or invalidInput (``validationMessage``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.sandbox.ifc import is_ifc_header
from engine.sandbox.speckle.records import IngestionRecord, StatusSnapshot, Verdict

__all__ = [
    "check_blob",
    "ingestion_phase",
    "ingestion_view",
    "snapshot_for_phase",
    "terminal_snapshot",
]


def ingestion_view(ingestion: IngestionRecord) -> dict[str, Any]:
    """The fields of a ``ModelIngestion`` but ``statusData`` (resolved when asked for)."""
    created = ingestion.created_at
    return {
        "id": ingestion.id,
        "modelId": ingestion.model_id,
        "projectId": ingestion.project_id,
        "createdAt": created,
        "updatedAt": created,  # the sandbox never reports an update
        "cancellationRequested": False,
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


def check_blob(path: Path | None, file_name: str) -> str | None:
    """Why the stored file cannot be imported, or ``None`` if it can. May block (reads the file).

    ``path`` is ``None`` in discard mode: then only the extension is judged.
    """
    ext = file_name.rsplit(".", 1)[-1].lower() if "." in file_name else ""
    if ext not in ("ifc", "e57"):
        return f"Unsupported file type '.{ext}': this server imports IFC and E57 files"
    if path is None:
        return None
    try:
        with path.open("rb") as f:
            first = f.read(64)
    except OSError as exc:
        return f"The uploaded file could not be read: {exc.strerror or exc}"
    if ext == "ifc":
        if is_ifc_header(first):
            return None
        return f"{file_name} is not an IFC file: it does not start with ISO-10303-21;"
    try:
        from engine.sandbox.e57 import E57Error, validate_e57
    except ImportError:  # pragma: no cover - the E57 module ships with the sandbox
        return "E57 files cannot be checked by this sandbox"
    try:
        validate_e57(path)
    except E57Error as exc:
        return f"{file_name} is not a valid E57 file: {exc.reason}"
    except OSError as exc:
        return f"The uploaded file could not be read: {exc.strerror or exc}"
    return None
