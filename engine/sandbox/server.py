"""The sandbox server: one aiohttp application hosting the blob store and both control planes.

Rules this module keeps:

* It runs in the caller's event loop (``AppRunner`` + a socket site) and never installs a loop;
  ``async with Sandbox(config) as sandbox`` is the whole life cycle, and leaving the block stops the
  server and removes a temporary data directory.
* The application is built completely — blob routes, admin routes, control-plane routes — before
  the runner starts (``Sandbox._build_app``); the store learns its ``base_url`` once the socket is
  bound (port 0 picks an ephemeral port).
* It shares no code with the client side (``engine/*.py``): stdlib, aiohttp, orjson and anyio only.
* Client disconnects are not errors: request bodies are read with a 1 MiB buffer, handlers swallow
  resets, and there is no access log, so a reset mid-body leaves no traceback.
* ``SandboxConfig.control_latency`` (a simulation knob) delays every route the control planes
  register, and no other: the blob store's own ``latency`` is its fault plan's.

Routes: ``PUT /blob/{key}`` (presigned uploads), ``POST /api/import/graph`` (Matterport),
``POST /graphql`` (Speckle), ``GET /_sandbox/stats`` and ``GET /_sandbox/objects/{key}`` (admin).
"""

from __future__ import annotations

import argparse
import shutil
import signal
import socket
import sys
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Protocol, runtime_checkable

import anyio
import anyio.to_thread
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from engine.sandbox.blobstore import BlobError, BlobStore, MiB, validate_key
from engine.sandbox.config import SandboxConfig
from engine.sandbox.options import add_serve_options, config_from_args
from engine.sandbox.responses import json_response

__all__ = ["ControlPlane", "Sandbox", "SandboxConfig", "main", "serve"]

_READ_BUFSIZE: Final = 1 * MiB  # aiohttp pauses the socket at 2x this per connection
_SHUTDOWN_TIMEOUT: Final = 1.0  # seconds granted to in-flight handlers when the sandbox stops


@runtime_checkable
class ControlPlane(Protocol):
    """What a control plane offers the server: routes, and optionally ``stats() -> dict``."""

    def register(self, app: web.Application) -> None: ...


class Sandbox:
    """The in-process sandbox server; an async context manager running in the caller's loop.

    After ``__aenter__``: ``url`` (``"http://127.0.0.1:PORT"``), ``store`` and ``app``.
    """

    def __init__(self, config: SandboxConfig | None = None) -> None:
        self.config = config if config is not None else SandboxConfig()
        self._runner: web.AppRunner | None = None
        self._temp_dir: Path | None = None
        self._planes: list[ControlPlane] = []
        self._url: str | None = None
        self._store: BlobStore | None = None
        self._app: web.Application | None = None

    def __repr__(self) -> str:
        state = self._url if self._url is not None else "not started"
        return f"Sandbox({state}, store={self._store!r})"

    @property
    def url(self) -> str:
        if self._url is None:
            raise RuntimeError("the sandbox is not running")
        return self._url

    @property
    def store(self) -> BlobStore:
        if self._store is None:
            raise RuntimeError("the sandbox is not running")
        return self._store

    @property
    def app(self) -> web.Application:
        if self._app is None:
            raise RuntimeError("the sandbox is not running")
        return self._app

    @property
    def planes(self) -> Sequence[ControlPlane]:
        return tuple(self._planes)

    async def __aenter__(self) -> Sandbox:
        if self._runner is not None:
            raise RuntimeError("the sandbox is already running")
        config = self.config
        data_dir = config.data_dir
        if data_dir is None and not config.discard:
            self._temp_dir = Path(tempfile.mkdtemp(prefix="upload-engine-sandbox-"))
            data_dir = self._temp_dir
        try:
            if config.storage_url is not None:
                self._store = await _open_s3_store(config.storage_url, data_dir, config.discard)
            else:
                self._store = BlobStore(
                    data_dir,
                    secret=config.secret,
                    discard=config.discard,
                    faults=config.faults,
                    min_part_size=config.min_part_size,
                    max_part_size=config.max_part_size,
                    max_object_size=config.max_object_size,
                    mode=config.storage_mode,
                )
            self._app = self._build_app(self._store)
            runner = web.AppRunner(
                self._app,
                handle_signals=False,
                shutdown_timeout=_SHUTDOWN_TIMEOUT,
                access_log=None,
                read_bufsize=_READ_BUFSIZE,
                auto_decompress=False,  # store bodies byte for byte, as S3 does
            )
            await runner.setup()
            self._runner = runner
            sock = _bind(config.host, config.port)
            try:
                await web.SockSite(runner, sock).start()
            except BaseException:
                sock.close()
                raise
        except BaseException:
            await self._stop()
            raise
        host, port = sock.getsockname()[:2]
        self._url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
        self._store.base_url = self._url
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._stop()

    async def _stop(self) -> None:
        runner, self._runner = self._runner, None
        self._url = None
        if self._store is not None:
            self._store.close()
        try:
            if runner is not None:
                await runner.cleanup()
        finally:
            temp_dir, self._temp_dir = self._temp_dir, None
            if temp_dir is not None:
                await anyio.to_thread.run_sync(shutil.rmtree, temp_dir, True)

    # ---- application -----------------------------------------------------------------------------

    def _build_app(self, store: BlobStore) -> web.Application:
        """Build the whole application before the runner starts: blob, admin, control planes."""
        app = web.Application()
        store.register(app)
        app.router.add_get("/_sandbox/stats", self._handle_stats)
        app.router.add_get("/_sandbox/objects/{key:.+}", self._handle_object)
        # ---- control planes: each is constructed as Plane(config_or_None, store) and adds its
        # own routes with plane.register(app). Imported here, not at module level, so that a
        # plane module may import from engine.sandbox without an import cycle.
        self._planes = self._make_planes(store)
        data_and_admin = set(app.router.routes())
        for plane in self._planes:
            plane.register(app)
        if self.config.control_latency > 0.0:
            control = frozenset(r for r in app.router.routes() if r not in data_and_admin)
            app.middlewares.append(_delayed(control, self.config.control_latency))
        return app

    def _make_planes(self, store: BlobStore) -> list[ControlPlane]:
        from engine.sandbox.matterport import MatterportPlane
        from engine.sandbox.speckle import SpecklePlane

        matterport, speckle = _hand_out_store_headers(self.config, store)
        return [
            MatterportPlane(matterport, store),  # POST /api/import/graph
            SpecklePlane(speckle, store),  # POST /graphql
        ]

    def stats(self) -> dict[str, Any]:
        """``store.stats()`` plus ``planes: {name: plane.stats()}`` for planes that keep stats."""
        result = self.store.stats()
        planes: dict[str, Any] = {}
        for plane in self._planes:
            plane_stats = getattr(plane, "stats", None)
            if callable(plane_stats):
                name = type(plane).__name__.removesuffix("Plane").lower()
                planes[name] = plane_stats()
        result["planes"] = planes
        return result

    async def _handle_stats(self, request: web.Request) -> web.Response:
        return json_response(self.stats(), non_str_keys=True)

    async def _handle_object(self, request: web.Request) -> web.Response:
        try:
            key = validate_key(request.match_info["key"])
        except BlobError as exc:
            return json_response(
                {"error": exc.code, "message": exc.message}, status=exc.status, non_str_keys=True
            )
        stored = self.store.head(key)
        if stored is None:
            return json_response({"error": "NoSuchKey", "key": key}, status=404, non_str_keys=True)
        return json_response(asdict(stored), non_str_keys=True)


def _delayed(routes: frozenset[web.AbstractRoute], seconds: float) -> Middleware:
    """A middleware answering requests to ``routes`` (the control planes') ``seconds`` later.

    A simulation knob (``SandboxConfig.control_latency``), not a behaviour of either service: the
    round trip of a wide-area link, both legs taken before the handler runs, so concurrent
    requests each wait ``seconds`` (a link delay, not a queue). A WebSocket upgrade waits too;
    messages on an open subscription socket do not."""

    @web.middleware
    async def delay(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.match_info.route in routes:
            await anyio.sleep(seconds)
        return await handler(request)

    return delay


def _hand_out_store_headers(config: SandboxConfig, store: BlobStore) -> tuple[Any, Any]:
    """The planes' configs, each handing its clients the headers the store's mode requires on
    every PUT, unless the config names its own: ``azure``: ``x-ms-blob-type: BlockBlob`` in
    Speckle's ``additionalRequestHeaders``; ``sse-c``: the customer key in Matterport's part
    ``headers`` (Speckle's one PUT may go without a key, as S3's PutObject may)."""
    from engine.sandbox.matterport import MatterportSandboxConfig
    from engine.sandbox.speckle import SpeckleSandboxConfig

    matterport, speckle = config.matterport, config.speckle
    required = store.required_put_headers
    if store.mode.name == "azure":
        speckle = speckle if speckle is not None else SpeckleSandboxConfig()
        if speckle.additional_header is None:
            speckle = replace(speckle, additional_header=("x-ms-blob-type", "BlockBlob"))
    elif store.mode.name == "sse-c":
        matterport = matterport if matterport is not None else MatterportSandboxConfig()
        if not matterport.part_headers:
            matterport = replace(matterport, part_headers=tuple(required.items()))
    return matterport, speckle


async def _open_s3_store(url: str, cache_dir: Path | None, discard: bool) -> BlobStore:
    from engine.sandbox.s3store import S3BlobStore, S3Location

    store = S3BlobStore(S3Location.parse(url), cache_dir=cache_dir, discard=discard)
    await anyio.to_thread.run_sync(store.open)
    return store


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family)


# --------------------------------------------------------------------------------------------------
# Running it on its own.


async def serve(config: SandboxConfig) -> None:
    """Run a sandbox after printing its URL (and data directory) on stdout.

    Runs until cancelled (Ctrl-C) or, when called from the main thread, until SIGTERM (as sent by
    ``docker stop``); either way the server stops cleanly and a temporary data dir is removed.
    """
    async with Sandbox(config) as sandbox:
        where = "discarding bytes" if config.discard else f"data in {sandbox.store.data_dir}"
        if config.storage_url is not None:
            where = f"blobs in {getattr(sandbox.store, 'location', config.storage_url)}"
        if config.storage_mode != "s3":
            where += f", answering as {config.storage_mode}"
        print(f"sandbox listening on {sandbox.url} ({where})", flush=True)
        await _wait_for_sigterm()


async def _wait_for_sigterm() -> None:
    if sys.platform == "win32" or threading.current_thread() is not threading.main_thread():
        await anyio.sleep_forever()
    with anyio.open_signal_receiver(signal.SIGTERM) as signals:
        async for _ in signals:
            return


def _parse_args(argv: Sequence[str] | None) -> SandboxConfig:
    parser = argparse.ArgumentParser(
        prog="python -m engine.sandbox.server",
        description="Run the upload-engine sandbox (blob store + Matterport + Speckle planes).",
    )
    add_serve_options(parser)
    args = parser.parse_args(argv)
    try:
        return config_from_args(args)
    except ValueError as exc:
        parser.error(str(exc))


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m engine.sandbox.server [--port N] [--faults SPEC] ...``; Ctrl-C stops it."""
    config = _parse_args(argv)
    try:
        anyio.run(serve, config)
    except KeyboardInterrupt:
        return 0
    except OSError as exc:
        print(f"sandbox: cannot serve on {config.host}:{config.port}: {exc}", file=sys.stderr)
        return 1
    except BlobError as exc:
        print(f"sandbox: storage {config.storage_url}: {exc.code}: {exc.message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
