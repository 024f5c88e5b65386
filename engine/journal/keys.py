"""Journal keys: one per (destination, file) or per group, built here and nowhere else.

A key is a JSON array of its kind and parts (destination first), so no separator inside a path,
an endpoint or an id can make two keys collide.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import orjson

from engine.models import FileInfo

__all__ = [
    "JournalKey",
    "matterport_file_key",
    "matterport_session_key",
    "presigned_key",
    "s3_key",
    "speckle_key",
]


@dataclass(frozen=True, slots=True)
class JournalKey:
    """One journal key: a kind and the parts that make it unique (destination first)."""

    kind: str
    parts: tuple[str, ...]

    def __str__(self) -> str:
        return orjson.dumps([self.kind, *self.parts]).decode()


def presigned_key(file: FileInfo) -> JournalKey:
    return JournalKey("presigned", (file.key,))


def s3_key(endpoint: str, bucket: str, key: str, file: FileInfo) -> JournalKey:
    return JournalKey("s3", (endpoint, bucket, key, file.key))


def speckle_key(server: str, project_id: str, model_ref: str, file: FileInfo) -> JournalKey:
    return JournalKey("speckle", (server, project_id, model_ref, file.key))


def matterport_session_key(
    endpoint: str, organization: str, files: Sequence[FileInfo]
) -> JournalKey:
    return JournalKey("matterport-session", (endpoint, organization, *sorted(f.key for f in files)))


def matterport_file_key(endpoint: str, session_id: str, file: FileInfo) -> JournalKey:
    return JournalKey("matterport-file", (endpoint, session_id, file.key))
