"""Servers for tests that drive the CLI in-process: each runs on its own event loop in a
background thread (the CLI runs its own loop in the test's thread).

``served_sandbox(...)`` yields a real sandbox (both control planes and the blob store) and
``served_app(app)`` any aiohttp application; both clean up when the block ends.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

from aiohttp import web

from engine.sandbox.server import Sandbox, SandboxConfig

__all__ = ["Served", "served_app", "served_sandbox"]


class Served:
    """An asyncio loop in a daemon thread; ``call`` runs a coroutine there and waits for it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def call(self, make: Callable[[], Awaitable[Any]]) -> Any:
        async def wrapped() -> Any:
            return await make()

        return asyncio.run_coroutine_threadsafe(wrapped(), self.loop).result(timeout=30)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


@contextmanager
def served_sandbox(**config: Any) -> Iterator[Sandbox]:
    """A running sandbox (``SandboxConfig(min_part_size=0, **config)``); use ``.url``."""
    config.setdefault("min_part_size", 0)
    served = Served()
    sandbox = Sandbox(SandboxConfig(**config))
    try:
        served.call(sandbox.__aenter__)
        yield sandbox
    finally:
        served.call(lambda: sandbox.__aexit__(None, None, None))
        served.close()


@contextmanager
def served_app(app: web.Application) -> Iterator[str]:
    """Serve ``app`` on a free loopback port; yields ``http://127.0.0.1:PORT``."""
    served = Served()
    runner = web.AppRunner(app, access_log=None)
    try:
        served.call(runner.setup)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        served.call(site.start)
        port = runner.addresses[0][1]
        yield f"http://127.0.0.1:{port}"
    finally:
        served.call(runner.cleanup)
        served.close()
