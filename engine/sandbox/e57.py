"""E57 files (ASTM E2807): write valid samples, check what arrived.

The sandbox's ingestion looks at the assembled object the way a reader such as libE57Format
would before parsing it, and tests and benchmarks need large valid files made quickly.

Rules this module keeps:

- A file is a whole number of 1024-byte physical pages. Each page holds 1020 logical bytes
  followed by the CRC-32C (Castagnoli) of those 1020 bytes, stored big-endian.
- The 48-byte header starts page 0, little-endian: ``b"ASTM-E57"``, major version (u32, 1),
  minor version (u32, 0), filePhysicalLength (u64, bytes), xmlPhysicalOffset (u64, bytes),
  xmlLogicalLength (u64, bytes), pageSize (u64, 1024).
- filePhysicalLength equals the size on disk; xmlPhysicalOffset lies inside the file and never
  inside a checksum; the XML section (xmlLogicalLength logical bytes) ends within the file's
  logical length and begins with an XML declaration and an ``e57Root`` element.
- Generated files: the requested size rounded up to whole pages (``pages * 1024`` bytes, at
  least 2048); header, then payload, then the XML section ending exactly at the logical end.
- Streaming: files are written and checked in 8 MiB slabs; memory stays at a few slabs
  whatever the file size. Checking runs at about 2 GB/s (CRC-32C in C; about 0.5 GB/s with
  the MD5 of validate_e57_md5). Writing runs at about 0.3-0.45 GB/s on two idle cores: MD5
  (about 0.7 GB/s per core) runs in one worker thread and making the next slab in another.
- A failed write leaves no file behind.

Payload bytes are statistically uniform and incompressible for LZ and entropy coders: each
8 MiB slab is 1 MiB of fresh random bytes (``os.urandom``, or a PRNG when seeded) and seven
copies of it under fresh random byte permutations. They are test data, not key material.
"""

from __future__ import annotations

import hashlib
import os
import random
import struct
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Final

import crc32c

__all__ = [
    "HEADER_SIZE",
    "LOGICAL_PAGE_SIZE",
    "MIN_FILE_SIZE",
    "PAGE_SIZE",
    "SIGNATURE",
    "E57Error",
    "E57Header",
    "is_e57_header",
    "logical_to_physical",
    "parse_header",
    "sample_size",
    "validate_e57",
    "validate_e57_md5",
    "write_sample_e57",
]

SIGNATURE: Final = b"ASTM-E57"
PAGE_SIZE: Final = 1024
"""Physical page size in bytes."""
LOGICAL_PAGE_SIZE: Final = PAGE_SIZE - 4
"""Logical bytes per page; the other 4 hold the page's CRC-32C."""
HEADER_SIZE: Final = 48
MIN_FILE_SIZE: Final = 2 * PAGE_SIZE
"""Smallest sample ``write_sample_e57`` makes: header page plus room for the XML section."""

_HEADER: Final = struct.Struct("<8sIIQQQQ")
_CRC: Final = struct.Struct(">I")
_SLAB_PAGES: Final = 8192  # 8 MiB of physical pages per read or write
_SEED_BLOCK: Final = 1 << 20  # fresh random bytes per slab; the rest are permuted copies
_XML_PEEK: Final = 4096  # logical bytes of the XML section looked at by the validator
_E57_NAMESPACE: Final = "http://www.astm.org/COMMIT/E57/2010-e57-v1.0"


class E57Error(Exception):
    """The file is not a valid E57 file; ``reason`` says why, ``page`` where (if a page)."""

    def __init__(self, reason: str, *, page: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.page = page


@dataclass(frozen=True, slots=True)
class E57Header:
    """The 48-byte E57 file header; offsets and lengths in bytes."""

    major: int
    minor: int
    physical_length: int
    xml_physical_offset: int
    xml_logical_length: int
    page_size: int


def logical_to_physical(offset: int) -> int:
    """Physical file offset of logical byte ``offset`` (skipping the per-page checksums)."""
    page, within = divmod(offset, LOGICAL_PAGE_SIZE)
    return page * PAGE_SIZE + within


def sample_size(size: int) -> int:
    """Size in bytes of the file ``write_sample_e57(path, size)`` makes: whole pages."""
    if size < MIN_FILE_SIZE:
        raise ValueError(f"an E57 sample needs at least {MIN_FILE_SIZE} bytes, not {size}")
    return -(-size // PAGE_SIZE) * PAGE_SIZE


def parse_header(first_bytes: bytes) -> E57Header:
    """Decode the header from the first 48 (or more) bytes of a file; E57Error if not one."""
    if len(first_bytes) < HEADER_SIZE:
        raise E57Error(f"file is {len(first_bytes)} bytes, shorter than the E57 header")
    sig, major, minor, length, xml_offset, xml_length, page_size = _HEADER.unpack_from(first_bytes)
    if sig != SIGNATURE:
        raise E57Error(f"not an E57 file: signature {sig!r}, expected {SIGNATURE!r}")
    return E57Header(major, minor, length, xml_offset, xml_length, page_size)


def is_e57_header(first_bytes: bytes) -> bool:
    """Whether ``first_bytes`` (the start of a file) look like an E57 header.

    Eight bytes suffice to check the signature; given 48 or more, the version (1.x) and the
    page size (1024) are checked too.
    """
    if not first_bytes.startswith(SIGNATURE):
        return False
    if len(first_bytes) < HEADER_SIZE:
        return len(first_bytes) >= len(SIGNATURE)
    header = parse_header(first_bytes)
    return header.major == 1 and header.page_size == PAGE_SIZE


def write_sample_e57(path: Path, size: int, *, seed: int | None = None) -> str:
    """Write a valid E57 file of ``sample_size(size)`` bytes at ``path``; return its MD5 hex.

    ``size`` is rounded up to whole 1024-byte pages; below 2048 it raises ValueError.
    With ``seed`` the bytes are a function of (seed, size); without, they are fresh.
    Streams 8 MiB slabs; peak memory is about four slabs.
    """
    physical_length = sample_size(size)
    pages = physical_length // PAGE_SIZE
    logical_length = pages * LOGICAL_PAGE_SIZE
    rng = random.Random(seed)  # seed None: seeded from the OS's entropy
    xml = _sample_xml(uuid.UUID(int=rng.getrandbits(128), version=4))
    xml_logical_offset = logical_length - len(xml)
    if xml_logical_offset < HEADER_SIZE:  # unreachable for MIN_FILE_SIZE; kept as a guard
        raise ValueError(f"{size} bytes leave no room for the XML section")
    header = _HEADER.pack(
        SIGNATURE,
        1,
        0,
        physical_length,
        logical_to_physical(xml_logical_offset),
        len(xml),
        PAGE_SIZE,
    )
    overlays = ((0, header), (xml_logical_offset, xml))
    fill = _filler(rng.randbytes if seed is not None else os.urandom, rng)
    md5 = hashlib.md5(usedforsecurity=False)
    try:
        with path.open("wb") as out:
            _write_slabs(out, pages, fill, overlays, md5.update)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return md5.hexdigest()


def validate_e57(path: Path, *, on_chunk: Callable[[memoryview], object] | None = None) -> None:
    """Check ``path`` is a well-formed E57 file; raise E57Error naming the first fault.

    Checks the signature, version, page size, physical length against the file size, the XML
    section's placement and opening, and every page's CRC-32C (streamed, 8 MiB at a time).
    ``on_chunk`` sees each verified slab of the file in order, before the next is read: hash it,
    or raise from it to abandon the check (the exception propagates). The view is only valid
    during the call. OSError from reading propagates too.
    """
    with path.open("rb") as f:
        size = os.fstat(f.fileno()).st_size
        header = parse_header(f.read(HEADER_SIZE))
        _check_header(header, size)
        f.seek(0)
        slab = bytearray(_SLAB_PAGES * PAGE_SIZE)
        view = memoryview(slab)
        page = 0
        while True:
            got = f.readinto(slab)
            if not got:
                break
            chunk = view[:got]
            if got % PAGE_SIZE:  # only the file's end can be short; fstat said whole pages
                raise E57Error(f"file changed while being read: short read of {got} bytes")
            page = _verify(chunk, page)
            if on_chunk is not None:
                on_chunk(chunk)
        if page * PAGE_SIZE != size:
            raise E57Error(f"file changed while being read: {page} pages for {size} bytes")
        _check_xml(f, header)


def validate_e57_md5(path: Path) -> str:
    """``validate_e57`` and, in the same pass, return the file's MD5 hex."""
    md5 = hashlib.md5(usedforsecurity=False)
    validate_e57(path, on_chunk=md5.update)
    return md5.hexdigest()


def _write_slabs(
    out: BinaryIO,
    pages: int,
    fill: Callable[[int], bytearray],
    overlays: Sequence[tuple[int, bytes]],
    hash_update: Callable[[bytearray], object],
) -> None:
    """Write ``pages`` pages: bytes from ``fill``, ``overlays`` laid over them, then CRCs."""
    starts = range(0, pages, _SLAB_PAGES)
    with ThreadPoolExecutor(2, thread_name_prefix="e57-write") as pool:
        # One worker makes the next slab's bytes, one hashes the previous slab; this thread
        # lays out, checksums and writes. Slabs are never modified once handed to MD5.
        upcoming: Future[bytearray] = pool.submit(fill, min(_SLAB_PAGES, pages))
        hashing: Future[object] | None = None
        for first in starts:
            count = min(_SLAB_PAGES, pages - first)
            slab = upcoming.result()
            following = first + _SLAB_PAGES
            if following < pages:
                # A seeded filler must be called in slab order: results follow submissions.
                upcoming = pool.submit(fill, min(_SLAB_PAGES, pages - following))
            for logical_offset, data in overlays:
                _overlay(slab, first, count, logical_offset, data)
            _seal(slab, count)
            if hashing is not None:
                hashing.result()
            hashing = pool.submit(hash_update, slab)
            out.write(slab)
        if hashing is not None:
            hashing.result()


def _check_header(header: E57Header, size: int) -> None:
    if header.major != 1:
        raise E57Error(f"unsupported E57 version {header.major}.{header.minor}, expected 1.x")
    if header.page_size != PAGE_SIZE:
        raise E57Error(f"page size {header.page_size}, expected {PAGE_SIZE}")
    if header.physical_length != size:
        raise E57Error(
            f"header says the file is {header.physical_length} bytes but it is {size} bytes"
            " (truncated or padded)"
        )
    if size % PAGE_SIZE:
        raise E57Error(f"file is {size} bytes, not a whole number of {PAGE_SIZE}-byte pages")
    within = header.xml_physical_offset % PAGE_SIZE
    if header.xml_physical_offset >= size or within >= LOGICAL_PAGE_SIZE:
        raise E57Error(f"XML section offset {header.xml_physical_offset} is outside the data")
    if header.xml_logical_length == 0:
        raise E57Error("XML section is empty")
    xml_start = (header.xml_physical_offset // PAGE_SIZE) * LOGICAL_PAGE_SIZE + within
    logical_length = size // PAGE_SIZE * LOGICAL_PAGE_SIZE
    if xml_start + header.xml_logical_length > logical_length:
        raise E57Error(
            f"XML section ({header.xml_logical_length} bytes at logical offset {xml_start})"
            f" runs past the end of the file's {logical_length} logical bytes"
        )


def _check_xml(f: BinaryIO, header: E57Header) -> None:
    """The XML section starts with a declaration and holds an e57Root element early on."""
    want = min(header.xml_logical_length, _XML_PEEK)
    parts: list[bytes] = []
    physical = header.xml_physical_offset
    while want > 0:
        room = LOGICAL_PAGE_SIZE - physical % PAGE_SIZE
        f.seek(physical)
        piece = f.read(min(room, want))
        parts.append(piece)
        want -= len(piece)
        physical = (physical // PAGE_SIZE + 1) * PAGE_SIZE
    text = b"".join(parts).lstrip(b"\xef\xbb\xbf \t\r\n")
    if not text.startswith(b"<?xml"):
        raise E57Error(f"XML section does not start with an XML declaration: {text[:16]!r}")
    if b"<e57Root" not in text:
        raise E57Error("XML section has no e57Root element")


def _verify(chunk: memoryview, first_page: int) -> int:
    """Check every page CRC in ``chunk``; return the page number after the last one."""
    crc = crc32c.crc32c
    stored = _CRC.unpack_from
    for offset in range(0, len(chunk), PAGE_SIZE):
        end = offset + LOGICAL_PAGE_SIZE
        if crc(chunk[offset:end]) != stored(chunk, end)[0]:
            page = first_page + offset // PAGE_SIZE
            raise E57Error(
                f"page {page} (bytes {page * PAGE_SIZE}..{(page + 1) * PAGE_SIZE - 1}):"
                " CRC-32C mismatch",
                page=page,
            )
    return first_page + len(chunk) // PAGE_SIZE


def _seal(slab: bytearray, count: int) -> None:
    """Write each page's CRC-32C (big-endian) into its last four bytes."""
    crc = crc32c.crc32c
    store = _CRC.pack_into
    view = memoryview(slab)
    try:
        for offset in range(0, count * PAGE_SIZE, PAGE_SIZE):
            end = offset + LOGICAL_PAGE_SIZE
            store(slab, end, crc(view[offset:end]))
    finally:
        view.release()


def _overlay(slab: bytearray, first_page: int, count: int, at: int, data: bytes) -> None:
    """Copy the logical bytes ``data`` (at logical offset ``at``) into this slab's pages."""
    slab_start = first_page * LOGICAL_PAGE_SIZE
    position = max(at, slab_start)
    stop = min(at + len(data), (first_page + count) * LOGICAL_PAGE_SIZE)
    while position < stop:
        page, within = divmod(position, LOGICAL_PAGE_SIZE)
        n = min(LOGICAL_PAGE_SIZE - within, stop - position)
        target = (page - first_page) * PAGE_SIZE + within
        slab[target : target + n] = data[position - at : position - at + n]
        position += n


def _expand(block: bytes, pages: int, permutations: Callable[[], bytes]) -> bytearray:
    """``pages`` pages of bytes: ``block`` then copies of it under fresh byte permutations."""
    total = pages * PAGE_SIZE
    out = bytearray(total)
    out[: len(block)] = block
    for start in range(len(block), total, len(block)):
        n = min(len(block), total - start)
        piece = block.translate(permutations())
        out[start : start + n] = piece if n == len(piece) else piece[:n]
    return out


def _filler(block: Callable[[int], bytes], rng: random.Random) -> Callable[[int], bytearray]:
    """Slab maker: fresh bytes from ``block``, byte permutations from ``rng``."""

    def permutation() -> bytes:
        table = bytearray(range(256))
        rng.shuffle(table)
        return bytes(table)

    def fill(pages: int) -> bytearray:
        return _expand(block(min(_SEED_BLOCK, pages * PAGE_SIZE)), pages, permutation)

    return fill


def _sample_xml(guid: uuid.UUID) -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<e57Root type="Structure" xmlns="{_E57_NAMESPACE}">\n'
        '  <formatName type="String"><![CDATA[ASTM E57 3D Imaging Data File]]></formatName>\n'
        f'  <guid type="String"><![CDATA[{{{guid}}}]]></guid>\n'
        '  <versionMajor type="Integer">1</versionMajor>\n'
        '  <versionMinor type="Integer">0</versionMinor>\n'
        '  <e57LibraryVersion type="String"><![CDATA[upload-engine sandbox]]>'
        "</e57LibraryVersion>\n"
        '  <coordinateMetadata type="String"><![CDATA[]]></coordinateMetadata>\n'
        '  <data3D type="Vector" allowHeterogeneousChildren="1"/>\n'
        '  <images2D type="Vector" allowHeterogeneousChildren="1"/>\n'
        "</e57Root>\n"
    ).encode()
