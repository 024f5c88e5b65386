"""FileInfo: one file through two paths is one file; the fingerprint says what changed."""

from __future__ import annotations

import os
import time
from pathlib import Path

from engine.models import FileInfo


def test_a_path_through_a_symbolic_link_is_the_same_file(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (real / "a.e57").write_bytes(b"x" * 10)
    (tmp_path / "link").symlink_to(real, target_is_directory=True)
    assert FileInfo.of(tmp_path / "link" / "a.e57") == FileInfo.of(real / "a.e57")
    assert FileInfo.of(tmp_path / "link" / "a.e57").path == (real / "a.e57").resolve()


def test_only_the_mtime_changed_says_so_not_the_size(tmp_path: Path) -> None:
    path = tmp_path / "a.ifc"
    path.write_bytes(b"x" * 10)
    info = FileInfo.of(path)
    os.utime(path, ns=(info.mtime_ns, info.mtime_ns + 10**9))
    assert info.differences(path.stat()) == ["modification time"]


def test_a_rewrite_with_the_mtime_put_back_is_still_noticed(tmp_path: Path) -> None:
    path = tmp_path / "a.ifc"
    path.write_bytes(b"x" * 10)
    info = FileInfo.of(path)
    time.sleep(0.05)  # past the file system's coarse timestamp tick
    path.write_bytes(b"y" * 10)
    os.utime(path, ns=(info.mtime_ns, info.mtime_ns))
    now = path.stat()
    assert now.st_size == info.size and now.st_mtime_ns == info.mtime_ns
    assert info.differences(now) == ["status-change time (rewritten with its mtime restored?)"]
    assert FileInfo.of(path).fingerprint != info.fingerprint


def test_a_file_replaced_by_another_is_noticed(tmp_path: Path) -> None:
    path = tmp_path / "a.e57"
    path.write_bytes(b"x" * 10)
    info = FileInfo.of(path)
    other = tmp_path / "b.e57"
    other.write_bytes(b"x" * 10)
    os.utime(other, ns=(info.mtime_ns, info.mtime_ns))
    other.replace(path)
    assert "replaced by another file" in info.differences(path.stat())
