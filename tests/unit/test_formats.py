"""Format sniffing: a pure function of the first bytes; files are only read at their head."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.errors import FormatError, SourceError
from engine.formats import (
    E57_SIGNATURE,
    HEAD_SIZE,
    IFC_SIGNATURE,
    check_e57,
    check_ifc,
    read_head,
    sniff,
    sniff_head,
)

IFC_HEAD = (
    b"ISO-10303-21;\nHEADER;\nFILE_DESCRIPTION(('ViewDefinition [CoordinationView]'),'2;1');\n"
)


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (E57_SIGNATURE + b"\x01\x00\x00\x00", "e57"),
        (E57_SIGNATURE, "e57"),
        (IFC_HEAD, "ifc"),
        (b"\xef\xbb\xbf" + IFC_HEAD, "ifc"),
        (b"\r\n  \t\n" + IFC_HEAD, "ifc"),
        (b"\xef\xbb\xbf\n\n" + IFC_HEAD, "ifc"),
        (b"", None),
        (b"ASTM-E5", None),
        (b" ASTM-E57", None),  # the E57 signature is at offset 0, nothing before it
        (b"astm-e57", None),
        (b"ISO-10303-21", None),  # no semicolon
        (b"iso-10303-21;", None),
        (b"# ISO-10303-21;", None),
        (b"\xfe\xff" + IFC_HEAD, None),  # a UTF-16 BOM is not allowed
        (b"PK\x03\x04", None),
        (b"ply\nformat ascii 1.0\n", None),
    ],
)
def test_sniff_head(head: bytes, expected: str | None) -> None:
    assert sniff_head(head) == expected


@given(st.binary(max_size=64))
def test_anything_after_the_e57_signature_is_e57(tail: bytes) -> None:
    assert sniff_head(E57_SIGNATURE + tail) == "e57"


@given(st.text(alphabet=" \t\r\n", max_size=20), st.booleans(), st.binary(max_size=32))
def test_ifc_after_bom_and_whitespace(space: str, bom: bool, tail: bytes) -> None:
    head = (b"\xef\xbb\xbf" if bom else b"") + space.encode() + IFC_SIGNATURE + tail
    assert sniff_head(head) == "ifc"


@given(st.binary(max_size=64))
def test_sniff_head_is_total(head: bytes) -> None:
    assert sniff_head(head) in ("e57", "ifc", None)


def test_sniff_reads_files(tmp_path: Path) -> None:
    e57 = tmp_path / "scan.ifc"  # the extension is never trusted
    e57.write_bytes(E57_SIGNATURE + b"\0" * 100)
    ifc = tmp_path / "model.e57"
    ifc.write_bytes(b"\xef\xbb\xbf" + IFC_HEAD)
    other = tmp_path / "notes.txt"
    other.write_bytes(b"hello")
    empty = tmp_path / "empty.e57"
    empty.write_bytes(b"")
    assert sniff(e57) == "e57"
    assert sniff(ifc) == "ifc"
    assert sniff(other) is None
    assert sniff(empty) is None


def test_read_head_reads_only_the_head(tmp_path: Path) -> None:
    big = tmp_path / "big.e57"
    big.write_bytes(E57_SIGNATURE + b"x" * (3 * HEAD_SIZE))
    assert len(read_head(big)) == HEAD_SIZE
    assert read_head(big, 8) == E57_SIGNATURE


def e57_header(length: int, *, xml_offset: int = 48, page: int = 1024, major: int = 1) -> bytes:
    return struct.pack("<8sIIQQQQ", E57_SIGNATURE, major, 0, length, xml_offset, 10, page)


def test_check_e57(tmp_path: Path) -> None:
    good = tmp_path / "good.e57"
    good.write_bytes(e57_header(2048).ljust(2048, b"\0"))
    check_e57(good)
    bad = tmp_path / "bad.e57"
    bad.write_bytes(IFC_HEAD)
    with pytest.raises(FormatError) as err:
        check_e57(bad)
    assert str(err.value) == f"{bad}: not an E57 file (header does not read ASTM-E57)"


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (E57_SIGNATURE, "truncated E57 file: 8 bytes, shorter than its 48-byte header"),
        (e57_header(4096).ljust(2048, b"\0"), "its header says 4096 bytes, the file has 2048"),
        (e57_header(1024).ljust(2048, b"\0"), "its header says 1024 bytes, the file has 2048"),
        (e57_header(1000).ljust(1000, b"\0"), "lies outside the file"),
        (e57_header(1024, xml_offset=5000).ljust(1024, b"\0"), "lies outside the file"),
        (e57_header(1024, page=512).ljust(1024, b"\0"), "version 1, page size 512"),
        (e57_header(1024, major=2).ljust(1024, b"\0"), "version 2"),
    ],
    ids=["signature-only", "truncated", "padded", "partial-page", "xml-outside", "page", "major"],
)
def test_a_truncated_or_damaged_e57_is_refused_before_sending(
    tmp_path: Path, content: bytes, problem: str
) -> None:
    path = tmp_path / "scan.e57"
    path.write_bytes(content)
    with pytest.raises(FormatError) as err:
        check_e57(path)
    assert str(err.value).startswith(f"{path}: ") and problem in str(err.value)


def test_a_truncated_sandbox_sample_is_refused(tmp_path: Path) -> None:
    from engine.sandbox.e57 import write_sample_e57

    path = tmp_path / "cut.e57"
    write_sample_e57(path, 8192, seed=1)
    with path.open("r+b") as f:
        f.truncate(5000)
    with pytest.raises(FormatError, match="truncated or padded E57 file"):
        check_e57(path)


def test_check_ifc(tmp_path: Path) -> None:
    good = tmp_path / "good.ifc"
    good.write_bytes(b"\xef\xbb\xbf \n" + IFC_HEAD + b"ENDSEC;\nEND-ISO-10303-21;\n\n  ")
    check_ifc(good)
    cut = tmp_path / "cut.ifc"
    cut.write_bytes(IFC_HEAD + b"ENDSEC;\nEND-ISO-103")
    with pytest.raises(FormatError, match=r"cut\.ifc: truncated IFC file \(it does not end with"):
        check_ifc(cut)
    bad = tmp_path / "bad.ifc"
    bad.write_bytes(E57_SIGNATURE)
    with pytest.raises(FormatError, match=r"bad\.ifc: not an IFC file \(header does not read"):
        check_ifc(bad)


def test_unreadable_files_are_source_errors(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="no such file"):
        sniff(tmp_path / "missing.e57")
    with pytest.raises(SourceError, match="not a regular file"):
        check_e57(tmp_path)
    with pytest.raises(SourceError, match="no such file"):
        check_ifc(tmp_path / "missing.ifc")


def test_the_sandbox_samples_are_recognised(tmp_path: Path) -> None:
    from engine.sandbox.e57 import write_sample_e57

    path = tmp_path / "sample.e57"
    write_sample_e57(path, 4096, seed=1)
    assert sniff(path) == "e57"
    check_e57(path)
