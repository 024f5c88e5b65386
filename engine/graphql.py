"""GraphQL over HTTP for the control planes: the one place their failures are translated.

Rules:
- a request is retried (full-jitter backoff, ``Retry-After`` honoured) on connection errors,
  timeouts, HTTP 429 and 5xx, and on GraphQL errors whose code the provider marks transient;
  ``retry=False`` (for calls that are not idempotent) retries only an HTTP 429, which the
  server refuses before running anything;
- every other failure becomes the ``RemoteError`` subclass the provider's ``classify`` picks,
  with one readable line: the operation, the platform's message and code;
- a body that is not GraphQL JSON (an HTML error page, a proxy's text) is reported with its
  status and its title or first line, never as a parse traceback; with HTTP 200 it is a
  ``ServiceError`` at once (a wrong URL or a portal page does not heal on retry);
- credentials are sent in a header only; every message is redacted;
- answers are read with ``dig`` / ``need_*``: a missing or mistyped field is a ``ServiceError``
  naming the operation and the field, never a ``KeyError``.
"""

from __future__ import annotations

import html
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from engine.clock import Clock
from engine.errors import RemoteError, ServiceError
from engine.redact import redact
from engine.retry import RetryPolicy, parse_retry_after
from engine.wait import Attempts

__all__ = [
    "Classify",
    "GraphQLClient",
    "GraphQLFailure",
    "dig",
    "need_int",
    "need_obj",
    "need_str",
    "operation_name",
]

_OP_RE = re.compile(r"\b(?:query|mutation)\s+(\w+)")
_TITLE_RE = re.compile(r"<(?:title|h1)[^>]*>(.*?)</(?:title|h1)>", re.IGNORECASE | re.DOTALL)
_TAG_RE = re.compile(r"<[^>]*>")


@dataclass(frozen=True, slots=True)
class GraphQLFailure:
    """What went wrong, handed to the provider's ``classify``."""

    operation: str
    status: int  # HTTP status
    code: str  # extensions.code of the first error ("" when none)
    message: str  # the platform's message (redacted)
    body: Any  # parsed JSON body, or None


#: Returns the error to raise, or ``None`` when the failure is transient and may be retried.
Classify = Callable[[GraphQLFailure], RemoteError | None]


def _connection_reason(exc: BaseException) -> str:
    """Why a connection failed, in a few words (``Connection refused``, ``timed out``)."""
    if isinstance(exc, TimeoutError):
        return "timed out"
    cause = exc.os_error if isinstance(exc, aiohttp.ClientConnectorError) else exc
    errno = getattr(cause, "errno", None)
    if isinstance(cause, OSError) and isinstance(errno, int) and errno > 0:
        return os.strerror(errno)
    text = " ".join(str(cause).split())
    return redact(f"{type(cause).__name__}: {text}" if text else type(cause).__name__)


def _excerpt(status: int, raw: bytes) -> str:
    """``HTTP <status>: <what the body says>``: an HTML page's title, else its first line."""
    text = raw[:4096].decode("utf-8", "replace")
    found = _TITLE_RE.search(text)
    if found:
        words = " ".join(_TAG_RE.sub(" ", html.unescape(found.group(1))).split())
        summary = f"an HTML page: {words[:120]}" if words else "an HTML page"
    else:
        lines = text.strip().splitlines()
        summary = lines[0].strip()[:120] if lines else "an empty body"
    return redact(f"HTTP {status}: {summary}")


def operation_name(document: str) -> str:
    m = _OP_RE.search(document)
    return m.group(1) if m else "graphql"


# ---- reading answers -----------------------------------------------------------------------------


def dig(data: Any, *keys: str) -> Any:
    """``data[k1][k2]...``, or ``None`` where a level is missing or not an object."""
    for key in keys:
        if not isinstance(data, Mapping):
            return None
        data = data.get(key)
    return data


def _malformed(op: str, platform: str, what: str) -> ServiceError:
    return ServiceError(f"{op}: malformed answer from {platform} ({what})")


def need_obj(value: Any, op: str, platform: str) -> dict[str, Any]:
    """``value`` as a JSON object, else a ``ServiceError``."""
    if not isinstance(value, dict):
        raise _malformed(op, platform, "expected an object")
    return value


def need_str(value: Any, op: str, platform: str, name: str) -> str:
    """``value`` as a non-empty string, else a ``ServiceError`` naming the field."""
    if not isinstance(value, str) or not value:
        raise _malformed(op, platform, f"no {name}")
    return value


def need_int(value: Any, op: str, platform: str, name: str) -> int:
    """``value`` as an integer (GraphQL ``Long`` may come as a string), else a ``ServiceError``."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise _malformed(op, platform, f"{name} is not a number")
    try:
        return int(value)
    except ValueError:
        raise _malformed(op, platform, f"{name} is not a number") from None


class GraphQLClient:
    """Posts GraphQL documents to one endpoint with one set of credentials."""

    def __init__(
        self,
        http: aiohttp.ClientSession,
        endpoint: str,
        *,
        headers: Mapping[str, str],
        classify: Classify,
        policy: RetryPolicy,
        clock: Clock,
        on_response: Callable[[Mapping[str, str]], None] | None = None,
    ) -> None:
        self._http = http
        self.endpoint = endpoint
        self._headers = {"Content-Type": "application/json", **headers}
        self._classify = classify
        self._policy = policy
        self._clock = clock
        self._on_response = on_response  # sees every answer's headers (rate-limit pacing)
        self.calls: list[str] = []  # operation names in the order they were sent

    def __repr__(self) -> str:
        return f"<GraphQLClient {self.endpoint} calls={len(self.calls)}>"

    async def execute(
        self,
        document: str,
        variables: Mapping[str, Any] | None = None,
        *,
        retry: bool = True,
    ) -> dict[str, Any]:
        """Run one operation and return its ``data``; raise a ``RemoteError`` on failure."""
        op = operation_name(document)
        payload = orjson.dumps({"query": document, "variables": dict(variables or {})})
        async for attempt in Attempts(self._policy, self._clock):
            self.calls.append(op)
            outcome = await self._attempt(op, payload)
            if isinstance(outcome, dict):
                return outcome
            if isinstance(outcome, RemoteError):
                raise outcome
            failure, attempt.retry_after = outcome
            if attempt.last or (not retry and failure.status != 429):
                n = attempt.number
                raise ServiceError(
                    f"{op}: {failure.message}"
                    + (f" (gave up after {n} attempts)" if n > 1 else ""),
                    code=failure.code,
                )
        raise AssertionError("unreachable")  # pragma: no cover

    async def _attempt(
        self, op: str, payload: bytes
    ) -> dict[str, Any] | RemoteError | tuple[GraphQLFailure, float | None]:
        """The data, a final error, or a transient failure with the server's wait hint."""
        try:
            async with self._http.post(self.endpoint, data=payload, headers=self._headers) as r:
                status = r.status
                raw = await r.read()
                retry_after = parse_retry_after(r.headers.get("Retry-After"))
                if self._on_response is not None:
                    self._on_response(r.headers)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            text = f"cannot reach {redact(self.endpoint)}: {_connection_reason(exc)}"
            return GraphQLFailure(op, 0, "", text, None), None
        try:
            body: Any = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            body = None
        if status == 200 and not isinstance(body, dict):
            # A proxy's page, a login portal, a wrong URL: not GraphQL, and no retry will fix it.
            return ServiceError(
                f"{op}: malformed response from {redact(self.endpoint)}: not a GraphQL JSON "
                f"object ({_excerpt(status, raw)})"
            )
        errors = body.get("errors") if isinstance(body, dict) else None
        if status == 200 and isinstance(body, dict) and not errors:
            data = body.get("data")
            if isinstance(data, dict):
                return data
            return ServiceError(f"{op}: malformed response from {self.endpoint} (no data)")
        code, message = "", ""
        if isinstance(errors, list) and errors and isinstance(errors[0], dict):
            first = errors[0]
            message = str(first.get("message", ""))
            ext = first.get("extensions")
            if isinstance(ext, dict):
                code = str(ext.get("code", ""))
        elif isinstance(body, dict) and isinstance(body.get("error", body.get("err")), str):
            message = str(body.get("error", body.get("err")))
        elif isinstance(body, dict) and isinstance(body.get("error"), dict):
            # A REST-style error ({"error": {"message", "code"}}), e.g. a 429 RATE_LIMIT_ERROR
            message = str(dig(body, "error", "message") or "")
            code = str(dig(body, "error", "code") or "")
        else:
            message = _excerpt(status, raw)
        failure = GraphQLFailure(op, status, code, redact(message), body)
        if status in (0, 429) or status >= 500:
            return failure, retry_after
        mapped = self._classify(failure)
        return (failure, retry_after) if mapped is None else mapped
