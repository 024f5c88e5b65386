"""Reaching a cluster: an existing Dask scheduler, or a ``LocalCluster`` started here.

Rules:
- ``open_cluster(address=...)`` connects to a running scheduler and leaves it running;
  ``open_cluster(workers=N)`` starts N worker processes on this machine (each with
  ``concurrency`` threads, SIGINT ignored: a terminal's Ctrl-C belongs to the coordinator),
  with the scheduler's HTTP server on a free loopback port, and stops them at the end;
- neither survives a scheduler that went away: closing then gives up after a few seconds,
  silently, and the client's reconnection attempts stay quiet (the run reports the loss);
- while a cluster is open, what distributed logs at WARNING and above in this process reaches
  ``say`` as one redacted line (not raw stderr, which would tear a live progress view).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from typing import Any

import anyio
from distributed import Client, LocalCluster

from engine.cluster.tasks import per_worker
from engine.config import UploadConfig
from engine.errors import ConfigError
from engine.redact import redact

__all__ = ["open_cluster", "routed_logs"]

_CLOSE_WITHIN = 5.0  # seconds to close a client or a local cluster before giving up on it


class _Say(logging.Handler):
    def __init__(self, say: Callable[[str], None]) -> None:
        super().__init__(logging.WARNING)
        self._say = say

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage().strip().splitlines()
        line = " ".join(text[0].split())[:240] if text else record.levelname
        self._say(f"dask: {redact(line)}")


@contextmanager
def routed_logs(say: Callable[[str], None]) -> Iterator[None]:
    """Send the ``distributed`` loggers' warnings and errors to ``say``, one line each."""
    logger = logging.getLogger("distributed")
    saved = logger.handlers[:], logger.propagate
    logger.handlers = [_Say(say)]
    logger.propagate = False
    try:
        yield
    finally:
        logger.handlers, logger.propagate = saved


@asynccontextmanager
async def open_cluster(
    *,
    config: UploadConfig,
    address: str | None = None,
    workers: int | None = None,
    say: Callable[[str], None] | None = None,
    connect_timeout: float = 10.0,
) -> AsyncIterator[Client]:
    """An asynchronous client of the scheduler at ``address``, or of ``workers`` local
    worker processes started for the block. Exactly one of the two."""
    if (address is None) == (workers is None):
        raise ConfigError("give a scheduler address or a number of workers, not both")
    with routed_logs(say) if say is not None else _nothing():
        if address is not None:
            client = await _connect(address, connect_timeout)
            try:
                yield client
            finally:
                await _close(client)
            return
        cluster: Any = await _untyped(LocalCluster)(
            n_workers=workers,
            threads_per_worker=per_worker(config),
            processes=True,
            asynchronous=True,
            # the scheduler serves HTTP whatever is asked (8787 by default, a warning when
            # taken): on loopback, on a free port; the workers serve none
            dashboard_address="127.0.0.1:0",
            worker_dashboard_address=None,
            preload=["engine.cluster.tasks"],  # dask_setup: SIGINT ignored in the workers
            silence_logs=logging.ERROR,  # the workers: errors only (their output is ours)
        )
        try:
            client = await _connect(cluster, connect_timeout)
            try:
                yield client
            finally:
                await _close(client)
        finally:
            await _close(cluster)


@contextmanager
def _nothing() -> Iterator[None]:
    yield


async def _connect(where: str | LocalCluster, within: float) -> Client:
    try:
        client: Client = await _untyped(Client)(
            where, asynchronous=True, timeout=within, set_as_default=False
        )  # fmt: skip
    except (OSError, TimeoutError) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise ConfigError(f"cannot reach the Dask scheduler at {where}: {redact(reason)}") from None
    return client


def _untyped(f: object) -> Any:
    """distributed's constructors are untyped: call them as such."""
    return f


async def _close(thing: Any) -> None:
    """Close a client or a cluster, shielded, within ``_CLOSE_WITHIN`` s, errors swallowed:
    by then the run has said what happened. A client whose scheduler is gone keeps trying to
    reconnect until the loop ends, and logs each failure with a traceback: hush it."""
    if isinstance(thing, Client) and thing.status != "running":
        logging.getLogger("distributed.client").setLevel(logging.CRITICAL)
    with anyio.CancelScope(shield=True), anyio.move_on_after(_CLOSE_WITHIN), suppress(Exception):
        await thing.close()
