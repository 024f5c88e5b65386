"""What a Speckle server offers, learned once per uploader, and what its files share.

Three APIs carry a file into a model version (``ServerApi.api``):

- ``v3``: ``generateUploadUrl`` (with ``additionalRequestHeaders``), one PUT,
  ``startFileIngestion``, ``Project.ingestion`` (app.speckle.systems; the ingestion guide);
- ``v2``: ``generateUploadUrl``, one PUT, ``startFileImport``, the model's ``uploads`` and
  their ``convertedStatus`` (a server built from the public speckle-server source:
  ``assets/fileuploads/typedefs/fileuploads.graphql``);
- ``rest``: no presigned upload at all: the legacy multipart ``POST /api/file/autodetect/…``
  (``modules/fileuploads/rest/router.ts``), then the model's ``uploads`` as for v2.

Rules:
- ``detect`` asks once (``SpeckleServer``: ``serverInfo { version configuration {
  blobSizeLimitBytes } }`` and the introspection of the four types whose fields tell the APIs
  apart; the server runs Apollo with ``introspection: true``, ``app.ts``). Where that document
  fails validation (no ``blobSizeLimitBytes``, or introspection refused) the introspection and
  the version are asked apart, each tolerated missing. Without introspection the version
  decides (the SDKs: the ingestion API from 3.0.3, ``generateUploadUrl`` from 2.25.8); an
  unreadable version (a server built from source says ``dev``) is tried as v3, and the client
  steps down when a v3 document fails validation (nothing ran);
- ``--speckle-api`` / ``Speckle(api=...)`` other than ``auto`` forces the API; the limit and
  the other capabilities are still read;
- a ``SpeckleSession`` is per ``Speckle`` client and per uploader (its services): the detected
  API, the ``Pacer`` every request of that server passes, and the live-status connections;
  it holds no connection of its own beyond those (``live.LivePool`` closes each when its last
  user leaves).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Final, Literal

import anyio

from engine.errors import AuthenticationError, PermissionDeniedError, RemoteError
from engine.graphql import GraphQLClient, dig
from engine.providers.speckle.documents import (
    API_CHOICES,
    API_MARKERS,
    SERVER,
    SERVER_API,
    SERVER_VERSION,
)
from engine.providers.speckle.errors import is_unsupported
from engine.providers.speckle.live import LivePool
from engine.providers.speckle.pacing import Pacer
from engine.target import Services

__all__ = [
    "API_CHOICES",
    "Api",
    "PacedGraphQL",
    "ServerApi",
    "SpeckleSession",
    "choose_api",
    "detect",
    "read_fields",
    "tolerant",
    "version_api",
]

Api = Literal["v3", "v2", "rest"]
_VERSION_RE: Final = re.compile(r"^v?(\d+)\.(\d+)(?:\.(\d+))?")


@dataclass(frozen=True, slots=True)
class ServerApi:
    """How to talk to one server. ``known``: read from the schema itself (else guessed, and
    corrected by the first document that fails validation)."""

    api: Api
    version: str = ""
    blob_limit: int | None = None  # bytes, serverInfo.configuration.blobSizeLimitBytes
    live: bool = False  # the projectModelIngestionUpdated subscription
    history: bool = True  # Model.ingestionHistory (tried until refused)
    uploads: bool = True  # Model.uploads (v2 status)
    headers: bool = True  # GenerateFileUploadUrlOutput.additionalRequestHeaders
    blob: bool = True  # Project.blob (a blob's upload status)
    known: bool = False


def read_fields(data: Mapping[str, Any]) -> dict[str, set[str]] | None:
    """Type name -> its field names from an introspection answer; ``None`` without one."""
    types = {t for t, _ in API_MARKERS.values()}
    if not any(name in data for name in types):
        return None
    out: dict[str, set[str]] = {}
    for name in types:
        fields = dig(data, name, "fields")
        out[name] = {str(dig(f, "name")) for f in fields or ()}
    return out


def version_api(version: str) -> Api | None:
    """The API a server of ``version`` has, or ``None`` when the version does not say."""
    m = _VERSION_RE.match(version.strip())
    if m is None:
        return None
    v = (int(m[1]), int(m[2]), int(m[3] or 0))
    return "v3" if v >= (3, 0, 3) else "v2" if v >= (2, 25, 8) else "rest"


def choose_api(
    fields: dict[str, set[str]] | None, version: str, limit: int | None, forced: str
) -> ServerApi:
    """The ``ServerApi`` the answers describe (``forced`` unless ``auto``). Pure."""
    if fields is None:
        guess = version_api(version) or "v3"
        api: Api = guess if forced == "auto" else forced  # type: ignore[assignment]
        return ServerApi(api, version, limit, live=api == "v3")
    has = {k: f in fields.get(t, set()) for k, (t, f) in API_MARKERS.items()}
    if has["ingestion"]:
        found: Api = "v3"
    elif has["presigned"] and has["file_import"]:
        found = "v2"
    else:
        found = "rest"
    api = found if forced == "auto" else forced  # type: ignore[assignment]
    return ServerApi(
        api,
        version,
        limit,
        live=has["live"],
        history=has["history"],
        uploads=has["uploads"],
        headers=has["headers"],
        blob=has["blob"],
        known=True,
    )


async def tolerant(
    gql: GraphQLClient, document: str, variables: Mapping[str, Any] | None = None
) -> Any:
    """The answer's ``data``, or ``None`` for any failure but credentials: a question the
    server may not be able to answer (unsupported, ``null``, ``INTERNAL_SERVER_ERROR``), asked
    once (``retry=False``: only a 429 is sent again)."""
    try:
        return await gql.execute(document, variables, retry=False)
    except (AuthenticationError, PermissionDeniedError):
        raise
    except RemoteError:
        return None


def _limit(data: Mapping[str, Any] | None) -> int | None:
    value = dig(data, "serverInfo", "configuration", "blobSizeLimitBytes")
    return value if isinstance(value, int) and value > 0 else None


async def detect(gql: GraphQLClient, forced: str) -> ServerApi:
    """Ask the server what it offers (see the module rules)."""
    data = await tolerant(gql, SERVER)
    if data is None:  # an older schema, introspection refused, a limit it cannot tell: apart
        data = await tolerant(gql, SERVER_API) or {}
        version = await tolerant(gql, SERVER_VERSION)
        data = {**data, **(version or {})}
    fields = read_fields(data)
    version_text = str(dig(data, "serverInfo", "version") or "")
    return choose_api(fields, version_text, _limit(data), forced)


class PacedGraphQL(GraphQLClient):
    """A ``GraphQLClient`` whose every operation first passes the server's ``Pacer``."""

    def __init__(self, *args: Any, pacer: Pacer, **kw: Any) -> None:
        super().__init__(*args, on_response=pacer.seen, **kw)
        self.pacer = pacer

    async def execute(
        self, document: str, variables: Mapping[str, Any] | None = None, *, retry: bool = True
    ) -> dict[str, Any]:
        await self.pacer.pause()
        return await super().execute(document, variables, retry=retry)


class SpeckleSession:
    """What the files of one ``Speckle`` client share within one uploader (module rules)."""

    def __init__(self, services: Services, ws_url: str, token: str) -> None:
        self.pacer = Pacer(services.clock)
        self.live = LivePool(services, ws_url, token)
        self._api: ServerApi | None = None
        self._lock = anyio.Lock()
        self._unsupported: set[str] = set()  # documents the server's schema refused

    def __repr__(self) -> str:
        return f"<SpeckleSession api={self._api} {self.pacer!r}>"

    async def api(self, gql: GraphQLClient, forced: str) -> ServerApi:
        """The server's API, detected by the first file that asks."""
        async with self._lock:
            if self._api is None:
                self._api = await detect(gql, forced)
            return self._api

    @property
    def server(self) -> ServerApi:
        """The server's API (once ``api`` answered)."""
        assert self._api is not None, "SpeckleSession.api() first"
        return self._api

    def learned(self, **changes: Any) -> ServerApi:
        """Correct a guess once a document told otherwise (e.g. ``headers=False``)."""
        self._api = replace(self.server, **changes)
        return self._api

    async def ask(
        self, gql: GraphQLClient, document: str, variables: Mapping[str, Any] | None = None
    ) -> Any:
        """``tolerant``, and a document the schema refused once is not sent again."""
        if document in self._unsupported:
            return None
        try:
            return await gql.execute(document, variables, retry=False)
        except (AuthenticationError, PermissionDeniedError):
            raise
        except RemoteError as exc:
            if is_unsupported(exc):
                self._unsupported.add(document)
            return None
