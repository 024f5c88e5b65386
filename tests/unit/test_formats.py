"""Format sniffing: a pure function of the first bytes; files are only read at their head."""

from __future__ import annotations

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


def test_check_e57(tmp_path: Path) -> None:
    good = tmp_path / "good.e57"
    good.write_bytes(E57_SIGNATURE + b"\0" * 40)
    check_e57(good)
    bad = tmp_path / "bad.e57"
    bad.write_bytes(IFC_HEAD)
    with pytest.raises(FormatError) as err:
        check_e57(bad)
    assert str(err.value) == f"{bad}: not an E57 file (header does not read ASTM-E57)"


def test_check_ifc(tmp_path: Path) -> None:
    good = tmp_path / "good.ifc"
    good.write_bytes(b"\xef\xbb\xbf \n" + IFC_HEAD)
    check_ifc(good)
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
