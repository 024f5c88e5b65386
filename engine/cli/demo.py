"""``upload-engine demo``: a generated E57 scan into the Matterport plane of an in-process
sandbox with faults, and the MD5 of what it stored checked against the source."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from engine.cli.options import add_engine_options, engine_config, view_mode, view_options
from engine.cli.output import Outcome, md5_of, plural, rate, remote_fields
from engine.cli.progress import ProgressView, progress_for
from engine.config import MiB
from engine.models import FileInfo
from engine.units import human_bytes, human_rate

__all__ = ["register", "run_demo"]


def register(demo: argparse.ArgumentParser) -> None:
    """The arguments of ``demo`` (its name and line in ``--help``: ``app.COMMANDS``)."""
    demo.add_argument("--size", type=int, default=256, help="MiB of the sample scan (default 256)")
    demo.add_argument(
        "--dir",
        type=Path,
        default=Path(".demo"),
        help="where the sample and the sandbox's bytes go",
    )
    demo.add_argument("--faults", default="503=0.06,reset=0.03,throttle=0.03", help="fault spec")
    add_engine_options(demo)
    demo.set_defaults(runner=run_demo, part_size=8 * MiB)


async def run_demo(args: argparse.Namespace) -> Outcome:
    from engine.cli.destinations import sandbox, sandbox_matterport
    from engine.client import Uploader
    from engine.sandbox.matterport import MatterportPlane

    say = ProgressView("log", total_files=0, total_bytes=0, level=args.level)
    sample, source_md5 = await _sample(args.dir, args.size * MiB, say)
    info = FileInfo.of(sample)
    say.print(f"starting the sandbox (faults: {args.faults or 'none'})")
    kw = view_options(args)
    with progress_for(view_mode(args), files=1, total=info.size, quiet_failures=True, **kw) as view:
        async with sandbox(args.dir / "sandbox", args.faults) as sb:
            started = time.monotonic()
            async with Uploader(engine_config(args), on_event=view) as up:
                view.watch(lambda: up.connections)
                matterport, org = sandbox_matterport(sb)
                result = await matterport.import_files(
                    up, [sample], organization=org, name="upload-engine demo"
                )
            seconds = time.monotonic() - started
            ids = remote_fields(result)
            plane = next(p for p in sb.planes if isinstance(p, MatterportPlane))
            session = plane.session(result.session_id)
            stored_md5 = plane.md5_of(result.session_id, next(iter(session.files))) or ""
            url = sb.url
    record = {
        **ids,
        "bytes": info.size,
        "seconds": round(seconds, 3),
        "throughput": rate(info.size, seconds),
        "md5": source_md5,
        "md5_ok": stored_md5 == source_md5,
        "retries": sum(f.retries for f in result.files),
    }
    lines = _lines(args, sample, url, record, seconds, stored_md5, len(result.files[0].parts))
    return Outcome("\n".join(lines), record, failed=stored_md5 != source_md5)


async def _sample(base: Path, size: int, say: ProgressView) -> tuple[Path, str]:
    """The sample scan under ``base`` (written unless one of ``size`` is there) and its MD5."""
    import anyio

    from engine.sandbox.e57 import write_sample_e57

    await anyio.Path(base).mkdir(parents=True, exist_ok=True)
    sample = base / "sample-scan.e57"
    if not sample.exists() or sample.stat().st_size != size:
        say.print(f"generating {sample} ({human_bytes(size)}, a valid E57 with random points)")
        await anyio.to_thread.run_sync(write_sample_e57, sample, size)
    return sample, await anyio.to_thread.run_sync(md5_of, sample)


def _lines(
    args: argparse.Namespace,
    sample: Path,
    url: str,
    record: dict[str, Any],
    seconds: float,
    stored_md5: str,
    parts: int,
) -> list[str]:
    """The demo's report: what was sent where, how fast, and the MD5 check."""
    size, md5, ok = record["bytes"], record["md5"], record["md5_ok"]
    return [
        f"sample scan:  {sample} ({human_bytes(size)}, MD5 {md5})",
        f"destination:  Matterport Import API of the in-process sandbox at {url}",
        f"              session {record['session_id']} -> model {record['model_id']}",
        f"bytes stored: {args.dir / 'sandbox'} (the sandbox's data directory)",
        f"throughput:   {human_bytes(size)} in {seconds:.2f} s = "
        f"{human_rate(record['throughput'])} ({plural(parts, 'part')}, "
        f"concurrency {args.concurrency or 'adaptive'}, "
        f"{plural(record['retries'], 'retry', 'retries')} survived)",
        f"MD5 checked:  sandbox {stored_md5} {'==' if ok else '!='} source {md5}"
        + ("  OK" if ok else "  MISMATCH"),
    ]
