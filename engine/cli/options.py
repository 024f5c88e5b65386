"""Options more than one command takes: sizes, the engine's knobs, the destination flags (and
their checks), the state directory and the view mode. Each is written here once."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from engine.config import MiB, UploadConfig
from engine.errors import ConfigError
from engine.providers.speckle import API_CHOICES

if TYPE_CHECKING:
    from engine.cli.progress import Mode

__all__ = [
    "DESTINATIONS",
    "JOURNAL",
    "TREE_DESTINATIONS",
    "Kind",
    "add_destination_options",
    "add_engine_options",
    "bandwidth",
    "check_destination",
    "destination_kind",
    "engine_config",
    "positive",
    "seconds",
    "size",
    "split_s3",
    "state_dir_default",
    "view_mode",
    "view_options",
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


def bandwidth(text: str) -> float:
    """``--bwlimit``: ``10MiB/s``, ``10M``, ``500K`` -> bytes per second (binary units, as
    rclone reads them; a plain number is bytes per second)."""
    return float(size(text.strip().removesuffix("/s").removesuffix("/S")))


def positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text!r}")
    return value


def seconds(text: str) -> float:
    """A positive number of seconds (``--processing-timeout``)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds: {text!r}")
    return value


def state_dir_default() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "upload-engine"


# ---- the engine ------------------------------------------------------------------------------


def add_engine_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("engine")
    # default None: the config file and UPLOAD_ENGINE_* fill these (engine.cli.settings)
    g.add_argument(
        "--concurrency",
        type=positive,
        default=None,
        help="a fixed number of PUTs in flight (default: adaptive, grown while goodput grows)",
    )
    g.add_argument(
        "--max-concurrency",
        type=positive,
        default=None,
        help="the most PUTs in flight the adaptive default may reach (default 64)",
    )
    g.add_argument(
        "--data-loops",
        type=positive,
        default=None,
        help="move HTTPS bytes on N event loops in threads (default: a worker thread per PUT "
        "on blocking sockets; 1: one loop)",
    )
    g.add_argument("--part-size", type=size, default=None, help="preferred (default 64MiB)")
    g.add_argument("--chunk-size", type=size, default=1 * MiB, help=argparse.SUPPRESS)
    g.add_argument("--max-attempts", type=positive, default=8, help="per part (default 8)")
    g.add_argument("--stall-timeout", type=float, default=30.0, help="seconds (default 30)")
    g.add_argument("--no-verify-etag", action="store_true", help="skip the ETag/MD5 check")
    g.add_argument(
        "--insecure", action="store_true", help="do not verify TLS certificates (prints a warning)"
    )
    g.add_argument(
        "--ca-bundle",
        metavar="FILE",
        help="trust the CA certificates in this PEM file, for every HTTPS endpoint (default: "
        "the system's, SSL_CERT_FILE / SSL_CERT_DIR; AWS_CA_BUNDLE for S3)",
    )
    g.add_argument(
        "--force",
        action="store_true",
        help="upload again what is already uploaded (a new object, version or model)",
    )
    g.add_argument(
        "--json", action="store_true", help="JSON lines on stdout, ending with one Result record"
    )
    g.add_argument(
        "--loop",
        choices=("auto", "asyncio", "uvloop"),
        default="auto",
        help="event loop (uvloop needs: pip install 'upload-engine[uvloop]')",
    )
    g.add_argument("--progress-interval", type=float, default=10.0, help=argparse.SUPPRESS)
    g.add_argument(
        "--bwlimit",
        type=bandwidth,
        metavar="RATE",
        help="send at most RATE per process, e.g. 10MiB/s (each cluster worker: its own cap)",
    )


def engine_config(args: argparse.Namespace) -> UploadConfig:
    """The engine options of a command as the engine's ``UploadConfig`` (an option left
    ``None``, not filled by ``settings.apply_settings``, takes the engine's default)."""
    same = (
        "concurrency",
        "max_concurrency",
        "data_loops",
        "part_size",
        "chunk_size",
        "max_attempts",
        "stall_timeout",
    )
    return UploadConfig(
        **{n: getattr(args, n) for n in same if getattr(args, n, None) is not None},
        verify_etag=not args.no_verify_etag,
        verify_tls=not args.insecure,
        bwlimit=getattr(args, "bwlimit", None),
        ca_bundle=getattr(args, "ca_bundle", None),
    )


def view_mode(args: argparse.Namespace) -> Mode:
    if args.json:
        return "json"
    return "tty" if sys.stderr.isatty() else "log"


def view_options(args: argparse.Namespace) -> dict[str, Any]:
    """The ``ProgressView`` keywords a command's flags decide (level, ``--part-size``, the
    interval of progress lines in logs)."""
    return {
        "level": getattr(args, "level", "NOTICE"),
        "part_size": getattr(args, "part_size", None),
        "interval": getattr(args, "progress_interval", 10.0),
    }


# ---- destinations ----------------------------------------------------------------------------


def add_destination_options(p: argparse.ArgumentParser, *, tree: bool) -> None:
    """``--to`` and each destination's flags: for ``upload`` (any destination, files given one
    by one) or, with ``tree``, for ``import`` (a directory: ``TREE_DESTINATIONS``)."""
    if tree:
        p.add_argument(
            "--to",
            required=True,
            metavar="DEST",
            help="matterport | speckle | sandbox (an in-process sandbox of both platforms) | "
            "s3://BUCKET/PREFIX/ (keys mirror the paths under DIR)",
        )
    else:
        p.add_argument("--to", required=True, metavar="DEST", help=DESTINATIONS)
    p.add_argument(
        "--processing-timeout",
        type=seconds,
        default=1800.0,
        metavar="SECONDS",
        help="how long to wait for the platform to process each file (default 1800)",
    )
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
    sp.add_argument(
        "--speckle-api",
        choices=API_CHOICES,
        default="auto",
        help="auto (ask the server) | v3 (startFileIngestion) | v2 (startFileImport) | "
        "rest (the legacy multipart upload)",
    )
    s3 = p.add_argument_group("s3")
    s3.add_argument("--endpoint-url", help="S3-compatible endpoint (path-style addressing)")
    s3.add_argument("--region", help="AWS region")
    s3.add_argument("--profile", help="AWS profile")
    if tree:
        p.add_argument("--sandbox-faults", default="", metavar="SPEC", help=argparse.SUPPRESS)
        return
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


def split_s3(to: str) -> tuple[str, str]:
    """``s3://BUCKET/KEY`` -> ``(BUCKET, KEY)``; the key may be a prefix ending in ``/`` or
    empty (``s3://BUCKET/``: the bucket's top)."""
    bucket, _, key = to.removeprefix("s3://").partition("/")
    if not to.startswith("s3://") or not bucket:
        raise ConfigError(f"an S3 destination reads s3://BUCKET/KEY or s3://BUCKET/PREFIX/: {to!r}")
    return bucket, key


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
        _, key = split_s3(args.to)
        if files > 1 and key and not key.endswith("/"):
            raise ConfigError("several files need a key prefix ending in '/' (s3://BUCKET/prefix/)")
