"""Fan-out through Dask distributed: the parts of an import PUT by the workers of a cluster.

Needs the optional extra (``pip install 'upload-engine[cluster]'``); importing this package
without it raises ``ImportError`` with that line. The coordinator keeps every step that must
happen once (sessions, models, completions, commits, ingestions, the journal); workers only
move bytes (``engine.cluster.tasks``). From Python, with a ``distributed.Client`` you have::

    async with cluster_sender(dask_client, config) as sender:
        await sender.check_readable([(path, size), ...])  # every worker sees the files
        async with Uploader(config, sender=sender) as up:
            ...  # Matterport.import_files(up, ...), Speckle.upload(up, ...), up.upload(...)

``config.concurrency`` is then the PUTs in flight per worker (``tasks.PER_WORKER_DEFAULT``,
8, when it is ``None``: a worker has no adaptive window), ``config.bwlimit`` the send rate of
each worker process.
"""

INSTALL_HINT = "Dask distributed is not installed: pip install 'upload-engine[cluster]'"

try:
    from engine.cluster.local import open_cluster
    from engine.cluster.sender import ClusterLostError, ClusterSender, cluster_sender
except ModuleNotFoundError as exc:  # the extra is not installed
    if (exc.name or "").split(".")[0] not in ("distributed", "dask"):
        raise
    raise ImportError(INSTALL_HINT) from exc

__all__ = ["INSTALL_HINT", "ClusterLostError", "ClusterSender", "cluster_sender", "open_cluster"]
