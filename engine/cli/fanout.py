"""``import --cluster ADDRESS`` / ``--workers N``: the parts PUT by the workers of a Dask
cluster (``engine.cluster``, the optional ``cluster`` extra), everything else done here.

- without either flag nothing changes (and Dask is never imported);
- without the extra, either flag is a usage error that names the extra to install;
- before any upload starts, every worker must read every file to upload at the same path
  (size and first bytes): else a usage error naming the first worker that cannot;
- the view shows the bytes each worker sent; a run whose cluster goes away stops as a
  Ctrl-C would (no new parts; exit 130; a rerun resumes).
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from engine.cli.options import positive
from engine.cli.progress import ProgressView
from engine.config import UploadConfig
from engine.errors import ConfigError

if TYPE_CHECKING:
    from engine.client import Uploader
    from engine.cluster import ClusterSender

__all__ = ["add_cluster_options", "drain_when_lost", "open_fanout"]


def add_cluster_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("cluster (Dask distributed: pip install 'upload-engine[cluster]')")
    g.add_argument(
        "--cluster",
        metavar="ADDRESS",
        help="PUT the parts on the workers of this Dask scheduler (tcp://HOST:8786); "
        "every worker must see DIR at the same path",
    )
    g.add_argument(
        "--workers",
        type=positive,
        metavar="N",
        help="start N Dask worker processes on this machine and PUT the parts on them",
    )


@asynccontextmanager
async def open_fanout(
    args: argparse.Namespace,
    config: UploadConfig,
    files: Iterable[tuple[Path, int]],
    view: ProgressView,
) -> AsyncIterator[ClusterSender | None]:
    """The ``ClusterSender`` of ``--cluster``/``--workers`` (checked: every worker reads
    ``files``), or ``None`` without them."""
    address, workers = getattr(args, "cluster", None), getattr(args, "workers", None)
    if address is None and workers is None:
        yield None
        return
    flag = "--cluster" if address is not None else "--workers"
    if address is not None and workers is not None:
        raise ConfigError("give --cluster ADDRESS or --workers N, not both")
    try:
        from engine import cluster
    except ImportError as exc:
        raise ConfigError(f"{flag}: {exc}") from None
    where = address or f"{workers} local worker process(es)"
    view.print(f"cluster: connecting to {where}", "INFO")
    async with (
        cluster.open_cluster(
            config=config, address=address, workers=workers, say=lambda m: view.print(m, "NOTICE")
        ) as client,
        cluster.cluster_sender(client, config, on_worker=view.worker_bytes) as sender,
    ):
        await sender.check_readable(files)
        view.print(f"cluster: {where}, {sender.slots} PUTs at once", "INFO")
        yield sender


async def drain_when_lost(sender: ClusterSender | None, up: Uploader, view: ProgressView) -> None:
    """Until cancelled: when the cluster goes away, say why and start nothing new."""
    if sender is None:
        return
    why = await sender.wait_lost()
    view.print(f"cluster: {why}", "ERROR")
    up.drain()
