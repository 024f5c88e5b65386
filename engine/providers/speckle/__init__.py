"""Speckle file ingestion: one presigned PUT, then a GraphQL-driven ingestion into a model version.

Per file (``POST {server}/graphql``, ``Authorization: Bearer <token>``): refuse what Speckle
cannot take before any request; find or create the model; ``generateUploadUrl``; one PUT of the
whole file; ``startFileIngestion`` with the storage's ETag; poll the ingestion until it made a
version or failed for good. Each module keeps the rules of its step:

- ``documents``: the GraphQL documents, status names and limits (the wire vocabulary);
- ``errors``:    ``classify`` (GraphQL failures, mapped once), ``SpeckleCredentials``,
                 ``check_local`` (size and format, refused locally);
- ``target``:    ``SpeckleFileTarget``: the model, the upload URL, the PUT, resuming;
- ``ingestion``: starting (not idempotent), recovering and waiting for the ingestion;
- ``results``:   ``SpeckleVersion`` (the typed remote) and ``SpeckleResult``;
- ``provider``:  ``Speckle``, the client its entry point ``upload`` runs on an uploader's
                 services.
"""

from __future__ import annotations

from engine.providers.speckle.documents import (
    DEFAULT_SERVER,
    MAX_UPLOAD_SIZE,
    START_FILE_INGESTION,
)
from engine.providers.speckle.errors import SpeckleCredentials, check_local, classify
from engine.providers.speckle.ingestion import Ingestion
from engine.providers.speckle.provider import Speckle
from engine.providers.speckle.results import SpeckleResult, SpeckleVersion
from engine.providers.speckle.target import SpeckleFileTarget

__all__ = [
    "DEFAULT_SERVER",
    "MAX_UPLOAD_SIZE",
    "START_FILE_INGESTION",
    "Ingestion",
    "Speckle",
    "SpeckleCredentials",
    "SpeckleFileTarget",
    "SpeckleResult",
    "SpeckleVersion",
    "check_local",
    "classify",
]
