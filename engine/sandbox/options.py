"""The sandbox's serve options, shared by ``python -m engine.sandbox`` and ``upload-engine
sandbox serve``: :func:`add_serve_options` defines them, :func:`config_from_args` reads them.

Rules this module keeps:

* **One set of options, one meaning.** Both entry points offer exactly these, with these names
  and defaults: ``--host`` (``127.0.0.1``), ``--port`` (8700; 0 picks an ephemeral port),
  ``--data-dir`` (default: a temporary directory, removed on exit), ``--discard``, ``--storage
  S3_URL`` (default: the sandbox's own blob store), ``--storage-mode`` (``s3``; also ``kms``,
  ``sse-c``, ``azure``: which real store the own blob store answers as), ``--faults SPEC`` (none),
  ``--seed`` (0), ``--latency`` (0 seconds per blob request), ``--control-latency`` (0 seconds
  per control-plane request: a simulation knob, not a service behaviour) and ``--min-part-size``
  (5 MiB).
* ``--control-latency`` takes a finite number of seconds ``>= 0`` (argparse refuses others).
* ``--min-part-size`` takes ``64MiB``, ``8M``, ``1GiB`` or plain bytes (``1048576``), more than
  0; it is the smallest part (but the last) that both the blob store and the Matterport plane
  accept, so the two never disagree.
* **Checks, in this order**, each refusal one ``ValueError`` line naming the option: ``--storage``
  must be a usable ``s3://`` URL; ``--faults`` and ``--storage-mode`` do not go with ``--storage``
  (they apply to the sandbox's own blob store); the fault spec must parse; then
  :class:`SandboxConfig`'s own checks (e.g. ``--latency`` with ``--storage``). Callers turn the
  ``ValueError`` into their usage error.
* Importing this module is cheap: no server, no control plane, no botocore (the Matterport
  config and the S3 URL parser are imported when a config is made).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from pathlib import Path
from typing import Final

from engine.sandbox.blobstore import GiB, KiB, MiB
from engine.sandbox.blobstore.modes import MODES
from engine.sandbox.config import SandboxConfig
from engine.sandbox.faults import FaultPlan

__all__ = ["DEFAULT_PORT", "add_serve_options", "config_from_args", "parse_seconds", "parse_size"]

DEFAULT_PORT: Final = 8700
_UNITS: Final = {"k": KiB, "m": MiB, "g": GiB, "t": 1024 * GiB}


def parse_size(text: str) -> int:
    """``64MiB``, ``8M``, ``1GiB``, ``1048576`` -> bytes (an argparse ``type``; must be > 0)."""
    t = text.strip().lower().removesuffix("b").removesuffix("i")
    unit = t[-1:]
    multiplier = _UNITS.get(unit, 1)
    number = t[:-1] if unit in "kmgt" else t
    try:
        value = int(float(number) * multiplier)
    except (ValueError, OverflowError):
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (try 64MiB)") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"size must be positive: {text!r}")
    return value


def parse_seconds(text: str) -> float:
    """``0.05`` -> seconds (an argparse ``type``; a finite number ``>= 0``)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not (value >= 0.0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"seconds must be finite and >= 0: {text!r}")
    return value


def add_serve_options(parser: argparse.ArgumentParser) -> None:
    """Add the sandbox's serve options (see the module docstring) to ``parser``."""
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"default {DEFAULT_PORT}; 0: any free port"
    )
    parser.add_argument(
        "--data-dir", type=Path, default=None, help="default: a temporary directory"
    )
    parser.add_argument(
        "--discard", action="store_true", help="hash and count bytes, store nothing"
    )
    parser.add_argument(
        "--storage",
        metavar="S3_URL",
        default=None,
        help="keep blobs in S3-compatible storage: s3://BUCKET[/PREFIX]?endpoint_url=URL"
        "[&public_endpoint_url=URL][&region=R]; credentials from AWS_ACCESS_KEY_ID/"
        "AWS_SECRET_ACCESS_KEY; --faults do not apply to it",
    )
    parser.add_argument(
        "--storage-mode",
        choices=MODES,
        default="s3",
        help="answer as plain S3 (default), an SSE-KMS bucket (kms: ETags are not MD5s), SSE-C "
        "uploads (sse-c: parts need the customer key), or Azure Blob Storage's Put Blob behind "
        "a SAS (azure)",
    )
    parser.add_argument("--faults", default="", help='e.g. "503=0.05,reset=0.02,throttle=0.05"')
    parser.add_argument("--seed", type=int, default=0, help="fault seed")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds per blob request")
    parser.add_argument(
        "--control-latency",
        metavar="S",
        type=parse_seconds,
        default=0.0,
        help="simulation knob, not a service behaviour: answer every control-plane request "
        "(GraphQL, Speckle REST) S seconds later, as over a wide-area link (default 0; "
        "--latency is the blob store's)",
    )
    parser.add_argument(
        "--min-part-size",
        type=parse_size,
        default=5 * MiB,
        help="smallest part (but the last) the blob store and Matterport accept (default 5MiB)",
    )


def config_from_args(args: argparse.Namespace) -> SandboxConfig:
    """The :class:`SandboxConfig` that options added by :func:`add_serve_options` describe.

    Raises ``ValueError`` (one line, naming the option) for options that do not fit together.
    """
    from engine.sandbox import matterport

    storage = _storage_url(args)
    faults = _fault_plan(args)
    return SandboxConfig(
        host=args.host,
        port=args.port,
        data_dir=args.data_dir,
        discard=args.discard,
        storage_url=storage,
        storage_mode=args.storage_mode,
        faults=faults,
        min_part_size=args.min_part_size,
        matterport=matterport.MatterportSandboxConfig(min_part_size=args.min_part_size),
        control_latency=args.control_latency,
    )


def _storage_url(args: argparse.Namespace) -> str | None:
    """``--storage``, checked: a usable S3 URL, and no ``--faults`` beside it."""
    from engine.sandbox.s3store import S3Location

    url: str | None = args.storage
    if url is None:
        return None
    try:
        S3Location.parse(url)
    except ValueError as exc:
        raise ValueError(f"--storage: {exc}") from None
    if args.faults:
        raise ValueError("--faults apply to the sandbox's own blob store, not to --storage")
    if args.storage_mode != "s3":
        raise ValueError("--storage-mode applies to the sandbox's own blob store, not to --storage")
    return url


def _fault_plan(args: argparse.Namespace) -> FaultPlan:
    """``--faults`` with ``--seed`` and ``--latency``, checked."""
    spec: str = args.faults
    try:
        plan = FaultPlan.from_spec(spec, seed=args.seed)
    except ValueError as exc:
        raise ValueError(f"bad fault spec {spec!r}: {exc}") from None
    try:
        return dataclasses.replace(plan, latency=args.latency)
    except ValueError as exc:
        raise ValueError(f"--latency: {exc}") from None
