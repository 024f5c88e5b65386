"""E57 sample files: what write_sample_e57 makes is valid, and validate_e57 finds every fault."""

from __future__ import annotations

import hashlib
import struct
import xml.etree.ElementTree as ET
import zlib
from pathlib import Path

import crc32c
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.sandbox.e57 import (
    HEADER_SIZE,
    LOGICAL_PAGE_SIZE,
    MIN_FILE_SIZE,
    PAGE_SIZE,
    SIGNATURE,
    E57Error,
    is_e57_header,
    logical_to_physical,
    parse_header,
    sample_size,
    validate_e57,
    validate_e57_md5,
    write_sample_e57,
)

KiB = 1024
MiB = 1024 * KiB
NAMESPACE = "{http://www.astm.org/COMMIT/E57/2010-e57-v1.0}"


def reseal(data: bytearray, page: int) -> None:
    """Recompute one page's CRC-32C (big-endian), as an E57 writer would."""
    start = page * PAGE_SIZE
    crc = crc32c.crc32c(bytes(data[start : start + LOGICAL_PAGE_SIZE]))
    data[start + LOGICAL_PAGE_SIZE : start + PAGE_SIZE] = crc.to_bytes(4, "big")


def read_logical(data: bytes, offset: int, length: int) -> bytes:
    """Logical bytes of an E57 file, skipping each page's checksum (independent of the module)."""
    out = bytearray()
    while len(out) < length:
        page, within = divmod(offset + len(out), LOGICAL_PAGE_SIZE)
        start = page * PAGE_SIZE + within
        take = min(LOGICAL_PAGE_SIZE - within, length - len(out))
        out += data[start : start + take]
    return bytes(out)


def test_round_trip_and_layout(tmp_path: Path) -> None:
    path = tmp_path / "a.e57"
    md5 = write_sample_e57(path, 9 * MiB + 5, seed=1)  # crosses the 8 MiB slab boundary
    data = path.read_bytes()
    assert len(data) == sample_size(9 * MiB + 5) == (9 * MiB // PAGE_SIZE + 1) * PAGE_SIZE
    assert md5 == hashlib.md5(data).hexdigest()
    validate_e57(path)
    assert validate_e57_md5(path) == md5

    signature, major, minor, length, xml_offset, xml_length, page_size = struct.unpack_from(
        "<8sIIQQQQ", data
    )
    assert (signature, major, minor, length, page_size) == (SIGNATURE, 1, 0, len(data), 1024)
    for page in range(len(data) // PAGE_SIZE):
        start = page * PAGE_SIZE
        stored = int.from_bytes(data[start + LOGICAL_PAGE_SIZE : start + PAGE_SIZE], "big")
        assert stored == crc32c.crc32c(data[start : start + LOGICAL_PAGE_SIZE])

    page, within = divmod(xml_offset, PAGE_SIZE)
    xml = read_logical(data, page * LOGICAL_PAGE_SIZE + within, xml_length)
    root = ET.fromstring(xml)
    assert root.tag == NAMESPACE + "e57Root"
    assert root.attrib["type"] == "Structure"
    assert root.find(NAMESPACE + "formatName") is not None
    # The XML section ends exactly at the logical end of the file.
    assert page * LOGICAL_PAGE_SIZE + within + xml_length == len(data) // PAGE_SIZE * 1020


def test_payload_is_incompressible(tmp_path: Path) -> None:
    path = tmp_path / "a.e57"
    write_sample_e57(path, 2 * MiB)
    data = path.read_bytes()
    assert len(zlib.compress(data, 6)) > 0.99 * len(data)


def test_seeds(tmp_path: Path) -> None:
    a, b, c, d = (tmp_path / name for name in "abcd")
    assert write_sample_e57(a, 64 * KiB, seed=5) == write_sample_e57(b, 64 * KiB, seed=5)
    assert write_sample_e57(c, 64 * KiB, seed=6) != write_sample_e57(a, 64 * KiB, seed=5)
    assert write_sample_e57(d, 64 * KiB) != write_sample_e57(c, 64 * KiB)


def test_sizes(tmp_path: Path) -> None:
    assert sample_size(MIN_FILE_SIZE) == 2048
    assert sample_size(2049) == 3072
    with pytest.raises(ValueError, match="at least 2048"):
        write_sample_e57(tmp_path / "tiny.e57", 2047)
    assert not (tmp_path / "tiny.e57").exists()
    write_sample_e57(tmp_path / "min.e57", 2048)
    validate_e57(tmp_path / "min.e57")


@settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(size=st.integers(min_value=MIN_FILE_SIZE, max_value=64 * KiB), seed=st.integers(0, 99))
def test_any_size_is_valid(tmp_path: Path, size: int, seed: int) -> None:
    path = tmp_path / "h.e57"
    md5 = write_sample_e57(path, size, seed=seed)
    assert path.stat().st_size == sample_size(size) and sample_size(size) - size < PAGE_SIZE
    assert validate_e57_md5(path) == md5


def test_logical_to_physical() -> None:
    assert logical_to_physical(0) == 0
    assert logical_to_physical(1019) == 1019
    assert logical_to_physical(1020) == 1024
    assert logical_to_physical(2 * 1020 + 5) == 2 * 1024 + 5


def test_header_recognition(tmp_path: Path) -> None:
    path = tmp_path / "a.e57"
    write_sample_e57(path, 4096)
    first = path.read_bytes()[:HEADER_SIZE]
    assert is_e57_header(first)
    assert is_e57_header(first[:8])
    assert not is_e57_header(first[:5])
    assert not is_e57_header(b"ISO-10303-21;\n")
    assert not is_e57_header(b"")
    header = parse_header(first)
    assert header.physical_length == 4096 and header.page_size == 1024
    wrong_version = bytearray(first)
    wrong_version[8:12] = (2).to_bytes(4, "little")
    assert not is_e57_header(bytes(wrong_version))
    with pytest.raises(E57Error, match="signature"):
        parse_header(b"PK\x03\x04" + bytes(60))


@pytest.mark.parametrize("page", [0, 1, 37, 49])
def test_one_corrupt_byte_is_found_with_its_page(tmp_path: Path, page: int) -> None:
    path = tmp_path / "a.e57"
    write_sample_e57(path, 50 * KiB, seed=2)
    data = bytearray(path.read_bytes())
    data[page * PAGE_SIZE + 500] ^= 0x01
    path.write_bytes(data)
    with pytest.raises(E57Error) as caught:
        validate_e57(path)
    assert caught.value.page == page
    assert f"page {page} " in caught.value.reason
    assert "CRC" in str(caught.value)


def test_a_corrupt_checksum_is_found(tmp_path: Path) -> None:
    path = tmp_path / "a.e57"
    write_sample_e57(path, 10 * KiB)
    data = bytearray(path.read_bytes())
    data[3 * PAGE_SIZE + 1022] ^= 0x80
    path.write_bytes(data)
    with pytest.raises(E57Error) as caught:
        validate_e57(path)
    assert caught.value.page == 3


@pytest.mark.parametrize("cut", [1, PAGE_SIZE, 5 * PAGE_SIZE])
def test_truncated_file_fails(tmp_path: Path, cut: int) -> None:
    path = tmp_path / "a.e57"
    write_sample_e57(path, 10 * KiB)
    path.write_bytes(path.read_bytes()[:-cut])
    with pytest.raises(E57Error, match="truncated"):
        validate_e57(path)


def test_padded_file_fails(tmp_path: Path) -> None:
    path = tmp_path / "a.e57"
    write_sample_e57(path, 10 * KiB)
    path.write_bytes(path.read_bytes() + bytes(PAGE_SIZE))
    with pytest.raises(E57Error, match="10240 bytes but it is 11264"):
        validate_e57(path)


def test_short_and_foreign_files_fail(tmp_path: Path) -> None:
    short = tmp_path / "short.e57"
    short.write_bytes(SIGNATURE + bytes(10))
    with pytest.raises(E57Error, match="shorter than the E57 header"):
        validate_e57(short)
    ifc = tmp_path / "model.ifc"
    ifc.write_bytes(b"ISO-10303-21;\nHEADER;\n" + bytes(4096))
    with pytest.raises(E57Error, match="signature"):
        validate_e57(ifc)


def rewrite_header(path: Path, **fields: int) -> None:
    data = bytearray(path.read_bytes())
    names = ["major", "minor", "length", "xml_offset", "xml_length", "page_size"]
    values = dict(zip(names, struct.unpack_from("<IIQQQQ", data, 8), strict=True))
    values.update(fields)
    struct.pack_into("<IIQQQQ", data, 8, *(values[name] for name in names))
    reseal(data, 0)
    path.write_bytes(data)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"major": 2}, "unsupported E57 version"),
        ({"page_size": 4096}, "page size 4096"),
        ({"xml_offset": 10 * KiB}, "outside the data"),
        ({"xml_offset": 1021}, "outside the data"),  # inside page 0's checksum
        ({"xml_length": 10_000}, "runs past the end"),
        ({"xml_length": 0}, "empty"),
        ({"xml_offset": 100}, "does not start with an XML declaration"),
    ],
)
def test_header_faults(tmp_path: Path, fields: dict[str, int], message: str) -> None:
    path = tmp_path / "a.e57"
    write_sample_e57(path, 10 * KiB, seed=3)
    rewrite_header(path, **fields)
    with pytest.raises(E57Error, match=message):
        validate_e57(path)


def test_xml_without_e57_root_fails(tmp_path: Path) -> None:
    path = tmp_path / "a.e57"
    write_sample_e57(path, 4 * KiB, seed=3)
    data = bytearray(path.read_bytes())
    page = len(data) // PAGE_SIZE - 1
    start = data.index(b"<e57Root", page * PAGE_SIZE)
    data[start : start + 8] = b"<e58Root"
    reseal(data, page)
    path.write_bytes(data)
    with pytest.raises(E57Error, match="no e57Root"):
        validate_e57(path)


def test_on_chunk_sees_every_byte_and_can_abandon(tmp_path: Path) -> None:
    path = tmp_path / "a.e57"
    md5 = write_sample_e57(path, 9 * MiB, seed=4)
    digest = hashlib.md5()
    seen: list[int] = []

    def on_chunk(view: memoryview) -> None:
        seen.append(len(view))
        digest.update(view)

    validate_e57(path, on_chunk=on_chunk)
    assert digest.hexdigest() == md5
    assert seen == [8 * MiB, MiB]

    class Abandon(Exception):
        pass

    def stop(_view: memoryview) -> None:
        raise Abandon

    with pytest.raises(Abandon):
        validate_e57(path, on_chunk=stop)


def test_a_failed_write_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import engine.sandbox.e57 as e57

    calls = 0

    def failing_seal(slab: bytearray, count: int) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise OSError("disk full")

    monkeypatch.setattr(e57, "_seal", failing_seal)
    path = tmp_path / "a.e57"
    with pytest.raises(OSError, match="disk full"):
        write_sample_e57(path, 9 * MiB)
    assert not path.exists()
