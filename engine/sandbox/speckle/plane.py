"""The Speckle control plane's front: its routes, and the order at the door of each.

Rules this module keeps, each one the real server's unless marked (``packages/server/app.ts``):

* **Routes.** ``POST /graphql`` (:mod:`.http`); ``GET /graphql``, the subscription socket
  (:mod:`.live`; v3 only, the only API with a subscription the sandbox serves; the socket server
  takes the HTTP upgrade before express, so neither the limiter nor the token check applies to
  it: ``buildApolloSubscriptionServer``); for the public server's APIs (v2, legacy),
  ``POST /api/file/{fileType}/{projectId}[/{modelName}]`` (:mod:`.rest`; app.speckle.systems
  has none: "the old REST upload is gone").
* **Order at the door** (the express middleware order of ``init()``): the rate limiter first
  (:mod:`.ratelimit`; ``createRateLimiterMiddleware`` comes before ``authContextMiddleware``),
  then the token: no ``Authorization`` at all is an anonymous caller (``createAuthContextFromToken``
  lets it through; the resolvers refuse what it may not do), one that names no configured token
  is HTTP 403 ``{"error": "Your token is not valid."}`` before any GraphQL runs. The header's
  first ``Bearer `` is removed (``getTokenFromRequest``), so ``Basic x`` is an invalid token.
* **Fault injection** (sandbox rule): with ``rate_limit_every``, every N-th ``POST /graphql``
  (counted from 1) gets the real 429 with ``Retry-After: <retry_after>``.
* A request that passes the limiter carries ``X-RateLimit-Remaining``, whatever the answer
  (``createRateLimiterMiddleware`` sets it before the next middleware runs).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from time import monotonic
from types import MappingProxyType
from typing import Any, Generic, TypeVar, overload

from aiohttp import web

from engine.sandbox.blobstore import BlobStore
from engine.sandbox.responses import json_response
from engine.sandbox.speckle.config import SpeckleSandboxConfig
from engine.sandbox.speckle.errors import INVALID_TOKEN_BODY
from engine.sandbox.speckle.fileuploads import FileUploadResolvers
from engine.sandbox.speckle.http import run_request
from engine.sandbox.speckle.live import handle_socket, ingestion_updates
from engine.sandbox.speckle.ratelimit import (
    GRAPHQL_ACTION,
    RateLimiter,
    rate_limited_response,
    source_of,
)
from engine.sandbox.speckle.records import (
    BlobRecord,
    Caller,
    Info,
    IngestionRecord,
    ModelRecord,
    StatusSnapshot,
    VersionRecord,
)
from engine.sandbox.speckle.rest import handle_legacy_upload
from engine.sandbox.speckle.schema import build_schema
from engine.sandbox.speckle.state import user_id_of

__all__ = ["SpecklePlane"]

_V = TypeVar("_V")
Handler = Callable[[web.Request, Caller], Awaitable[web.StreamResponse]]


class _ReadOnly(Generic[_V]):
    """A read-only view (for tests) of the plane's dict attribute of that name with a ``_``."""

    def __set_name__(self, owner: type, name: str) -> None:
        self._attribute = f"_{name}"

    @overload
    def __get__(self, obj: None, owner: type) -> _ReadOnly[_V]: ...
    @overload
    def __get__(self, obj: object, owner: type) -> Mapping[str, _V]: ...
    def __get__(self, obj: object | None, owner: type) -> _ReadOnly[_V] | Mapping[str, _V]:
        if obj is None:
            return self
        return MappingProxyType(getattr(obj, self._attribute))


class SpecklePlane(FileUploadResolvers):
    """The Speckle control plane: ``register(app)`` adds its routes.

    Sizes in bytes, times in seconds. ``clock`` (monotonic seconds) drives ingestion progress and
    the rate limiter. The mappings it exposes (``projects``, ``models``, ``blobs``,
    ``ingestions``, ``versions``, ``calls``, ``ingested_md5``) are read-only views for tests.
    """

    projects = _ReadOnly[Mapping[str, Any]]()
    models = _ReadOnly[ModelRecord]()
    blobs = _ReadOnly[BlobRecord]()  # by fileId
    ingestions = _ReadOnly[IngestionRecord]()  # ingestions (v3) and file uploads (v2)
    versions = _ReadOnly[VersionRecord]()

    def __init__(
        self,
        config: SpeckleSandboxConfig | None,
        store: BlobStore,
        *,
        clock: Callable[[], float] = monotonic,
    ) -> None:
        super().__init__(config if config is not None else SpeckleSandboxConfig(), store, clock)
        resolvers = self._resolvers()
        resolvers["ModelIngestion"] = {"statusData": self._ingestion_status_data}
        resolvers["Subscription"] = self._subscriptions()
        self._schema = build_schema(self.config.api, self.config.status_interface, resolvers)
        rate = self.config.rate_limit_per_second
        self._limiter = None if rate is None else RateLimiter(rate, self.config.rate_limit_burst)
        self._operations: Counter[str] = Counter()
        self._http: Counter[str] = Counter()

    def __repr__(self) -> str:
        return (
            f"SpecklePlane({self.config.api}, projects={len(self._projects)}, "
            f"models={len(self._models)}, blobs={len(self._blobs)}, "
            f"ingestions={len(self._ingestions)}, versions={len(self._versions)}, "
            f"requests={self._http['requests']})"
        )

    def _subscriptions(self) -> dict[str, Any]:
        """The ``Subscription`` fields' subscribe functions (:mod:`.live`)."""

        async def subscribe(_root: Any, info: Info, input: Mapping[str, Any]) -> Any:
            return await ingestion_updates(self, info, input)

        return {"projectModelIngestionUpdated": subscribe}

    # ---- what tests look at ----------------------------------------------------------------------

    @property
    def calls(self) -> Mapping[str, int]:
        """How often each resolver ran (errors included): ``generateUploadUrl``,
        ``startFileIngestion``, ``modelMutations.create``, ``project``, ``project.ingestion``, …"""
        return MappingProxyType(self._calls)

    @property
    def ingested_md5(self) -> Mapping[str, str]:
        """MD5 hex of each registered blob, by ``fileId`` (``""`` if the store could not tell)."""
        return MappingProxyType(
            {b.file_id: b.md5 or "" for b in self._blobs.values() if b.status == "completed"}
        )

    async def ingestion_status(self, ingestion_id: str) -> StatusSnapshot:
        """The status a query would see now (deciding the verdict if it is due)."""
        return await self._status(self._ingestions[ingestion_id])

    def stats(self) -> dict[str, Any]:
        """Counters, JSON-serialisable: HTTP outcomes, resolver calls, operations, objects."""
        ingestion_states: Counter[str] = Counter()
        for record in self._ingestions.values():
            snapshot = self._known_status(record)
            ingestion_states[snapshot.status] += 1
        return {
            "api": self.config.api,
            "requests": self._http["requests"],
            "rate_limited": self._http["rate_limited"],
            "unauthenticated": self._http["unauthenticated"],
            "bad_requests": self._http["bad_requests"],
            "websockets": self._http["websockets"],
            "subscriptions": self._http["subscriptions"],
            "rest_uploads": self._http["rest_uploads"],
            "calls": dict(self._calls),
            "operations": dict(self._operations),
            "projects": len(self._projects),
            "models": len(self._models),
            "blobs": dict(Counter(b.status for b in self._blobs.values())),
            "ingestions": dict(ingestion_states),
            "versions": len(self._versions),
        }

    # ---- HTTP ------------------------------------------------------------------------------------

    def register(self, app: web.Application) -> None:
        """Add the plane's routes to ``app`` (see the module docstring)."""
        app.router.add_post("/graphql", self._door(self._graphql, GRAPHQL_ACTION))
        if self.config.api == "v3":

            async def socket(request: web.Request) -> web.StreamResponse:
                # The socket server answers the HTTP upgrade itself, before express: no door.
                return await handle_socket(self, request)

            app.router.add_get("/graphql", socket)
        else:

            async def upload(request: web.Request, caller: Caller) -> web.StreamResponse:
                return await handle_legacy_upload(self, request, caller)

            door = self._door(upload, "ALL_REQUESTS")
            app.router.add_post("/api/file/{fileType}/{projectId}", door)
            app.router.add_post("/api/file/{fileType}/{projectId}/{modelName}", door)

    def _door(
        self, handler: Handler, action: str
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        """``handler`` behind the rate limiter and the token check, in the server's order."""

        async def at_the_door(request: web.Request) -> web.StreamResponse:
            self._http["requests"] += 1
            header = request.headers.get("Authorization")
            refused, remaining = self._limit(action, source_of(header, request.remote))
            if refused is not None:
                return refused
            caller = self.authenticate(header)
            if caller is None:
                self._http["unauthenticated"] += 1
                response: web.StreamResponse = json_response(INVALID_TOKEN_BODY, status=403)
            else:
                response = await handler(request, caller)
            if remaining is not None and not response.prepared:
                response.headers["X-RateLimit-Remaining"] = str(remaining)
            return response

        return at_the_door

    def _limit(self, action: str, source: str) -> tuple[web.Response | None, int | None]:
        """A 429 if the request is refused, else ``None``; and the points left (if limited)."""
        every = self.config.rate_limit_every
        if action == GRAPHQL_ACTION and every is not None:
            self._http["graphql_posts"] += 1
            if self._http["graphql_posts"] % every == 0:
                self._http["rate_limited"] += 1
                return rate_limited_response(round(self.config.retry_after * 1000)), None
        if self._limiter is None:
            return None, None
        outcome = self._limiter.consume(action, source, self._clock())
        if not outcome.allowed:
            self._http["rate_limited"] += 1
            return rate_limited_response(outcome.ms_before_next), None
        return None, outcome.remaining

    def authenticate(self, header: str | None) -> Caller | None:
        """The caller an ``Authorization`` header names: anonymous without one, ``None`` for a
        token that is not valid."""
        if not header:
            return Caller(frozenset())
        token = header.replace("Bearer ", "", 1)
        if token.startswith("Bearer "):
            token = token.split(" ")[1]
        projects = self.config.tokens.get(token)
        return None if projects is None else Caller(frozenset(projects), user_id_of(token))

    async def _graphql(self, request: web.Request, caller: Caller) -> web.Response:
        body = await request.read()
        status, payload = await run_request(
            self._schema, body, request.content_type, caller, self._operations
        )
        if status == 400:
            self._http["bad_requests"] += 1
        return json_response(payload, status=status)

    def count(self, what: str) -> None:
        """Count an event of the plane's other routes (``websockets``, ``rest_uploads``…)."""
        self._http[what] += 1

    @property
    def schema(self) -> Any:
        """The GraphQL schema client documents run against."""
        return self._schema

    # ---- ingestion status ------------------------------------------------------------------------

    async def _ingestion_status_data(
        self, parent: Mapping[str, Any], _info: Info
    ) -> dict[str, Any]:
        if "statusData" in parent:  # the mutation's own answer, or a subscription's event
            return dict(parent["statusData"])
        snapshot = await self._status(self._ingestions[parent["id"]])
        return snapshot.to_graphql()
