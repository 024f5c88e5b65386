"""The Speckle plane's records as its GraphQL types' fields, and paging through lists of them.

Rules this module keeps:

* A model's ``displayName`` is the last ``/`` segment of its name.
* **Pages** hold at most 100 items (``limit`` is clamped to 0..100); the cursor is opaque
  (base64 of ``offset:N``) and null on the last page; a cursor that does not decode is
  ``BAD_USER_INPUT``.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Sequence
from typing import Any, Final, TypeVar

from engine.sandbox.speckle.errors import BAD_USER_INPUT, SpeckleApiError
from engine.sandbox.speckle.records import ModelRecord, VersionRecord

__all__ = ["model_view", "page", "version_view"]

_MAX_PAGE: Final = 100
_T = TypeVar("_T")


def model_view(model: ModelRecord) -> dict[str, Any]:
    """The fields of a ``Model``."""
    return {
        "id": model.id,
        "name": model.name,
        "displayName": model.name.rsplit("/", 1)[-1],
        "description": model.description,
        "projectId": model.project_id,
        "createdAt": model.created_at,
        "updatedAt": model.updated_at,
    }


def version_view(version: VersionRecord) -> dict[str, Any]:
    """The fields of a ``Version`` (``modelId`` for its ``model`` field)."""
    return {
        "id": version.id,
        "referencedObject": version.referenced_object,
        "message": version.message,
        "sourceApplication": version.source_application,
        "createdAt": version.created_at,
        "modelId": version.model_id,
    }


def page(
    items: Sequence[_T], limit: int, cursor: str | None, view: Callable[[_T], dict[str, Any]]
) -> dict[str, Any]:
    """One page of ``items`` from ``cursor``: ``totalCount``, the next ``cursor``, ``items``."""
    start = _decode_cursor(cursor)
    size = max(0, min(limit, _MAX_PAGE))
    chunk = items[start : start + size]
    end = start + len(chunk)
    return {
        "totalCount": len(items),
        "cursor": _encode_cursor(end) if end < len(items) else None,
        "items": [view(item) for item in chunk],
    }


def _encode_cursor(offset: int) -> str:
    return base64.urlsafe_b64encode(f"offset:{offset}".encode()).decode()


def _decode_cursor(cursor: str | None) -> int:
    if not cursor:
        return 0
    try:
        kind, _, value = base64.urlsafe_b64decode(cursor.encode()).decode().partition(":")
        if kind == "offset" and int(value) >= 0:
            return int(value)
    except (ValueError, UnicodeDecodeError):
        pass
    raise SpeckleApiError(BAD_USER_INPUT, f"Invalid cursor {cursor!r}")
