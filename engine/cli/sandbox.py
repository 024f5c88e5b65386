"""``upload-engine sandbox serve``: the local sandbox of both platforms and blob storage, until
Ctrl-C.

Its options are the sandbox's own (``engine.sandbox.options``, shared with ``python -m
engine.sandbox.server``). They are added to the ``serve`` parser only when that parser is used,
so that building the command line (``upload-engine upload ...``) does not import the sandbox.
"""

from __future__ import annotations

import argparse

from engine.cli.app import DeferredParser
from engine.cli.output import Outcome
from engine.errors import ConfigError

__all__ = ["register", "run_serve"]


def register(sand: argparse.ArgumentParser) -> None:
    """The ``sandbox`` actions (its name and line in ``--help``: ``app.COMMANDS``)."""
    actions = sand.add_subparsers(
        dest="sandbox_command", required=True, metavar="ACTION", parser_class=DeferredParser
    )
    serve = actions.add_parser("serve", help="run the sandbox until Ctrl-C", setup=_serve_options)
    serve.set_defaults(runner=run_serve)


def _serve_options(parser: argparse.ArgumentParser) -> None:
    from engine.sandbox.options import add_serve_options

    add_serve_options(parser)


async def run_serve(args: argparse.Namespace) -> Outcome:
    from engine.sandbox.blobstore import BlobError
    from engine.sandbox.options import config_from_args
    from engine.sandbox.server import serve

    try:
        config = config_from_args(args)
    except ValueError as exc:  # options that do not fit together, the option named
        raise ConfigError(str(exc)) from None
    try:
        await serve(config)
    except OSError as exc:
        raise ConfigError(f"cannot serve on {args.host}:{args.port}: {exc.strerror}") from None
    except BlobError as exc:
        raise ConfigError(f"sandbox storage {args.storage}: {exc.code}: {exc.message}") from None
    return Outcome("")
