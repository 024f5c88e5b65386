"""Which files a Speckle server ingests, and the content check that ends an ingestion.

Rules this module keeps:

* **Server kinds.** ``self-hosted`` (the public code with its next-gen importer): one queue, for
  ``ifc`` (``packages/server/modules/fileuploads/index.ts``, ``initializePostgresQueue({label:
  'ifc', supportedFileTypes: ['ifc']})``). ``app`` (app.speckle.systems): that queue plus the Rhino
  importer's, :data:`RHINO_EXTENSIONS` (``packages/shared/src/blobs/index.ts``,
  ``rhinoImporterSupportedFileExtensions``, behind ``FF_RHINO_FILE_IMPORTER_ENABLED``).
  Extensions compare lower-cased (``supportedFileTypes.includes(fileType.toLocaleLowerCase())``).
* **The content check** (may block: it reads the file): ``.ifc`` needs the ``ISO-10303-21;``
  header and ``.e57`` must pass :func:`engine.sandbox.e57.validate_e57`; ``.3dm``, ``.dwg`` and
  ``.ply`` need their format's signature and ``.stl`` must be ASCII (``solid``) or at least a
  binary header (84 bytes); any other accepted format passes (sandbox rule: a light check, the
  real importers convert the geometry). In discard mode, with no bytes kept, nothing is read.
  A file that cannot be read fails with the reason.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final, Literal

from engine.sandbox.ifc import is_ifc_header

__all__ = [
    "RHINO_EXTENSIONS",
    "SERVER_KINDS",
    "ServerKind",
    "accepted_extensions",
    "check_blob",
    "extension_of",
]

ServerKind = Literal["app", "self-hosted"]
SERVER_KINDS: Final = ("app", "self-hosted")

RHINO_EXTENSIONS: Final = frozenset(
    {
        "3dm", "3mf", "3ds", "amf", "dwg", "dxf", "x", "e57", "igs", "iges", "dgn", "fbx",
        "obj", "ply", "skp", "sldprt", "stp", "step", "stl",
    }
)  # fmt: skip
"""``rhinoImporterSupportedFileExtensions``, the entries not commented out."""

_SIGNATURES: Final = {"3dm": b"3D Geometry File Format ", "dwg": b"AC10", "ply": b"ply"}


def accepted_extensions(kind: ServerKind) -> frozenset[str]:
    """The extensions (lower case, no dot) a server of ``kind`` ingests."""
    return frozenset({"ifc"}) | (RHINO_EXTENSIONS if kind == "app" else frozenset())


def extension_of(file_name: str) -> str:
    """``fileName.split('.').pop()``: the text after the last dot (``""`` without a dot)."""
    return file_name.rsplit(".", 1)[-1] if "." in file_name else ""


def check_blob(path: Path | None, file_name: str) -> str | None:
    """Why the stored file cannot be imported, or ``None`` if it can. May block (reads the file).

    ``path`` is ``None`` in discard mode: then the file is not read.
    """
    ext = extension_of(file_name).lower()
    if ext not in RHINO_EXTENSIONS | {"ifc"}:
        return f"File type {ext} is not supported"  # fileimport-service's daemon.ts wording
    if path is None:
        return None
    try:
        with path.open("rb") as f:
            first = f.read(84)
    except OSError as exc:
        return f"The uploaded file could not be read: {exc.strerror or exc}"
    if ext == "ifc":
        if is_ifc_header(first):
            return None
        return f"{file_name} is not an IFC file: it does not start with ISO-10303-21;"
    if ext == "e57":
        return _check_e57(path, file_name)
    signature = _SIGNATURES.get(ext)
    if signature is not None and not first.startswith(signature):
        return f"{file_name} is not a {ext.upper()} file: it does not start with {signature!r}"
    if ext == "stl" and not first.startswith(b"solid") and len(first) < 84:
        return f"{file_name} is not an STL file: too short for a binary STL header"
    return None


def _check_e57(path: Path, file_name: str) -> str | None:
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
