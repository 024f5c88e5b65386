"""The Matterport Import API's front: ``POST /api/import/graph`` on the sandbox's aiohttp app.

Rules this module keeps:

* **HTTP.** Every answer is JSON ``{"data": …, "errors": [{message, locations?, path?,
  extensions: {code}}]}``. GraphQL problems (syntax, unknown field, wrong type, missing variable)
  and every resolver error are HTTP 200. A missing or wrong ``Authorization: Basic
  base64(id:secret)`` is HTTP 401 with ``WWW-Authenticate: Basic`` and the same JSON shape, code
  ``request.unauthenticated``, before the document is looked at; a body that is not a JSON object
  with a string ``query`` is HTTP 400, code ``request.invalid``. Clients should map by
  ``extensions.code``, not by status.
* **Users.** A token's user id is 11 alphanumerics derived from the token id (SHA-256), so the
  same token is always the same user.
* **Faults** strike per root field call (see :class:`.config.InjectedFaults`). By default a fault
  strikes before the operation does anything; with ``fail_after_effect`` it strikes after, so
  the effect happened and only the answer is lost. Every call counts in ``calls`` and
  ``call_log``, refused and faulted ones included.
* **Bugs are answers, not crashes:** an unexpected exception in a resolver is logged and answered
  as ``error.internal`` ("Internal server error").
* **Shutdown.** At app cleanup a running E57 check is abandoned and its thread joined.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import inspect
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final

import anyio
import graphql
import orjson
from aiohttp import web
from graphql import GraphQLError

from engine.sandbox.blobstore import BlobStore
from engine.sandbox.matterport.config import (
    ENDPOINT,
    OPERATIONS,
    InjectedFaults,
    MatterportSandboxConfig,
)
from engine.sandbox.matterport.errors import INTERNAL, INVALID, UNAUTHENTICATED, ApiError
from engine.sandbox.matterport.records import Caller, ImportSessionRecord
from engine.sandbox.matterport.resolvers import Handler, ImportResolvers
from engine.sandbox.matterport.schema import build_schema
from engine.sandbox.matterport.sessions import ALNUM
from engine.sandbox.responses import json_response

__all__ = ["MatterportPlane"]

_WAIT_POLL: Final = 0.01  # seconds between checks in wait_processed

_log = logging.getLogger("engine.sandbox.matterport")


class MatterportPlane(ImportResolvers):
    """The Import API over one :class:`BlobStore` (see the package docstring for the rules).

    Register it on the sandbox's aiohttp app with :meth:`register`. For tests: ``sessions``
    (id → :class:`ImportSessionRecord`), ``calls`` (root field name → calls, including refused
    and faulted ones), ``call_log`` (root field names in call order), ``errors`` (code → errors
    answered), :meth:`session`, :meth:`md5_of`, :meth:`wait_processed`.
    """

    def __init__(self, config: MatterportSandboxConfig | None, store: BlobStore) -> None:
        super().__init__(config if config is not None else MatterportSandboxConfig(), store)
        self.calls: Counter[str] = Counter()
        self.call_log: list[str] = []
        self.errors: Counter[str] = Counter()
        self.http_requests = 0
        self._faults = InjectedFaults(self.config)
        self._credentials = {token_id: secret for token_id, secret in self.config.credentials}
        self._schema = build_schema()
        self._install_resolvers()

    def __repr__(self) -> str:
        models = sum(1 for s in self.sessions.values() if s.model_id)
        return (
            f"MatterportPlane(sessions={len(self.sessions)}, models={models}, "
            f"calls={sum(self.calls.values())}, errors={sum(self.errors.values())})"
        )

    # ---- wiring ----------------------------------------------------------------------------------

    def register(self, app: web.Application) -> None:
        """Serve ``POST /api/import/graph`` on ``app``; stop the E57 checks at app cleanup."""
        app.router.add_post(ENDPOINT, self.handle)
        app.on_cleanup.append(self._on_cleanup)

    async def _on_cleanup(self, _app: web.Application) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Abandon running E57 checks and wait for the worker thread to stop (quick)."""
        await self._checks.aclose()

    def stats(self) -> dict[str, Any]:
        """JSON-serialisable counters for ``/_sandbox/stats``."""
        for session in self.sessions.values():
            self._apply_check(session)
        return {
            "http_requests": self.http_requests,
            "sessions": len(self.sessions),
            "committed": sum(1 for s in self.sessions.values() if s.committed),
            "models": sum(1 for s in self.sessions.values() if s.model_id),
            "failed": sum(1 for s in self.sessions.values() if s.failure),
            "files": sum(len(s.files) for s in self.sessions.values()),
            "calls": dict(sorted(self.calls.items())),
            "errors": dict(sorted(self.errors.items())),
            "injected_faults": dict(sorted(self._faults.injected.items())),
        }

    # ---- accessors for tests ---------------------------------------------------------------------

    def session(self, session_id: str) -> ImportSessionRecord:
        """The session, with any finished E57 check applied. KeyError if unknown."""
        session = self.sessions[session_id]
        self._apply_check(session)
        return session

    def md5_of(self, session_id: str, client_id: str) -> str | None:
        """MD5 hex of the assembled file, once the commit check has run (None before)."""
        return self.session(session_id).files[client_id].md5

    async def wait_processed(self, session_id: str) -> ImportSessionRecord:
        """Wait until the session has a modelId or a failure (bound it with anyio.fail_after)."""
        while True:
            session = self.session(session_id)
            if session.model_id is not None or session.failure is not None:
                return session
            await anyio.sleep(_WAIT_POLL)

    # ---- HTTP ------------------------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.Response:
        """The aiohttp handler for ``POST /api/import/graph``."""
        self.http_requests += 1
        caller = self._authenticate(request.headers.get("Authorization"))
        if caller is None:
            return self._refuse(
                401,
                UNAUTHENTICATED,
                "Missing or invalid credentials: send Authorization: Basic base64(tokenId:secret)",
                {"WWW-Authenticate": 'Basic realm="Matterport Import API"'},
            )
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return self._refuse(400, INVALID, "The request body is not JSON")
        if not isinstance(body, dict) or not isinstance(body.get("query"), str):
            return self._refuse(
                400, INVALID, "The body must be a JSON object with a 'query' string"
            )
        variables = body.get("variables")
        operation_name = body.get("operationName")
        if variables is not None and not isinstance(variables, dict):
            return self._refuse(400, INVALID, "'variables' must be a JSON object")
        if operation_name is not None and not isinstance(operation_name, str):
            return self._refuse(400, INVALID, "'operationName' must be a string")
        result = await graphql.graphql(
            self._schema,
            body["query"],
            context_value=caller,
            variable_values=variables,
            operation_name=operation_name,
        )
        payload: dict[str, Any] = {"data": result.data}
        if result.errors:
            payload["errors"] = [self._format_error(error) for error in result.errors]
        return json_response(payload)

    def _authenticate(self, header: str | None) -> Caller | None:
        pair = _parse_basic(header)
        if pair is None:
            return None
        token_id, secret = pair
        expected = self._credentials.get(token_id)
        if expected is None or not hmac.compare_digest(expected.encode(), secret.encode()):
            return None
        return Caller(token_id=token_id, user_id=_user_id(token_id))

    def _refuse(
        self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None
    ) -> web.Response:
        self.errors[code] += 1
        payload = {"data": None, "errors": [{"message": message, "extensions": {"code": code}}]}
        return json_response(payload, status=status, headers=headers)

    def _format_error(self, error: GraphQLError) -> dict[str, Any]:
        """The one place GraphQL errors get their ``extensions.code``."""
        cause = error.original_error
        if isinstance(cause, ApiError):
            code, message = cause.code, cause.message
        elif error.path is None:
            code, message = INVALID, error.message  # syntax, validation, variable coercion
        else:
            code, message = INTERNAL, "Internal server error"
            _log.error("bug in the Matterport plane at %s", error.path, exc_info=cause or error)
        self.errors[code] += 1
        formatted: dict[str, Any] = {"message": message}
        if error.locations:
            formatted["locations"] = [
                {"line": loc.line, "column": loc.column} for loc in error.locations
            ]
        if error.path is not None:
            formatted["path"] = list(error.path)
        formatted["extensions"] = {"code": code}
        return formatted

    # ---- resolvers -------------------------------------------------------------------------------

    def _install_resolvers(self) -> None:
        query = self._schema.query_type
        mutation = self._schema.mutation_type
        assert query is not None and mutation is not None
        handlers = self._handlers()
        assert set(handlers) == set(OPERATIONS)
        for root in (query, mutation):
            for name, root_field in root.fields.items():
                root_field.resolve = self._root_resolver(name, handlers[name])

    def _root_resolver(self, name: str, handler: Handler) -> Callable[..., Awaitable[Any]]:
        async def resolve(_root: object, info: Any, **args: Any) -> Any:
            # info is a GraphQLResolveInfo (generic from graphql-core 3.3 on); context: Caller
            self.calls[name] += 1
            self.call_log.append(name)
            after = self.config.fail_after_effect
            struck = self._faults.strike(name)
            if struck and not after:
                raise ApiError(INTERNAL, f"Internal server error in {name} (injected)")
            result = handler(args, info.context)
            if inspect.isawaitable(result):
                result = await result
            if struck:
                raise ApiError(
                    INTERNAL, f"Internal server error in {name} (injected, after effect)"
                )
            return result

        return resolve


def _parse_basic(header: str | None) -> tuple[str, str] | None:
    if header is None:
        return None
    scheme, _, encoded = header.strip().partition(" ")
    if scheme.lower() != "basic" or not encoded:
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    token_id, colon, secret = decoded.partition(":")
    return (token_id, secret) if colon else None


def _user_id(token_id: str) -> str:
    digest = hashlib.sha256(b"matterport-user:" + token_id.encode()).digest()
    return "".join(ALNUM[b % len(ALNUM)] for b in digest[:11])
