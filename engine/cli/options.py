"""Options more than one command takes: sizes, the engine's knobs, the destination flags (and
their checks), the state directory and the view mode. Each is written here once."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from engine.config import MiB, UploadConfig
from engine.errors import ConfigError
from engine.providers.s3 import parse_s3_url

if TYPE_CHECKING:
    from engine.cli.progress import Mode

__all__ = [
    "DESTINATIONS",
    "JOURNAL",
    "TREE_DESTINATIONS",
    "Kind",
    "add_destination_options",
    "add_engine_options",
    "check_destination",
    "destination_kind",
    "engine_config",
    "positive",
    "size",
    "state_dir_default",
    "view_mode",
]

DESTINATIONS = (
    "sandbox | sandbox-matterport | sandbox-speckle | matterport | speckle | s3://BUCKET/KEY"
)
TREE_DESTINATIONS = ("matterport", "speckle", "sandbox")  # ``import``: a platform per format
JOURNAL = "journal.jsonl"  # the resume journal's name in a state directory

#: what a ``--to`` sends to: a platform (real or in the sandbox), S3, or the sandbox's own
#: blob store (``upload``) / both of its platforms (``import``)
Kind = Literal["matterport", "speckle", "s3", "sandbox"]
_KINDS: dict[str, Kind] = {
    "sandbox": "sandbox",
    "matterport": "matterport",
    "sandbox-matterport": "matterport",
    "speckle": "speckle",
    "sandbox-speckle": "speckle",
}


def size(text: str) -> int:
    """``64MiB``, ``8M``, ``1GiB``, ``1048576`` -> bytes."""
    t = text.strip().lower().removesuffix("b").removesuffix("i")
    mult = {"k": 1024, "m": MiB, "g": 1024 * MiB, "t": 1024 * 1024 * MiB}.get(t[-1:], 1)
    number = t[:-1] if t[-1:] in "kmgt" else t
    try:
        value = int(float(number) * mult)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (try 64MiB)") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"size must be positive: {text!r}")
    return value


def positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text!r}")
    return value


def state_dir_default() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "upload-engine"


# ---- the engine ------------------------------------------------------------------------------


def add_engine_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("engine")
    g.add_argument("--concurrency", type=positive, default=8, help="PUTs in flight (default 8)")
    g.add_argument("--part-size", type=size, default=64 * MiB, help="preferred (default 64MiB)")
    g.add_argument("--chunk-size", type=size, default=1 * MiB, help=argparse.SUPPRESS)
    g.add_argument("--max-attempts", type=positive, default=8, help="per part (default 8)")
    g.add_argument("--stall-timeout", type=float, default=30.0, help="seconds (default 30)")
    g.add_argument("--no-verify-etag", action="store_true", help="skip the ETag/MD5 check")
    g.add_argument(
        "--insecure", action="store_true", help="do not verify TLS certificates (prints a warning)"
    )
    g.add_argument("--json", action="store_true", help="NDJSON events and a JSON result on stdout")
    g.add_argument(
        "--loop", choices=("auto", "asyncio", "uvloop"), default="auto", help=argparse.SUPPRESS
    )


def engine_config(args: argparse.Namespace) -> UploadConfig:
    """The engine options of a command as the engine's ``UploadConfig``."""
    same = ("concurrency", "part_size", "chunk_size", "max_attempts", "stall_timeout")
    return UploadConfig(
        **{name: getattr(args, name) for name in same},
        verify_etag=not args.no_verify_etag,
        verify_tls=not args.insecure,
    )


def view_mode(args: argparse.Namespace) -> Mode:
    if args.json:
        return "json"
    return "tty" if sys.stderr.isatty() else "log"


# ---- destinations ----------------------------------------------------------------------------


def add_destination_options(p: argparse.ArgumentParser, *, tree: bool) -> None:
    """``--to`` and each destination's flags: for ``upload`` (any destination, files given one
    by one) or, with ``tree``, for ``import`` (a directory: ``TREE_DESTINATIONS``)."""
    if tree:
        p.add_argument(
            "--to",
            required=True,
            choices=TREE_DESTINATIONS,
            help="sandbox: an in-process sandbox of both platforms",
        )
    else:
        p.add_argument("--to", required=True, metavar="DEST", help=DESTINATIONS)
    mp = p.add_argument_group("matterport")
    mp.add_argument("--organization", help="Matterport organization id")
    if not tree:
        mp.add_argument("--name", help="model name (default: the first file's name)")
        mp.add_argument("--description", help="model description")
    mp.add_argument("--endpoint", help="Matterport Import API endpoint URL")
    sp = p.add_argument_group("speckle")
    sp.add_argument("--project", help="Speckle project id")
    sp.add_argument("--model", help="model name (created when missing; default: each file's stem)")
    if not tree:
        sp.add_argument("--model-id", help="existing model id")
    sp.add_argument("--server", help="Speckle server URL")
    if tree:
        p.add_argument("--sandbox-faults", default="", metavar="SPEC", help=argparse.SUPPRESS)
        return
    s3 = p.add_argument_group("s3")
    s3.add_argument("--endpoint-url", help="S3-compatible endpoint (path-style addressing)")
    s3.add_argument("--region", help="AWS region")
    s3.add_argument("--profile", help="AWS profile")
    sb = p.add_argument_group("sandbox (in-process, for --to sandbox*)")
    sb.add_argument(
        "--sandbox-faults", default="", metavar="SPEC", help='e.g. "503=0.05,reset=0.02"'
    )
    sb.add_argument("--sandbox-dir", type=Path, help="keep the sandbox's bytes here")


def destination_kind(to: str) -> Kind:
    """What ``--to`` names (``sandbox-matterport`` is a Matterport), or a usage error."""
    if to.startswith("s3://"):
        return "s3"
    try:
        return _KINDS[to]
    except KeyError:
        raise ConfigError(f"unknown destination {to!r}; use one of: {DESTINATIONS}") from None


def check_destination(args: argparse.Namespace, *, files: int = 1) -> None:
    """The destination flags fit ``--to`` (and ``files`` files): else a usage error, before
    anything is read or sent."""
    kind = destination_kind(args.to)
    if kind == "speckle" and args.model and getattr(args, "model_id", None):
        raise ConfigError("give --model or --model-id, not both")
    if args.to == "matterport" and not args.organization:
        raise ConfigError("--organization is required for --to matterport")
    if args.to == "speckle" and not args.project:
        raise ConfigError("--project is required for --to speckle")
    if kind == "s3":
        _, key = parse_s3_url(args.to)
        if files > 1 and key and not key.endswith("/"):
            raise ConfigError("several files need a key prefix ending in '/' (s3://BUCKET/prefix/)")
