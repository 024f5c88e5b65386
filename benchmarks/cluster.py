"""The ``cluster-*`` cases: aggregate throughput through Dask workers, each capped by
``--bwlimit`` (its own emulated NIC), against the same loopback endpoint.

``python -m benchmarks.contenders cluster --workers N --bwlimit BYTES_PER_S ...`` uploads the
file with the engine: through a ``LocalCluster`` of N worker processes (``engine.cluster``),
or in this process when N is 0 (the same code without a sender), and prints the usual
``{"seconds", "bytes"}`` line. The clock starts once the cluster, its pools and the uploader
are up (as the other contenders' clocks start after their clients are built) and stops at the
last answer. ``--concurrency`` is per worker.

What the cases show (``cases``): with a cap per worker, 1, 2 and 4 workers move 1x, 2x and
(where the machine allows) 4x the cap, up to what this endpoint and these cores take (the
uncapped in-process run); and one worker costs nothing against the same run in-process.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

MiB = 1024 * 1024

#: each worker's cap in the capped cases: low enough that 4 of them can still grow on 2 cores
#: shared with other work (at 120 MiB/s, 4 workers measured 0.20-0.40 GB/s: the machine's limit)
CAP = 64 * MiB


def run_cluster(args: argparse.Namespace) -> float:
    import anyio

    from engine import PartLimits, PresignedMultipart, UploadConfig, Uploader

    path = Path(args.path)
    cfg = UploadConfig(
        concurrency=args.concurrency,
        part_size=args.part_size * MiB,
        verify_etag=args.verify == "on",
        bwlimit=args.bwlimit or None,
    )
    base = f"{args.url.rstrip('/')}/{args.bucket}/bench/cluster-{path.name}"
    target = PresignedMultipart(
        lambda n: f"{base}?partNumber={n}&uploadId=bench&X-Amz-Signature=0123456789abcdef",
        lambda parts: None,
        limits=PartLimits(),
    )
    elapsed = 0.0

    async def upload(sender: Any) -> None:
        nonlocal elapsed
        async with Uploader(cfg, sender=sender) as up:
            t0 = time.perf_counter()
            await up.upload(path, target)
            elapsed = time.perf_counter() - t0

    async def main() -> None:
        if not args.workers:
            await upload(None)
            return
        from engine.cluster import cluster_sender, open_cluster

        async with (
            open_cluster(config=cfg, workers=args.workers) as client,
            cluster_sender(client, cfg) as sender,
        ):
            await upload(sender)

    anyio.run(main, backend="asyncio")
    return elapsed


def cases(contender: Any, case: Any, big: str) -> list[Any]:
    """The cluster cases for ``benchmarks.run.build_cases`` (its ``Contender`` and ``Case``)."""

    def who(name: str, workers: int, cap: int | None) -> Any:
        extra = ("--workers", str(workers)) + (("--bwlimit", str(cap)) if cap else ())
        return contender(name, "py", ("cluster", *extra), group="engine")

    capped = tuple(
        who(f"{n} worker{'s' if n > 1 else ''}, {CAP // MiB} MiB/s each", n, CAP) for n in (1, 2, 4)
    )
    return [
        case(
            "cluster-capped",
            f"2 GiB multipart through Dask workers, each capped at {CAP // MiB} MiB/s",
            "multipart",
            "http",
            big,
            16,
            4,
            (who(f"in-process, {CAP // MiB} MiB/s", 0, CAP), *capped),
        ),
        case(
            "cluster-uncapped",
            "2 GiB multipart, uncapped, 64 MiB parts: in-process (the limit here) vs one worker",
            "multipart",
            "http",
            big,
            64,
            8,
            (who("in-process, uncapped", 0, None), who("1 worker, uncapped", 1, None)),
        ),
    ]


def targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Ratios of medians from one run: scaling with workers, and no loss for one worker."""

    def median(case: str, contender: str) -> float | None:
        for r in rows:
            if r["case"] == case and r["contender"] == contender:
                return r["median_gbps"]  # type: ignore[no-any-return]
        return None

    cap = f"{CAP // MiB} MiB/s"
    pairs = [
        ("cluster-capped", f"2 workers, {cap} each", f"1 worker, {cap} each", 1.8),
        ("cluster-capped", f"4 workers, {cap} each", f"1 worker, {cap} each", 2.0),
        ("cluster-capped", f"1 worker, {cap} each", f"in-process, {cap}", 0.95),
        ("cluster-uncapped", "1 worker, uncapped", "in-process, uncapped", 0.9),
    ]
    out = []
    for case, top, bottom, goal in pairs:
        a, b = median(case, top), median(case, bottom)
        if a is None or not b:
            continue
        out.append(
            {
                "target": f"{case}: {top} / {bottom}",
                "value": a / b,
                "goal": goal,
                "met": a / b >= goal,
                "detail": f"{a:.3f} / {b:.3f} GB/s",
            }
        )
    return out


def plot(result: dict[str, Any], path: Path) -> bool:
    """Aggregate throughput against workers (capped), with the uncapped in-process run drawn
    as this endpoint's limit; ``False`` when the run has no cluster case."""
    rows = [r for r in result["summary"] if r["case"].startswith("cluster-") and r["median_gbps"]]
    capped = [r for r in rows if r["case"] == "cluster-capped"]
    if not capped:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    names = [r["contender"] for r in capped]
    values = [r["median_gbps"] for r in capped]
    errs = [
        [r["median_gbps"] - r["min_gbps"] for r in capped],
        [r["max_gbps"] - r["median_gbps"] for r in capped],
    ]
    ax.bar(range(len(capped)), values, yerr=errs, color="#1f77b4", capsize=3)
    ax.set_xticks(range(len(capped)))
    ax.set_xticklabels(names, fontsize=7, rotation=12)
    limit = next((r for r in rows if r["contender"] == "in-process, uncapped"), None)
    if limit is not None:
        ax.axhline(limit["median_gbps"], color="#7f7f7f", linestyle="--")
        ax.text(0, limit["median_gbps"] * 1.02, "uncapped, in-process: the limit here", fontsize=7)
    ax.set_ylabel("GB/s (median, whiskers min-max)")
    ax.set_title(f"Through Dask workers, each capped at {CAP // MiB} MiB/s (--bwlimit)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
