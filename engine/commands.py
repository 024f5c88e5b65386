"""The subcommands: ``upload``, ``demo`` and ``sandbox serve`` (``import`` lives in ``bulk``).

Each subcommand is an async runner returning an ``Outcome``; ``engine.cli.main`` owns exit
codes, the event loop and the last line printed.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import anyio

from engine.cli import (
    Outcome,
    _size,
    add_engine_options,
    credentials_env,
    credentials_path,
    engine_config,
    md5_of,
    progress_for,
    state_dir_default,
    summary_line,
)
from engine.client import Uploader
from engine.config import MiB
from engine.errors import AuthenticationError, ConfigError, RemoteError
from engine.models import FileInfo, PartLimits, PartResult, UploadResult
from engine.progress import ProgressView, human_bytes, human_rate
from engine.providers.matterport import Matterport, MatterportCredentials
from engine.providers.speckle import Speckle, SpeckleCredentials
from engine.target import PresignedMultipart

__all__ = ["register"]

T = TypeVar("T")

DESTINATIONS = (
    "sandbox | sandbox-matterport | sandbox-speckle | matterport | speckle | s3://BUCKET/KEY"
)


def register(sub: Any) -> None:  # argparse's _SubParsersAction is private
    up = sub.add_parser(
        "upload",
        help="upload files to one destination",
        description="Upload files. Destinations: " + DESTINATIONS,
    )
    up.add_argument("files", nargs="+", metavar="FILE")
    up.add_argument("--to", required=True, metavar="DEST", help=DESTINATIONS)
    mp = up.add_argument_group("matterport")
    mp.add_argument("--organization", help="Matterport organization id")
    mp.add_argument("--name", help="model name (default: the first file's name)")
    mp.add_argument("--description", help="model description")
    mp.add_argument("--endpoint", help="Matterport Import API endpoint URL")
    sp = up.add_argument_group("speckle")
    sp.add_argument("--project", help="Speckle project id")
    sp.add_argument("--model", help="model name (created when missing; default: the file's stem)")
    sp.add_argument("--model-id", help="existing model id")
    sp.add_argument("--server", help="Speckle server URL")
    s3 = up.add_argument_group("s3")
    s3.add_argument("--endpoint-url", help="S3-compatible endpoint (path-style addressing)")
    s3.add_argument("--region", help="AWS region")
    s3.add_argument("--profile", help="AWS profile")
    sb = up.add_argument_group("sandbox (in-process, for --to sandbox*)")
    sb.add_argument(
        "--sandbox-faults", default="", metavar="SPEC", help='e.g. "503=0.05,reset=0.02"'
    )
    sb.add_argument("--sandbox-dir", type=Path, help="keep the sandbox's bytes here")
    up.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="resume journal (default ~/.local/state/upload-engine)",
    )
    add_engine_options(up)
    up.set_defaults(runner=run_upload)

    demo = sub.add_parser("demo", help="upload a generated E57 scan into the in-process sandbox")
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

    sand = sub.add_parser("sandbox", help="the local sandbox of both platforms and blob storage")
    sand_sub = sand.add_subparsers(dest="sandbox_command", required=True, metavar="ACTION")
    serve = sand_sub.add_parser("serve", help="run the sandbox until Ctrl-C")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8700)
    serve.add_argument("--data-dir", type=Path, default=None, help="default: a temporary directory")
    serve.add_argument("--discard", action="store_true", help="hash and count bytes, store nothing")
    serve.add_argument(
        "--storage",
        metavar="S3_URL",
        help="keep blobs in S3-compatible storage: s3://BUCKET[/PREFIX]?endpoint_url=URL"
        "[&public_endpoint_url=URL][&region=R]; credentials from AWS_ACCESS_KEY_ID/"
        "AWS_SECRET_ACCESS_KEY; --faults do not apply to it",
    )
    serve.add_argument("--faults", default="", help='e.g. "503=0.05,reset=0.02,throttle=0.05"')
    serve.add_argument("--seed", type=int, default=0)
    serve.add_argument(
        "--min-part-size",
        type=_size,
        default=5 * MiB,
        help="smallest part (but the last) the blob store and Matterport accept (default 5MiB)",
    )
    serve.set_defaults(runner=run_sandbox_serve)

    from engine import bulk

    bulk.register(sub)


# ----------------------------------------------------------------------------------------------
# The in-process sandbox


def fault_plan(spec: str, seed: int = 0) -> Any:
    from engine.sandbox.faults import FaultPlan

    try:
        return FaultPlan.from_spec(spec, seed=seed)
    except ValueError as exc:
        raise ConfigError(f"bad fault spec {spec!r}: {exc}") from None


@asynccontextmanager
async def sandbox(data_dir: Path | None, faults: str = "", **planes: Any) -> AsyncIterator[Any]:
    """An in-process sandbox with both control planes."""
    from engine.sandbox.matterport import MatterportSandboxConfig
    from engine.sandbox.server import Sandbox, SandboxConfig
    from engine.sandbox.speckle import SpeckleSandboxConfig

    planes.setdefault("matterport", MatterportSandboxConfig())
    planes.setdefault("speckle", SpeckleSandboxConfig())
    config = SandboxConfig(data_dir=data_dir, faults=fault_plan(faults), **planes)
    async with Sandbox(config) as sb:
        yield sb


def sandbox_matterport(sb: Any, organization: str | None = None) -> tuple[Matterport, str]:
    """A client of a running ``sandbox()``'s Matterport plane, with the plane's own credentials,
    and the organization to use (the plane's first unless one is given)."""
    mp = sb.config.matterport
    client = Matterport(
        MatterportCredentials(*mp.credentials[0]),
        endpoint=f"{sb.url}/api/import/graph",
        poll_interval=0.05,
    )
    return client, organization or sorted(mp.organizations)[0]


def sandbox_speckle(sb: Any, project: str | None = None) -> tuple[Speckle, str]:
    """A client of a running ``sandbox()``'s Speckle plane, and the project to use."""
    sp = sb.config.speckle
    client = Speckle(SpeckleCredentials(next(iter(sp.tokens))), server=sb.url, poll_interval=0.05)
    return client, project or sorted(sp.projects)[0]


def sandbox_target(sb: Any, info: FileInfo) -> PresignedMultipart:
    """A plain presigned multipart upload into the sandbox's blob store."""
    from engine.sandbox.blobstore import BlobError

    key = f"uploads/{info.path.name}"
    upload_id = sb.store.create_multipart(key)

    def complete(parts: Sequence[PartResult]) -> Mapping[str, str] | None:
        try:
            obj = sb.store.complete_multipart(key, upload_id, [(p.number, p.etag) for p in parts])
        except BlobError as exc:
            raise RemoteError(f"complete {key}: {exc.code}: {exc.message}", code=exc.code) from None
        return {"key": obj.key, "etag": obj.etag, "md5": obj.md5}

    return PresignedMultipart(
        lambda n: sb.store.presign_part(key, upload_id, n),
        complete,
        limits=PartLimits(min_size=sb.config.min_part_size, max_size=sb.config.max_part_size),
    )


# ----------------------------------------------------------------------------------------------
# upload


async def run_upload(args: argparse.Namespace) -> Outcome:
    infos = [FileInfo.of(p) for p in args.files]
    total = sum(i.size for i in infos)
    to: str = args.to
    journal = (args.state_dir or state_dir_default()) / "journal.jsonl"
    with progress_for(args, files=len(infos), total=total) as view:
        if to == "sandbox":
            return await _upload_sandbox(args, infos, view)
        if to in ("matterport", "sandbox-matterport"):
            return await _upload_matterport(args, infos, view, journal)
        if to in ("speckle", "sandbox-speckle"):
            return await _upload_speckle(args, infos, view, journal)
        if to.startswith("s3://"):
            return await _upload_s3(args, infos, view, journal)
    raise ConfigError(f"unknown destination {to!r}; use one of: {DESTINATIONS}")


def read_credentials(read: Callable[[Mapping[str, str]], T]) -> T:
    """Credentials from the environment or the credentials file (``credentials_env``); missing
    ones are a usage error (exit 2), found before anything is sent. (Credentials the platform
    refuses stay an ``AuthenticationError``.)"""
    env = credentials_env()
    try:
        return read(env)
    except AuthenticationError as exc:
        raise ConfigError(f"{exc} (or in {credentials_path(env)}, mode 600)") from None


def _rate(size: int, seconds: float) -> float:
    return size / seconds if seconds > 0 else 0.0


async def _upload_matterport(
    args: argparse.Namespace, infos: list[FileInfo], view: ProgressView, journal: Path
) -> Outcome:
    started = time.monotonic()
    async with AsyncExitStack() as stack:
        if args.to == "sandbox-matterport":
            sb = await stack.enter_async_context(sandbox(args.sandbox_dir, args.sandbox_faults))
            matterport, org = sandbox_matterport(sb, args.organization)
            journal_path: Path | None = None  # a fresh sandbox cannot resume an old session
        else:
            endpoint = args.endpoint or "https://api.matterport.com/api/import/graph"
            if not args.organization:
                raise ConfigError("--organization is required for --to matterport")
            creds = read_credentials(MatterportCredentials.from_env)
            matterport, org = Matterport(creds, endpoint=endpoint), args.organization
            journal_path = journal
        up = await stack.enter_async_context(
            Uploader(engine_config(args), on_event=view, journal=journal_path)
        )
        result = await matterport.import_files(
            up,
            [i.path for i in infos],
            organization=org,
            name=args.name or infos[0].path.stem,
            description=args.description,
        )
    seconds = time.monotonic() - started
    return Outcome(
        summary_line(
            f"matterport session {result.session_id} -> model {result.model_id}",
            result.bytes,
            seconds,
        ),
        {
            "destination": args.to,
            "session_id": result.session_id,
            "model_id": result.model_id,
            "files": [str(f.path) for f in result.files],
            "bytes": result.bytes,
            "seconds": round(seconds, 3),
            "throughput": _rate(result.bytes, seconds),
            "retries": sum(f.retries for f in result.files),
        },
    )


async def _upload_speckle(
    args: argparse.Namespace, infos: list[FileInfo], view: ProgressView, journal: Path
) -> Outcome:
    if args.model and args.model_id:
        raise ConfigError("give --model or --model-id, not both")
    started = time.monotonic()
    records: list[dict[str, Any]] = []
    size = 0
    async with AsyncExitStack() as stack:
        if args.to == "sandbox-speckle":
            sb = await stack.enter_async_context(sandbox(args.sandbox_dir, args.sandbox_faults))
            speckle, project = sandbox_speckle(sb, args.project)
            journal_path: Path | None = None  # a fresh sandbox cannot resume an old upload
        else:
            if not args.project:
                raise ConfigError("--project is required for --to speckle")
            creds = read_credentials(SpeckleCredentials.from_env)
            speckle = Speckle(creds, server=args.server or "https://app.speckle.systems")
            project, journal_path = args.project, journal
        up = await stack.enter_async_context(
            Uploader(engine_config(args), on_event=view, journal=journal_path)
        )
        for info in infos:
            r = await speckle.upload(
                up, info.path, project_id=project, model_name=args.model, model_id=args.model_id
            )
            size += info.size
            records.append(
                {
                    "path": str(info.path),
                    "project_id": r.project_id,
                    "model_id": r.model_id,
                    "version_id": r.version_id,
                    "bytes": info.size,
                    "seconds": round(r.seconds, 3),
                }
            )
    seconds = time.monotonic() - started
    last = records[-1]
    return Outcome(
        summary_line(
            f"speckle project {last['project_id']} model {last['model_id']} "
            f"version {last['version_id']}",
            size,
            seconds,
        ),
        {
            "destination": args.to,
            "files": records,
            "bytes": size,
            "seconds": round(seconds, 3),
            "throughput": _rate(size, seconds),
        },
    )


async def _upload_s3(
    args: argparse.Namespace, infos: list[FileInfo], view: ProgressView, journal: Path
) -> Outcome:
    from engine.providers.s3 import S3Target, parse_s3_url

    bucket, key = parse_s3_url(args.to)
    if len(infos) > 1 and key and not key.endswith("/"):
        raise ConfigError("several files need a key prefix ending in '/' (s3://BUCKET/prefix/)")
    started = time.monotonic()
    records: list[dict[str, Any]] = []
    async with Uploader(engine_config(args), on_event=view, journal=journal) as up:
        for info in infos:
            object_key = key + info.path.name if (not key or key.endswith("/")) else key
            target = S3Target(
                bucket,
                object_key,
                endpoint_url=args.endpoint_url,
                region=args.region,
                profile=args.profile,
                verify_tls=not args.insecure,
            )
            r = await up.upload(info.path, target)
            records.append(
                {"path": str(info.path), "bucket": bucket, "key": object_key, **r.remote}
            )
    seconds = time.monotonic() - started
    size = sum(i.size for i in infos)
    return Outcome(
        summary_line(f"uploaded {len(infos)} file(s) to s3://{bucket}/{key}", size, seconds),
        {
            "destination": "s3",
            "files": records,
            "bytes": size,
            "seconds": round(seconds, 3),
            "throughput": _rate(size, seconds),
        },
    )


async def _upload_sandbox(
    args: argparse.Namespace, infos: list[FileInfo], view: ProgressView
) -> Outcome:
    started = time.monotonic()
    results: list[UploadResult] = []
    async with (
        sandbox(args.sandbox_dir, args.sandbox_faults) as sb,
        Uploader(engine_config(args), on_event=view) as up,
    ):
        for info in infos:
            results.append(await up.upload(info.path, sandbox_target(sb, info)))
    seconds = time.monotonic() - started
    size = sum(r.size for r in results)
    where = str(args.sandbox_dir) if args.sandbox_dir else "a temporary sandbox (removed on exit)"
    return Outcome(
        summary_line(f"uploaded {len(results)} file(s) to {where}", size, seconds),
        {
            "destination": "sandbox",
            "files": [
                {"path": str(r.path), "bytes": r.size, "parts": len(r.parts), **r.remote}
                for r in results
            ],
            "bytes": size,
            "seconds": round(seconds, 3),
            "throughput": size / seconds if seconds else 0.0,
        },
    )


# ----------------------------------------------------------------------------------------------
# demo


async def run_demo(args: argparse.Namespace) -> Outcome:
    from engine.sandbox.e57 import write_sample_e57
    from engine.sandbox.matterport import MatterportPlane

    base: Path = args.dir
    await anyio.Path(base).mkdir(parents=True, exist_ok=True)
    sample = base / "sample-scan.e57"
    size = args.size * MiB
    say = ProgressView("log", total_files=0, total_bytes=0)
    if not sample.exists() or sample.stat().st_size != size:
        say.print(f"generating {sample} ({human_bytes(size)}, a valid E57 with random points)")
        await anyio.to_thread.run_sync(write_sample_e57, sample, size)
    source_md5 = await anyio.to_thread.run_sync(md5_of, sample)
    info = FileInfo.of(sample)
    say.print(f"starting the sandbox (faults: {args.faults or 'none'})")
    with progress_for(args, files=1, total=info.size) as view:
        async with sandbox(base / "sandbox", args.faults) as sb:
            started = time.monotonic()
            async with Uploader(engine_config(args), on_event=view) as up:
                matterport, org = sandbox_matterport(sb)
                result = await matterport.import_files(
                    up, [sample], organization=org, name="upload-engine demo"
                )
            seconds = time.monotonic() - started
            url = sb.url
            plane = next(p for p in sb.planes if isinstance(p, MatterportPlane))
            session = plane.session(result.session_id)
            stored_md5 = plane.md5_of(result.session_id, next(iter(session.files))) or ""
    ok = stored_md5 == source_md5
    retries = sum(f.retries for f in result.files)
    lines = [
        f"sample scan:  {sample} ({human_bytes(info.size)}, MD5 {source_md5})",
        f"destination:  Matterport Import API of the in-process sandbox at {url}",
        f"              session {result.session_id} -> model {result.model_id}",
        f"bytes stored: {base / 'sandbox'} (the sandbox's data directory)",
        f"throughput:   {human_bytes(info.size)} in {seconds:.2f} s = "
        f"{human_rate(info.size / seconds)} ({len(result.files[0].parts)} parts, "
        f"concurrency {args.concurrency}, {retries} retries survived)",
        f"MD5 checked:  sandbox {stored_md5} {'==' if ok else '!='} source {source_md5}"
        + ("  OK" if ok else "  MISMATCH"),
    ]
    return Outcome(
        "\n".join(lines),
        {
            "session_id": result.session_id,
            "model_id": result.model_id,
            "bytes": info.size,
            "seconds": round(seconds, 3),
            "throughput": info.size / seconds,
            "md5": source_md5,
            "md5_ok": ok,
            "retries": retries,
        },
        failed=not ok,
    )


# ----------------------------------------------------------------------------------------------
# sandbox serve


async def run_sandbox_serve(args: argparse.Namespace) -> Outcome:
    from engine.sandbox.blobstore import BlobError
    from engine.sandbox.matterport import MatterportSandboxConfig
    from engine.sandbox.server import SandboxConfig, serve

    config = SandboxConfig(
        host=args.host,
        port=args.port,
        data_dir=args.data_dir,
        discard=args.discard,
        storage_url=_storage_url(args),
        faults=fault_plan(args.faults, args.seed),
        min_part_size=args.min_part_size,
        matterport=MatterportSandboxConfig(min_part_size=args.min_part_size),
    )
    try:
        await serve(config)
    except OSError as exc:
        raise ConfigError(f"cannot serve on {args.host}:{args.port}: {exc.strerror}") from None
    except BlobError as exc:
        raise ConfigError(f"sandbox storage {args.storage}: {exc.code}: {exc.message}") from None
    return Outcome("")


def _storage_url(args: argparse.Namespace) -> str | None:
    """``--storage``, checked: a usable S3 URL, and no ``--faults`` beside it."""
    from engine.sandbox.s3store import S3Location

    url: str | None = args.storage
    if url is None:
        return None
    try:
        S3Location.parse(url)
    except ValueError as exc:
        raise ConfigError(f"--storage: {exc}") from None
    if args.faults:
        raise ConfigError("--faults apply to the sandbox's own blob store, not to --storage")
    return url
