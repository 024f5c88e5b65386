"""What Matterport refuses, said once: GraphQL failures and credentials.

Rules:
- errors: ``extensions.code`` (seed ``001``) maps to one ``RemoteError`` subclass
  (``classify``) and fails fast, except ``error.internal`` (and HTTP 429/5xx), which
  ``GraphQLClient`` retries; every message is one line that names the operation;
- credentials: an API token, its id the Basic-auth user name and its secret the password, sent
  preemptively in the ``Authorization`` header only; the secret never appears in a ``repr``, a
  message or the journal.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from engine.errors import (
    AuthenticationError,
    ConflictError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    QuotaExceededError,
    RemoteError,
)
from engine.graphql import GraphQLFailure

__all__ = ["REPEAT_REFUSED", "TRANSIENT_CODES", "MatterportCredentials", "classify"]

#: the environment variables ``from_env`` reads: the token's id, then its secret
_ENV_VARS: Final = ("MATTERPORT_TOKEN_ID", "MATTERPORT_TOKEN_SECRET")
_SET_BOTH: Final = "set MATTERPORT_TOKEN_ID and MATTERPORT_TOKEN_SECRET"


@dataclass(frozen=True, slots=True)
class MatterportCredentials:
    """An API token: its id is the Basic-auth user name, its secret the password."""

    token_id: str
    token_secret: str = field(repr=False)

    def __post_init__(self) -> None:
        if not self.token_id or not self.token_secret:
            raise AuthenticationError(f"Matterport credentials are empty: {_SET_BOTH}")
        if ":" in self.token_id:
            raise AuthenticationError("the Matterport token id must not contain ':'")
        if any(c in value for value in (self.token_id, self.token_secret) for c in "\r\n\0"):
            raise AuthenticationError("Matterport credentials must not contain line breaks")

    def __repr__(self) -> str:
        return f"MatterportCredentials(token_id={self.token_id!r}, token_secret='[redacted]')"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> MatterportCredentials:
        """Read ``MATTERPORT_TOKEN_ID`` and ``MATTERPORT_TOKEN_SECRET`` (``os.environ`` by
        default); raise ``AuthenticationError`` when either is missing."""
        env = os.environ if environ is None else environ
        values = [env.get(name, "").strip() for name in _ENV_VARS]
        missing = [name for name, value in zip(_ENV_VARS, values, strict=True) if not value]
        if missing:
            raise AuthenticationError(
                f"no Matterport credentials ({' and '.join(missing)} unset): {_SET_BOTH}"
            )
        token_id, token_secret = values
        return cls(token_id, token_secret)

    @property
    def authorization(self) -> str:
        """The ``Authorization`` header value (sent preemptively with every request)."""
        pair = f"{self.token_id}:{self.token_secret}".encode()
        return "Basic " + base64.b64encode(pair).decode("ascii")


#: extensions.code -> the error raised at once (``error.internal`` is absent: it is retried)
_CODE_ERRORS: Final[Mapping[str, type[RemoteError]]] = {
    "request.unauthenticated": AuthenticationError,
    "request.unauthorized": PermissionDeniedError,
    "request.invalid": InvalidRequestError,
    "not.found": NotFoundError,
    "not.unique": ConflictError,
    "quota.exceeded": QuotaExceededError,
}
TRANSIENT_CODES: Final = frozenset({"error.internal"})
#: how the server refuses a mutation that already took effect (a retry after a lost answer)
REPEAT_REFUSED: Final = (InvalidRequestError, ConflictError)


def classify(failure: GraphQLFailure) -> RemoteError | None:
    """The error for a failed Matterport call, or ``None`` to retry it (``error.internal``).

    HTTP 429/5xx never reach here (``GraphQLClient`` retries them)."""
    op, code = failure.operation, failure.code
    if code in TRANSIENT_CODES:
        return None
    message = " ".join(failure.message.split()) or f"HTTP {failure.status}"
    if code == "request.unauthenticated" or (not code and failure.status in (401, 403)):
        return AuthenticationError(
            f"{op}: Matterport refused the credentials: check MATTERPORT_TOKEN_ID/SECRET "
            f"({message})",
            code=code,
        )
    if code == "request.unauthorized":
        return PermissionDeniedError(
            f"{op}: not allowed with this token: {message} ({code})", code=code
        )
    if code == "quota.exceeded":
        return QuotaExceededError(
            f"{op}: the account's quota is exceeded: {message} ({code})", code=code
        )
    kind = _CODE_ERRORS.get(code, InvalidRequestError)
    return kind(f"{op}: {message}" + (f" ({code})" if code else ""), code=code)
