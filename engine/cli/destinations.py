"""What a command sends to, built from its arguments: a Matterport or Speckle client (real,
with credentials from ``credentials``, or of the in-process sandbox), an S3 location, or the
in-process sandbox itself.

The sandbox (and with it graphql-core and crc32c) is imported only inside the functions here
that start or talk to one, so an upload to a real platform or S3 never imports it; so are the
Matterport and Speckle clients, which an upload to S3 does not need.
"""

from __future__ import annotations

import argparse
import importlib.util
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from engine.cli.credentials import read_credentials
from engine.cli.options import Kind, destination_kind, split_s3
from engine.errors import ConfigError, RemoteError
from engine.models import FileInfo, PartLimits, PartResult
from engine.providers.s3 import NO_BOTOCORE, S3Clients, S3Target, translate
from engine.target import PresignedMultipart

if TYPE_CHECKING:
    from engine.providers.matterport import Matterport
    from engine.providers.speckle import Speckle
    from engine.sandbox.faults import FaultPlan
    from engine.sandbox.server import Sandbox

__all__ = [
    "Destination",
    "S3Place",
    "fault_plan",
    "matterport_options",
    "open_destination",
    "sandbox",
    "sandbox_matterport",
    "sandbox_speckle",
    "sandbox_target",
    "speckle_options",
]


@dataclass(frozen=True)
class S3Place:
    """``--to s3://BUCKET/KEY`` and the S3 flags: an object key, or a prefix ending in ``/``
    (or nothing) under which each file keeps its name (``upload``) or its path relative to
    the directory (``import``). Every target shares one botocore client (``clients``)."""

    bucket: str
    key: str
    endpoint_url: str | None = None
    region: str | None = None
    profile: str | None = None
    verify_tls: bool = True
    clients: S3Clients = field(default_factory=S3Clients)

    def key_for(self, path: Path, rel: str | None = None) -> str:
        if self.key and not self.key.endswith("/"):
            return self.key
        return self.key + (rel if rel is not None else path.name)

    def target(self, path: Path, rel: str | None = None) -> S3Target:
        return S3Target(
            self.bucket,
            self.key_for(path, rel),
            endpoint_url=self.endpoint_url,
            region=self.region,
            profile=self.profile,
            verify_tls=self.verify_tls,
            clients=self.clients,
        )

    def check_credentials(self) -> None:
        """Blocking: make the shared client now, so missing AWS credentials are one line
        (exit 3) before any file is read or sent, as for the platforms."""
        probe = self.target(Path("probe"))
        try:
            self.clients.client_for(probe)
        except Exception as exc:
            raise translate(exc, f"reach s3://{self.bucket}") from None


@dataclass
class Destination:
    """What ``--to`` opened: the platform clients it uses (with the organization or project to
    import into), the S3 location, and the in-process sandbox for ``--to sandbox*``."""

    to: str
    matterport: Matterport | None = None
    organization: str = ""
    speckle: Speckle | None = None
    project: str = ""
    s3: S3Place | None = None
    sandbox: Sandbox | None = None

    @property
    def resumable(self) -> bool:
        """A journal helps a rerun: not with a fresh sandbox, which cannot resume old work."""
        return self.sandbox is None


@asynccontextmanager
async def open_destination(
    args: argparse.Namespace, *, sandbox_dir: Path | None = None
) -> AsyncIterator[Destination]:
    """The destination of ``args.to`` (flags checked by ``options.check_destination``); for
    ``--to sandbox*`` a sandbox keeping its bytes in ``sandbox_dir``, running until exit."""
    kind = destination_kind(args.to)
    if not args.to.startswith("sandbox"):
        dest = _remote(args, kind)
        if dest.s3 is not None:
            await anyio.to_thread.run_sync(dest.s3.check_credentials)
        yield dest
        return
    async with sandbox(sandbox_dir, args.sandbox_faults) as sb:
        dest = Destination(args.to, sandbox=sb)
        if kind in ("matterport", "sandbox"):
            dest.matterport, dest.organization = sandbox_matterport(
                sb, args.organization, **matterport_options(args)
            )
        if kind in ("speckle", "sandbox"):
            dest.speckle, dest.project = sandbox_speckle(sb, args.project, **speckle_options(args))
        yield dest


def _remote(args: argparse.Namespace, kind: Kind) -> Destination:
    """A real platform (credentials from the environment or the credentials file) or S3."""
    if kind == "matterport":
        from engine.providers.matterport import Matterport, MatterportCredentials

        kw = {"endpoint": args.endpoint} if args.endpoint else {}
        client = Matterport(
            read_credentials(MatterportCredentials.from_env), **kw, **matterport_options(args)
        )
        return Destination(args.to, matterport=client, organization=args.organization)
    if kind == "speckle":
        from engine.providers.speckle import Speckle, SpeckleCredentials

        kw = {"server": args.server} if args.server else {}
        credentials = read_credentials(SpeckleCredentials.from_env)
        speckle = Speckle(credentials, **kw, **speckle_options(args))
        return Destination(args.to, speckle=speckle, project=args.project)
    if importlib.util.find_spec("botocore") is None:
        raise ConfigError(NO_BOTOCORE)
    bucket, key = split_s3(args.to)
    place = S3Place(
        bucket,
        key,
        endpoint_url=args.endpoint_url,
        region=args.region,
        profile=args.profile,
        verify_tls=not args.insecure,
    )
    return Destination(args.to, s3=place)


# ---- the in-process sandbox ------------------------------------------------------------------


def fault_plan(spec: str, seed: int = 0) -> FaultPlan:
    """``--sandbox-faults``/``--faults`` as the sandbox's ``FaultPlan`` (a bad spec: exit 2)."""
    from engine.sandbox.faults import FaultPlan

    try:
        return FaultPlan.from_spec(spec, seed=seed)
    except ValueError as exc:
        raise ConfigError(f"bad fault spec {spec!r}: {exc}") from None


@asynccontextmanager
async def sandbox(data_dir: Path | None, faults: str = "", **planes: Any) -> AsyncIterator[Sandbox]:
    """An in-process sandbox with both control planes; its shutdown survives a second Ctrl-C."""
    from engine.sandbox.matterport import MatterportSandboxConfig
    from engine.sandbox.server import Sandbox, SandboxConfig
    from engine.sandbox.speckle import SpeckleSandboxConfig

    planes.setdefault("matterport", MatterportSandboxConfig())
    planes.setdefault("speckle", SpeckleSandboxConfig())
    running = Sandbox(SandboxConfig(data_dir=data_dir, faults=fault_plan(faults), **planes))
    sb = await running.__aenter__()
    try:
        yield sb
    finally:
        with anyio.CancelScope(shield=True):
            await running.__aexit__(None, None, None)


def matterport_options(args: argparse.Namespace) -> dict[str, Any]:
    """The ``Matterport`` keywords of ``--processing-timeout`` (the wait for the model)."""
    return {"model_deadline": getattr(args, "processing_timeout", 1800.0)}


def sandbox_matterport(
    sb: Sandbox, organization: str | None = None, **options: Any
) -> tuple[Matterport, str]:
    """A client of a running ``sandbox()``'s Matterport plane, with the plane's own credentials,
    and the organization to use (the plane's first unless one is given; ``options``: more
    ``Matterport`` keywords, e.g. ``matterport_options(args)``)."""
    from engine.providers.matterport import Matterport, MatterportCredentials

    mp = sb.config.matterport
    client = Matterport(
        MatterportCredentials(*mp.credentials[0]),
        endpoint=f"{sb.url}/api/import/graph",
        poll_interval=0.05,
        **options,
    )
    return client, organization or sorted(mp.organizations)[0]


def speckle_options(args: argparse.Namespace) -> dict[str, Any]:
    """The ``Speckle`` keywords of ``--speckle-api`` and ``--processing-timeout``."""
    return {
        "api": getattr(args, "speckle_api", "auto"),
        "ingestion_deadline": getattr(args, "processing_timeout", 1800.0),
    }


def sandbox_speckle(sb: Sandbox, project: str | None = None, **options: Any) -> tuple[Speckle, str]:
    """A client of a running ``sandbox()``'s Speckle plane, and the project to use
    (``options``: more ``Speckle`` keywords, e.g. ``speckle_options(args)``)."""
    from engine.providers.speckle import Speckle, SpeckleCredentials

    sp = sb.config.speckle
    token = SpeckleCredentials(next(iter(sp.tokens)))
    client = Speckle(token, server=sb.url, poll_interval=0.05, **options)
    return client, project or sorted(sp.projects)[0]


def sandbox_target(sb: Sandbox, info: FileInfo) -> PresignedMultipart:
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
