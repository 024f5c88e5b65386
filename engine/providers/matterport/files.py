"""The files of one import, decided without I/O: which are checked, how the journal remembers
them, and which of the server's records is which file.

Rules: ``check_files`` checks every file once before any request (exists, listed once, E57);
``fingerprints`` is what ``SessionOpened`` keeps of them; ``on_server`` finds a file's record in
a resumed session (the journaled clientId, else ``file<position>`` by name and size when no
other file claims it); ``free_number`` picks the clientId of a file to add.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from engine.errors import ConfigError
from engine.formats import check_e57
from engine.journal import FileAdded
from engine.models import FileInfo
from engine.providers.matterport.target import same_file

__all__ = ["changed_files", "check_files", "fingerprints", "free_number", "on_server"]


def check_files(paths: Sequence[str | os.PathLike[str]]) -> list[FileInfo]:
    """The files of an import, each checked once: it exists, is listed once, is an E57."""
    if isinstance(paths, str | os.PathLike):
        raise ConfigError("paths must be a sequence of paths, not one path")
    infos = [FileInfo.of(p) for p in paths]
    if not infos:
        raise ConfigError("no files to import")
    seen: set[str] = set()
    for info in infos:
        if info.key in seen:
            raise ConfigError(f"{info.path}: listed twice")
        seen.add(info.key)
    for info in infos:
        check_e57(info.path)
    return infos


def fingerprints(infos: Sequence[FileInfo]) -> dict[str, list[int]]:
    """What ``SessionOpened`` keeps of the files: path -> [size, mtime_ns, ctime_ns, inode]
    (the ctime catches a rewrite whose mtime was put back)."""
    return {
        i.key: [i.size, i.mtime_ns, i.ctime_ns, i.inode] for i in sorted(infos, key=lambda i: i.key)
    }


def changed_files(
    journaled: Mapping[str, Any], now: Mapping[str, list[int]], infos: Sequence[FileInfo]
) -> list[FileInfo]:
    """The files whose ``fingerprints`` differ from the journaled session's, by path."""
    return [i for i in sorted(infos, key=lambda i: i.key) if journaled.get(i.key) != now[i.key]]


def on_server(
    position: int,
    info: FileInfo,
    added: FileAdded | None,
    server: Mapping[str, Mapping[str, Any]],
    claimed: set[str],
) -> tuple[str, Mapping[str, Any]] | None:
    """The server's record of the file at 1-based ``position`` and its clientId: the journaled
    one, else ``file<position>`` when it matches by name and size and no other file claims it
    (added by a run that died before journaling it); ``None`` when the file must be added."""
    if added is not None and added.client_id and added.client_id in server:
        return added.client_id, server[added.client_id]
    guess = f"file{position}"
    found = server.get(guess)
    if found is not None and guess not in claimed and same_file(found, info):
        return guess, found
    return None


def free_number(position: int, taken: set[str]) -> int:
    """The first ``n >= position`` whose ``file<n>`` the session does not hold yet."""
    number = position
    while f"file{number}" in taken:
        number += 1
    return number
