"""The Matterport Import API's errors: :class:`ApiError` and its ``extensions.code`` values.

Rules this module keeps:

* **Error codes** (``extensions.code``): ``request.invalid`` (GraphQL validation, bad arguments,
  state-machine violations, a refused completion), ``request.unauthenticated`` (no or wrong HTTP
  Basic credentials), ``request.unauthorized`` (an organizationId not granted to the token),
  ``not.found`` (unknown session, or no file with that clientId in it), ``not.unique`` (a
  clientId or E57 object id added twice to one session), ``quota.exceeded`` (see ``quota``),
  ``error.internal`` (injected faults; unexpected bugs).
* Clients should map by ``extensions.code``, not by HTTP status.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "INTERNAL",
    "INVALID",
    "NOT_FOUND",
    "NOT_UNIQUE",
    "QUOTA_EXCEEDED",
    "UNAUTHENTICATED",
    "UNAUTHORIZED",
    "ApiError",
]

INVALID: Final = "request.invalid"
"""GraphQL validation, bad arguments, state-machine violations, a refused completion; also HTTP
400 for a body that is not a GraphQL request."""
UNAUTHENTICATED: Final = "request.unauthenticated"
"""HTTP 401: no or wrong ``Authorization: Basic`` credentials."""
UNAUTHORIZED: Final = "request.unauthorized"
"""An organizationId not granted to the token."""
INTERNAL: Final = "error.internal"
"""Injected faults, a completion already in progress, storage failures, unexpected bugs."""
NOT_FOUND: Final = "not.found"
"""An unknown session, or no file with that clientId in it."""
NOT_UNIQUE: Final = "not.unique"
"""A clientId or E57 object id added twice to one session."""
QUOTA_EXCEEDED: Final = "quota.exceeded"
"""The organization has as many models as its quota allows."""


class ApiError(Exception):
    """A GraphQL error with ``extensions.code`` (one of the codes in the module docstring)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
