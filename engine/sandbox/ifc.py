"""Sample IFC files for tests and demos, and the IFC header check the sandbox ingests with.

Rules this module keeps:

* A sample file is a syntactically plausible ISO 10303-21 (STEP) exchange file: the magic line
  ``ISO-10303-21;``, a ``HEADER;`` section (``FILE_DESCRIPTION``, ``FILE_NAME``, ``FILE_SCHEMA``),
  a ``DATA;`` section of ``#n=IFCCARTESIANPOINT((x,y,z));`` instances, ``ENDSEC;`` and
  ``END-ISO-10303-21;``. Every entity instance name (``#n``) is unique within the file.
* The file is exactly ``size`` bytes. When whole lines do not fill the data section, the gap is
  closed with one STEP comment (``/* … */``) or, below five bytes, with newlines.
* Memory is bounded by two slabs (about 6 MiB each), whatever ``size`` is. Lines are built in
  Python once per call (a template of at most :data:`_LINES_PER_SLAB` lines); each slab is then
  the template with its digits permuted by one ``bytes.translate`` and its slab number spliced in
  by one ``bytes.replace``: both run in C, and MD5 plus ``write`` run in one helper thread
  meanwhile, so the writer is bound by MD5 (about 0.6 GB/s), not by the interpreter.
* The same ``(size, seed)`` always produces the same bytes (``seed=None`` draws a fresh seed).
* :func:`is_ifc_header` accepts a UTF-8 byte-order mark and leading whitespace before the magic, as
  STEP readers do, and nothing else.

This is the sandbox's side of the wire: the client keeps its own format checks.
"""

from __future__ import annotations

import hashlib
import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Final

__all__ = ["IFC_MAGIC", "MIN_SAMPLE_SIZE", "is_ifc_header", "write_sample_ifc"]

IFC_MAGIC: Final = b"ISO-10303-21;"
"""The first token of every ISO 10303-21 exchange file."""

_BOM: Final = b"\xef\xbb\xbf"
_WHITESPACE: Final = b" \t\r\n"

_HEADER: Final = (
    b"ISO-10303-21;\n"
    b"HEADER;\n"
    b"FILE_DESCRIPTION(('ViewDefinition [CoordinationView_V2.0]'),'2;1');\n"
    b"FILE_NAME('sample.ifc','2024-01-01T00:00:00',('upload-engine'),('sandbox'),"
    b"'upload-engine sample writer','upload-engine','');\n"
    b"FILE_SCHEMA(('IFC4'));\n"
    b"ENDSEC;\n"
    b"DATA;\n"
    b"#1=IFCPERSON($,$,'sandbox',$,$,$,$,$);\n"
    b"#2=IFCORGANIZATION($,'upload-engine',$,$,$);\n"
    b"#3=IFCCARTESIANPOINT((0.,0.,0.));\n"
)
_FOOTER: Final = b"ENDSEC;\nEND-ISO-10303-21;\n"

MIN_SAMPLE_SIZE: Final = len(_HEADER) + len(_FOOTER)
"""The smallest file :func:`write_sample_ifc` can write (header and footer, no points)."""

_LINES_PER_SLAB: Final = 100_000
_MIN_LINE: Final = len("#@00000=IFCCARTESIANPOINT((0.0000,0.0000,0.0000));\n")
_PLACEHOLDER: Final = b"@"
_DIGITS: Final = b"0123456789"


def is_ifc_header(first: bytes) -> bool:
    """Tell whether ``first`` (the first bytes of a file; 64 are plenty) opens an IFC/STEP file."""
    if first.startswith(_BOM):
        first = first[len(_BOM) :]
    return first.lstrip(_WHITESPACE).startswith(IFC_MAGIC)


def write_sample_ifc(path: Path, size: int, *, seed: int | None = None) -> str:
    """Write a plausible IFC file of exactly ``size`` bytes to ``path``; return its MD5 hex digest.

    ``size`` is in bytes and must be at least :data:`MIN_SAMPLE_SIZE`. ``path`` is created or
    truncated. Peak memory is about two slabs (12 MiB) whatever ``size`` is.
    """
    if size < MIN_SAMPLE_SIZE:
        raise ValueError(f"an IFC sample needs at least {MIN_SAMPLE_SIZE} bytes, got {size}")
    rng = random.Random(seed if seed is not None else random.SystemRandom().getrandbits(64))
    remaining = size - len(_HEADER) - len(_FOOTER)
    template = _slab_template(rng, min(_LINES_PER_SLAB, remaining // _MIN_LINE + 1))
    md5 = hashlib.md5(usedforsecurity=False)
    with path.open("wb") as out, ThreadPoolExecutor(1, "ifc-sample") as sink:
        # MD5 and write() release the GIL; building the next slab overlaps them. One slab is in
        # flight at a time, so memory stays at two slabs.
        def consume(chunk: bytes) -> None:
            md5.update(chunk)
            out.write(chunk)

        in_flight = sink.submit(consume, _HEADER)
        slab_number = 1
        while remaining > 0:
            slab = _slab(template, slab_number, rng)
            if len(slab) > remaining:
                slab = _fit(slab, remaining)
            remaining -= len(slab)
            slab_number += 1
            in_flight.result()
            in_flight = sink.submit(consume, slab)
        in_flight.result()
        consume(_FOOTER)
    return md5.hexdigest()


def _slab_template(rng: random.Random, count: int) -> bytes:
    """``count`` point lines, each named ``#@<5-digit line number>``."""
    lines = []
    for line in range(count):
        x, y, z = (rng.uniform(-1000.0, 1000.0) for _ in range(3))
        lines.append(f"#@{line:05d}=IFCCARTESIANPOINT(({x:.4f},{y:.4f},{z:.4f}));\n")
    return "".join(lines).encode("ascii")


def _slab(template: bytes, slab_number: int, rng: random.Random) -> bytes:
    """The template with its digits permuted and ``@`` replaced by ``slab_number``.

    The permutation keeps ``0`` in place (so no number gains a leading zero) and is a bijection
    on the five-digit line numbers, so the names stay unique within the slab; the slab number
    (no leading zero, never 0) makes them unique in the file.
    """
    permuted = list(_DIGITS[1:])
    rng.shuffle(permuted)
    table = bytes.maketrans(_DIGITS, b"0" + bytes(permuted))
    return template.translate(table).replace(_PLACEHOLDER, str(slab_number).encode("ascii"))


def _fit(slab: bytes, room: int) -> bytes:
    """The whole lines of ``slab`` that fit in ``room`` bytes, padded to exactly ``room``."""
    cut = slab.rfind(b"\n", 0, room) + 1
    gap = room - cut
    pad = b"/*" + b"x" * (gap - 5) + b"*/\n" if gap >= 5 else b"\n" * gap
    return slab[:cut] + pad
