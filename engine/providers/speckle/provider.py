"""The Speckle client: the server, the token and the waiting limits, shared by its targets.

Rules: a ``Speckle`` holds configuration (validated at construction) and, per uploader that
uses it, one ``server.SpeckleSession`` (what the server offers, the rate-limit pace, the
live-status connections, each closed when its last file stops waiting); everything that waits,
sleeps or talks to the network comes from the services of the ``Uploader`` it is handed
(``engine.target.HasServices``).
"""

from __future__ import annotations

import os
from typing import Any
from weakref import WeakKeyDictionary

from engine.errors import ConfigError
from engine.models import FileInfo
from engine.providers.speckle.documents import DEFAULT_SERVER
from engine.providers.speckle.errors import SpeckleCredentials
from engine.providers.speckle.results import SpeckleResult
from engine.providers.speckle.server import API_CHOICES, SpeckleSession
from engine.providers.speckle.target import ModelRef, SpeckleFileTarget
from engine.target import HasServices, Services

__all__ = ["Speckle"]


class Speckle:
    """Uploads files into Speckle models (see ``engine.providers.speckle`` for the flow).

    server:             base URL; the GraphQL endpoint is ``server + "/graphql"``, the
                        live status ``ws(s)://…/graphql``.
    size_limit:         bytes; larger files are refused up front (5 GiB, and the server's own
                        ``blobSizeLimitBytes``, are the limit in any case).
    poll_interval:      seconds between ingestion status queries (growing up to ten times
                        this; with a live subscription, a poll every thirty of them).
    ingestion_deadline: seconds to wait for an ingestion to end (a rerun keeps waiting on it).
    api:                ``auto`` (ask the server), or force ``v3`` (the ingestion API), ``v2``
                        (``startFileImport``) or ``rest`` (the legacy multipart upload).
    retry_after_cap:    the longest ``Retry-After`` (seconds) honoured as the server asks.

    Waiting (polls, backoff) uses the uploader's clock (``engine.clock.FakeClock`` in tests).
    """

    def __init__(
        self,
        credentials: SpeckleCredentials,
        *,
        server: str = DEFAULT_SERVER,
        size_limit: int | None = None,
        poll_interval: float = 1.0,
        ingestion_deadline: float = 1800.0,
        api: str = "auto",
        retry_after_cap: float = 120.0,
    ) -> None:
        server = server.rstrip("/")
        if not server.startswith(("http://", "https://")):
            raise ConfigError(f"server must be an http(s) URL, got {server!r}")
        if not poll_interval > 0:
            raise ConfigError(f"poll_interval must be positive, got {poll_interval}")
        if not ingestion_deadline > 0:
            raise ConfigError(f"ingestion_deadline must be positive, got {ingestion_deadline}")
        if size_limit is not None and size_limit < 1:
            raise ConfigError(f"size_limit must be positive, got {size_limit}")
        if api not in API_CHOICES:
            raise ConfigError(f"api must be one of {', '.join(API_CHOICES)}, got {api!r}")
        if not retry_after_cap >= 0:
            raise ConfigError(f"retry_after_cap must not be negative, got {retry_after_cap}")
        self.credentials = credentials
        self.server = server
        self.endpoint = server + "/graphql"
        self.ws_endpoint = "ws" + server.removeprefix("http") + "/graphql"
        self.poll_interval = poll_interval
        self.ingestion_deadline = ingestion_deadline
        self.size_limit = size_limit
        self.api = api
        self.retry_after_cap = retry_after_cap
        self._sessions: WeakKeyDictionary[Any, SpeckleSession] = WeakKeyDictionary()

    def __repr__(self) -> str:
        return f"<Speckle {self.server} api={self.api}>"

    def session(self, services: Services) -> SpeckleSession:
        """What this client's files share within the uploader whose ``services`` these are."""
        session = self._sessions.get(services)
        if session is None:
            session = SpeckleSession(services, self.ws_endpoint, self.credentials.token)
            self._sessions[services] = session
        return session

    def target(
        self, *, project_id: str, model_name: str | None = None, model_id: str | None = None
    ) -> SpeckleFileTarget:
        """A target for one file, for ``Uploader.upload`` or ``Uploader.upload_many``."""
        return SpeckleFileTarget(self, project_id=project_id, model=ModelRef(model_name, model_id))

    async def upload(
        self,
        uploader: HasServices,
        path: str | os.PathLike[str],
        *,
        project_id: str,
        model_name: str | None = None,
        model_id: str | None = None,
    ) -> SpeckleResult:
        """Upload ``path`` into the model (default: one named after the file's stem, created if
        needed); return once its version exists. Raises one ``UploadError``."""
        services = uploader.services
        started = services.clock.monotonic()
        target = self.target(project_id=project_id, model_name=model_name, model_id=model_id)
        result = await services.transfer(FileInfo.of(path), target)
        return SpeckleResult.from_upload(result, services.clock.monotonic() - started)
