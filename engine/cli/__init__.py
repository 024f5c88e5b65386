"""The ``upload-engine`` command line (``engine.cli:main``; also ``python -m engine``).

One module per command (``upload``, ``import_``, ``demo``, ``sandbox``) on shared ones:
``options`` (flags and their checks), ``credentials``, ``destinations`` (what ``--to`` names),
``output`` (outcome, exit codes, summary lines) and ``progress`` (rendering of events).
"""

from engine.cli.app import build_parser, main

__all__ = ["build_parser", "main"]
