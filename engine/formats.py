"""What a scan file is, from its first bytes: E57 or IFC, checked before anything is sent.

Rules:
- only the head of a file is read (``HEAD_SIZE`` bytes at most); the decision is a pure
  function of those bytes (``sniff_head``), so it is tested without files;
- E57 (ASTM E2807): the file starts with the 8-byte signature ``ASTM-E57``;
- IFC (ISO 10303-21, STEP physical file): ``ISO-10303-21;`` after an optional UTF-8 byte-order
  mark and optional ASCII whitespace;
- the file name's extension is never trusted;
- ``OSError`` becomes ``SourceError`` here; a wrong header is a ``FormatError`` naming the file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final, Literal

from engine.errors import FormatError, source_error

__all__ = [
    "E57_SIGNATURE",
    "HEAD_SIZE",
    "IFC_SIGNATURE",
    "Format",
    "check_e57",
    "check_ifc",
    "read_head",
    "sniff",
    "sniff_head",
]

Format = Literal["e57", "ifc"]

E57_SIGNATURE: Final = b"ASTM-E57"
IFC_SIGNATURE: Final = b"ISO-10303-21;"
HEAD_SIZE: Final = 4096  # bytes read at most; room for a BOM and leading blank lines
_BOM: Final = b"\xef\xbb\xbf"
_WHITESPACE: Final = b" \t\r\n\f\v"


def sniff_head(head: bytes) -> Format | None:
    """The format the first bytes of a file announce, or ``None``."""
    if head.startswith(E57_SIGNATURE):
        return "e57"
    text = head.removeprefix(_BOM).lstrip(_WHITESPACE)
    if text.startswith(IFC_SIGNATURE):
        return "ifc"
    return None


def read_head(path: str | os.PathLike[str], size: int = HEAD_SIZE) -> bytes:
    """At most ``size`` bytes from the start of ``path``; ``SourceError`` when unreadable."""
    p = Path(path)
    try:
        with p.open("rb") as f:
            return f.read(size)
    except OSError as exc:
        raise source_error(p, exc) from exc


def sniff(path: str | os.PathLike[str]) -> Format | None:
    """``"e57"``, ``"ifc"`` or ``None``, from the first bytes of ``path``."""
    return sniff_head(read_head(path))


def check_e57(path: str | os.PathLike[str]) -> None:
    """Raise ``FormatError`` unless ``path`` starts with the E57 signature."""
    if not read_head(path, len(E57_SIGNATURE)).startswith(E57_SIGNATURE):
        raise FormatError(f"{path}: not an E57 file (header does not read ASTM-E57)")


def check_ifc(path: str | os.PathLike[str]) -> None:
    """Raise ``FormatError`` unless ``path`` starts (after a BOM/whitespace) with the IFC header."""
    if sniff_head(read_head(path)) != "ifc":
        raise FormatError(f"{path}: not an IFC file (header does not read ISO-10303-21;)")
