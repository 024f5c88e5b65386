"""The Speckle client: the server, the token and the waiting limits, shared by its targets.

Rules: a ``Speckle`` holds configuration only (validated at construction) and never a
connection; everything that waits, sleeps or talks to the network comes from the services of
the ``Uploader`` it is handed (``engine.target.HasServices``).
"""

from __future__ import annotations

import os

from engine.errors import ConfigError
from engine.models import FileInfo
from engine.providers.speckle.documents import DEFAULT_SERVER
from engine.providers.speckle.errors import SpeckleCredentials
from engine.providers.speckle.results import SpeckleResult
from engine.providers.speckle.target import ModelRef, SpeckleFileTarget
from engine.target import HasServices

__all__ = ["Speckle"]


class Speckle:
    """Uploads files into Speckle models (see ``engine.providers.speckle`` for the flow).

    server:             base URL; the GraphQL endpoint is ``server + "/graphql"``.
    size_limit:         bytes; larger files are refused up front (5 GiB is the limit in any case).
    poll_interval:      seconds between ingestion status queries (growing up to ten times this).
    ingestion_deadline: seconds to wait for an ingestion to end (a rerun keeps waiting on it).

    Waiting (polls, backoff) uses the uploader's clock (``engine.clock.FakeClock`` in tests).
    """

    def __init__(
        self,
        credentials: SpeckleCredentials,
        *,
        server: str = DEFAULT_SERVER,
        size_limit: int | None = None,
        poll_interval: float = 1.0,
        ingestion_deadline: float = 3600.0,
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
        self.credentials = credentials
        self.server = server
        self.endpoint = server + "/graphql"
        self.poll_interval = poll_interval
        self.ingestion_deadline = ingestion_deadline
        self.size_limit = size_limit

    def __repr__(self) -> str:
        return f"<Speckle {self.server}>"

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
