"""The ``upload-engine`` command line (``engine.cli:main``; also ``python -m engine``).

One module per command (``upload``, ``import_``, ``demo``, ``sandbox``, ``config_cmd``,
``completion``) on shared ones: ``options`` (flags and their checks), ``settings`` (config
file and ``UPLOAD_ENGINE_*``), ``verbosity`` (``-q``/``-v``), ``credentials``,
``destinations`` (what ``--to`` names), ``output`` (outcome, the exit-code table, JSON lines,
summary lines), ``progress`` (rendering of events) and ``tables``.
"""

from engine.cli.app import build_parser, main

__all__ = ["build_parser", "main"]
