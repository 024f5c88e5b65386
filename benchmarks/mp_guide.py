"""The Matterport Import API guide's part-by-part approach, as a user would script it.

``python -m benchmarks.mp_guide --endpoint URL --organization ORG --file SCAN.e57``, with
``MATTERPORT_TOKEN_ID`` / ``MATTERPORT_TOKEN_SECRET`` in the environment. Written from the guide
(seed ``000``, steps 1 to 7; auth from seed ``001``: HTTP Basic with the token id and secret, sent
preemptively), with ``requests`` as the guide's ``curl`` is in Python:

1. ``addImportSession``; 2. ``addE57Object`` (clientId ``file1``); 3. ``beginUpload``;
4./5. for each part, one after the other: ``requestPartUpload`` (zero-based ``part``, that part's
``size``), then the part read into memory and sent with the method and headers it names, its
``ETag`` kept; 6. ``completeUpload`` with the ETags in part order; 7. ``commitImportSession``.

It does not wait for the model (the guide's steps end at the commit). The GraphQL documents are
the guide's, verbatim (``engine.providers.matterport.documents`` holds them as written there; the
import is strings only). It prints one JSON line: ``committed_at`` (``time.time()`` when the
commit was answered), ``bytes``, ``parts``, ``operations`` and ``control_seconds`` (the time
spent in GraphQL calls).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import requests

from engine.providers.matterport.documents import (
    ADD_E57_OBJECT,
    ADD_IMPORT_SESSION,
    BEGIN_UPLOAD,
    COMMIT_IMPORT_SESSION,
    COMPLETE_UPLOAD,
    REQUEST_PART_UPLOAD,
)

MiB = 1024 * 1024
CLIENT_ID = "file1"


class Guide:
    """One GraphQL session against the Import API endpoint (a ``requests.Session``)."""

    def __init__(self, endpoint: str, token_id: str, secret: str) -> None:
        self.endpoint = endpoint
        self.http = requests.Session()
        self.http.auth = (token_id, secret)  # requests sends Basic auth preemptively
        self.storage = requests.Session()  # the presigned URLs: no credentials of ours
        self.operations = 0
        self.seconds = 0.0  # in GraphQL calls

    def call(self, document: str, variables: dict[str, Any]) -> dict[str, Any]:
        self.operations += 1
        started = time.perf_counter()
        r = self.http.post(
            self.endpoint, json={"query": document, "variables": variables}, timeout=60
        )
        body = r.json()
        self.seconds += time.perf_counter() - started
        if r.status_code != 200 or body.get("errors"):
            raise SystemExit(f"GraphQL {r.status_code}: {body.get('errors')}")
        data: dict[str, Any] = body["data"]
        return data


def upload(args: argparse.Namespace) -> dict[str, Any]:
    path = Path(args.file)
    size = path.stat().st_size
    g = Guide(
        args.endpoint, os.environ["MATTERPORT_TOKEN_ID"], os.environ["MATTERPORT_TOKEN_SECRET"]
    )
    session = g.call(
        ADD_IMPORT_SESSION,
        {"organizationId": args.organization, "processType": "E57", "name": path.stem},
    )["addImportSession"]["id"]
    e57 = {
        "id": "e57",
        "file": {
            "clientId": CLIENT_ID,
            "name": path.name,
            "type": "application/octet-stream",
            "size": size,
        },
    }
    g.call(ADD_E57_OBJECT, {"importSessionId": session, "e57": e57})
    file = {"importSessionId": session, "importFileId": CLIENT_ID}
    g.call(BEGIN_UPLOAD, file)
    part_size = args.part_size * MiB
    completed = []
    with path.open("rb") as f:
        for part in range(max(1, -(-size // part_size))):
            data = f.read(part_size)
            grant = g.call(REQUEST_PART_UPLOAD, {**file, "part": part, "size": len(data)})
            grant = grant["requestPartUpload"]
            headers = {h["key"]: h["value"] for h in grant["headers"] or []}
            try:  # errors name the part, never the presigned URL (its signature)
                r = g.storage.request(grant["method"], grant["url"], data=data, headers=headers)
            except requests.RequestException as exc:
                raise SystemExit(f"PUT of part {part}: {type(exc).__name__}") from None
            if not r.ok:
                raise SystemExit(f"PUT of part {part}: HTTP {r.status_code}")
            completed.append({"headers": [{"key": "ETag", "value": r.headers["ETag"]}]})
    g.call(COMPLETE_UPLOAD, {**file, "completedParts": completed})
    g.call(COMMIT_IMPORT_SESSION, {"importSessionId": session})
    committed_at = time.time()
    return {
        "committed_at": committed_at,
        "bytes": size,
        "parts": len(completed),
        "operations": g.operations,
        "control_seconds": g.seconds,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--endpoint", required=True, help="the Import API's GraphQL URL")
    p.add_argument("--organization", required=True)
    p.add_argument("--file", required=True, help="the E57 file")
    p.add_argument("--part-size", type=int, default=64, help="MiB per part (default 64)")
    args = p.parse_args(argv)
    print(json.dumps(upload(args)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
