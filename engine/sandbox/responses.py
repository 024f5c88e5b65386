"""JSON answers: the one way the sandbox's server and control planes write a JSON response.

Rules this module keeps:

* A JSON answer is an ``application/json`` body serialised by orjson, with the given status and
  extra headers; nothing else is added (no charset parameter, no caching headers).
* Keys must be strings unless the caller asks for ``non_str_keys`` (the admin routes, whose
  counters may be keyed by number): a plane's payload with another key is a bug, not a guess.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from aiohttp import web

__all__ = ["json_response"]


def json_response(
    payload: Any,
    *,
    status: int = 200,
    headers: Mapping[str, str] | None = None,
    non_str_keys: bool = False,
) -> web.Response:
    """``payload`` as an ``application/json`` response."""
    return web.Response(
        status=status,
        body=orjson.dumps(payload, option=orjson.OPT_NON_STR_KEYS if non_str_keys else None),
        content_type="application/json",
        headers=headers,
    )
