"""What a scan file is, from its first bytes: E57 or IFC, checked before anything is sent.

Rules:
- only the head of a file is read (``HEAD_SIZE`` bytes at most); the decision is a pure
  function of those bytes (``sniff_head``), so it is tested without files;
- E57 (ASTM E2807): the file starts with the 8-byte signature ``ASTM-E57``; before a file is
  sent, its 48-byte header must be whole and declare the file's real physical length, in
  whole 1024-byte pages, with the XML section inside the file (a truncated scan is refused
  before any byte goes out; the page CRCs are the ingesting platform's check);
- IFC (ISO 10303-21, STEP physical file): ``ISO-10303-21;`` after an optional UTF-8 byte-order
  mark and optional ASCII whitespace; before a file is sent it must also end (trailing
  whitespace aside) with ``END-ISO-10303-21;``, so a truncated model is refused;
- the file name's extension is never trusted;
- ``OSError`` becomes ``SourceError`` here; a wrong header is a ``FormatError`` naming the file.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Final, Literal

from engine.errors import FormatError, source_error

__all__ = [
    "E57_SIGNATURE",
    "HEAD_SIZE",
    "IFC_END",
    "IFC_SIGNATURE",
    "Format",
    "check_e57",
    "check_ifc",
    "e57_header_problem",
    "read_head",
    "read_tail",
    "sniff",
    "sniff_head",
]

Format = Literal["e57", "ifc"]

E57_SIGNATURE: Final = b"ASTM-E57"
IFC_SIGNATURE: Final = b"ISO-10303-21;"
HEAD_SIZE: Final = 4096  # bytes read at most; room for a BOM and leading blank lines
IFC_END: Final = b"END-ISO-10303-21;"
#: ASTM E2807 file header: signature, major, minor, filePhysicalLength, xmlPhysicalOffset,
#: xmlLogicalLength, pageSize (little-endian)
_E57_HEADER: Final = struct.Struct("<8sIIQQQQ")
_E57_PAGE: Final = 1024
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


def read_tail(path: str | os.PathLike[str], size: int = HEAD_SIZE) -> bytes:
    """At most ``size`` bytes from the end of ``path``; ``SourceError`` when unreadable."""
    p = Path(path)
    try:
        with p.open("rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - size))
            return f.read(size)
    except OSError as exc:
        raise source_error(p, exc) from exc


def e57_header_problem(head: bytes, size: int) -> str | None:
    """Why the first bytes of a ``size``-byte file are not a whole E57 header, or ``None``."""
    if not head.startswith(E57_SIGNATURE):
        return "not an E57 file (header does not read ASTM-E57)"
    if len(head) < _E57_HEADER.size:
        return f"truncated E57 file: {size} bytes, shorter than its {_E57_HEADER.size}-byte header"
    _, major, _minor, length, xml_offset, _xml_length, page = _E57_HEADER.unpack_from(head)
    if major != 1 or page != _E57_PAGE:
        return f"not an E57 file this engine knows (version {major}, page size {page})"
    if length != size:
        return f"truncated or padded E57 file: its header says {length} bytes, the file has {size}"
    if size % _E57_PAGE or xml_offset >= size:
        return "damaged E57 file: its XML section or last page lies outside the file"
    return None


def check_e57(path: str | os.PathLike[str]) -> None:
    """Raise ``FormatError`` unless ``path`` holds a whole E57 header that fits the file."""
    head = read_head(path, _E57_HEADER.size)
    problem = e57_header_problem(head, Path(path).stat().st_size)
    if problem is not None:
        raise FormatError(f"{path}: {problem}")


def check_ifc(path: str | os.PathLike[str]) -> None:
    """Raise ``FormatError`` unless ``path`` starts (after a BOM/whitespace) with the IFC header
    and ends with ``END-ISO-10303-21;``."""
    if sniff_head(read_head(path)) != "ifc":
        raise FormatError(f"{path}: not an IFC file (header does not read ISO-10303-21;)")
    if not read_tail(path).rstrip(_WHITESPACE).endswith(IFC_END):
        raise FormatError(f"{path}: truncated IFC file (it does not end with END-ISO-10303-21;)")
