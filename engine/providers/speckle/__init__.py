"""Speckle file ingestion: one upload of the file, then its ingestion into a model version.

Per file (``POST {server}/graphql``, ``Authorization: Bearer <token>``): refuse what Speckle
cannot take before any request; learn what the server offers (once per uploader) and refuse a
file above its limit; find or create the model; upload the file (v3 and v2: ``generateUploadUrl``
and one PUT; servers without presigned uploads: the legacy multipart POST); start the ingestion
(v3 ``startFileIngestion``, v2 ``startFileImport``); wait for it — live over the
``projectModelIngestionUpdated`` subscription where the server offers it, else by polling —
until it made a version or failed for good. Each module keeps the rules of its step:

- ``documents``: the GraphQL documents, status names and limits (the wire vocabulary);
- ``errors``:    ``classify`` (GraphQL failures, mapped once), ``SpeckleCredentials``,
                 ``check_local`` (size and format, refused locally), ``input_refusal``;
- ``server``:    what a server offers (``detect``, ``ServerApi``) and what its files share
                 (``SpeckleSession``: the API, the ``Pacer``, the live connections);
- ``pacing``:    ``Pacer``: requests spaced out from ``X-RateLimit-Remaining``;
- ``live``:      the ``graphql-ws`` subscription connections, one per project;
- ``status``:    reading a status from any API, and ``Watch``, the wait for the end;
- ``target``:    ``SpeckleFileTarget``: the model, the upload URL, the PUT, resuming;
- ``ingestion``: starting (not idempotent), recovering and waiting (``Ingestion``; the v3
                 ``IngestionFlow``);
- ``legacy``:    the v2 ``FileImportFlow`` and the legacy REST upload (``RestFlow``);
- ``results``:   ``SpeckleVersion`` (the typed remote) and ``SpeckleResult``;
- ``provider``:  ``Speckle``, the client its entry point ``upload`` runs on an uploader's
                 services.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from engine.lazy import exports

if TYPE_CHECKING:
    from engine.providers.speckle.documents import (
        API_CHOICES,
        DEFAULT_SERVER,
        MAX_UPLOAD_SIZE,
        START_FILE_INGESTION,
    )
    from engine.providers.speckle.errors import SpeckleCredentials, check_local, classify
    from engine.providers.speckle.ingestion import Ingestion
    from engine.providers.speckle.provider import Speckle
    from engine.providers.speckle.results import SpeckleResult, SpeckleVersion
    from engine.providers.speckle.server import ServerApi
    from engine.providers.speckle.target import SpeckleFileTarget

__all__ = [
    "API_CHOICES",
    "DEFAULT_SERVER",
    "MAX_UPLOAD_SIZE",
    "START_FILE_INGESTION",
    "Ingestion",
    "ServerApi",
    "Speckle",
    "SpeckleCredentials",
    "SpeckleFileTarget",
    "SpeckleResult",
    "SpeckleVersion",
    "check_local",
    "classify",
]

#: the modules of the names above, for the interpreter (mypy reads the imports)
_HOMES = {
    "engine.providers.speckle.documents": "API_CHOICES DEFAULT_SERVER MAX_UPLOAD_SIZE "
    "START_FILE_INGESTION",
    "engine.providers.speckle.errors": "SpeckleCredentials check_local classify",
    "engine.providers.speckle.ingestion": "Ingestion",
    "engine.providers.speckle.provider": "Speckle",
    "engine.providers.speckle.results": "SpeckleResult SpeckleVersion",
    "engine.providers.speckle.server": "ServerApi",
    "engine.providers.speckle.target": "SpeckleFileTarget",
}

if not TYPE_CHECKING:  # a module __getattr__ seen by mypy would make every name Any
    __getattr__, __dir__ = exports(__name__, _HOMES)
