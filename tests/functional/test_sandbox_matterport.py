"""The sandbox's Matterport Import API over real HTTP on loopback, driven by raw aiohttp.

No engine client code: the documents are Matterport's own (copied verbatim from the Import API
guide), the PUTs are plain aiohttp requests, and the plane runs on a BlobStore in an app built
here. Covers the whole flow in the three part regimes, resume information, every error code,
the state machine, 64-bit sizes, and the E57 check at commit.
"""

from __future__ import annotations

import base64
import hashlib
import socket
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest
from aiohttp import web

from engine.sandbox.blobstore import BlobStore, StoredPart
from engine.sandbox.e57 import write_sample_e57
from engine.sandbox.matterport import (
    ApiError,
    MatterportPlane,
    MatterportSandboxConfig,
    check_completion,
    normalize_etag,
)

pytestmark = pytest.mark.anyio

KiB = 1024
MiB = 1024 * KiB
MIN_PART = 64 * KiB
TOKEN = ("sandbox-token-id", "sandbox-token-secret")
ORG = "sandbox-org"

# ---- Matterport's documents, verbatim from the Import API guide ----------------------------------

ADD_IMPORT_SESSION = """mutation addImportSession(
  $organizationId: ID!
  $processType: ProcessType!
  $name: String
  $description: String
) {
  addImportSession(
    organizationId: $organizationId
    processType: $processType
    name: $name
    description: $description
  ) {
    id
    organizationId
    created
    modified
    processType
    name
    description
  }
}"""

ADD_E57_OBJECT = """mutation AddE57Object($importSessionId: ID!, $e57: E57ObjectInput!) {
  addE57Object(importSessionId: $importSessionId, e57: $e57) {
    id
    clientId
    files {
      id
      clientId
      name
      type
      size
      uploadStatus
    }
  }
}"""

BEGIN_UPLOAD = """mutation beginUpload($importSessionId: ID!, $importFileId: ID!) {
  beginUpload(importSessionId: $importSessionId, importFileId: $importFileId) {
    id
    clientId
    name
    type
    size
    uploadStatus
  }
}"""

REQUEST_PART_UPLOAD = """mutation requestPartUpload(
  $importSessionId: ID!
  $importFileId: ID!
  $part: Int!
  $size: Long!
) {
  requestPartUpload(
    importSessionId: $importSessionId
    importFileId: $importFileId
    part: $part
    size: $size
  ) {
    url
    minSize
    maxSize
    headers {
      key
      value
    }
    method
    completed
    partNumber
  }
}"""

COMPLETE_UPLOAD = """mutation completeUpload(
  $importSessionId: ID!
  $importFileId: ID!
  $completedParts: [CompletedPartInput!]!
) {
  completeUpload(
    importSessionId: $importSessionId
    importFileId: $importFileId
    completedParts: $completedParts
  ) {
    id
    clientId
    name
    type
    size
    uploadStatus
  }
}"""

COMMIT_IMPORT_SESSION = """mutation commitImportSession($importSessionId: ID!) {
  commitImportSession(importSessionId: $importSessionId) {
    id
    name
    description
    created
    organizationId
    userId
    processType
    files {
      id
      clientId
      name
      type
      size
      uploadStatus
      numParts
    }
  }
}"""

IMPORT_SESSION = """query importSession($importSessionId: ID!) {
  importSession(importSessionId: $importSessionId) {
    id
    name
    description
    created
    organizationId
    userId
    modelId
    processType
    files {
      id
      clientId
      name
      type
      size
      uploadStatus
      numParts
      parts {
        minSize
        maxSize
        headers {
          key
          value
        }
      }
    }
  }
}"""

LIST_IMPORT_SESSIONS = """query listImportSessions($modelId: ID) {
  listImportSessions(modelId: $modelId) {
    results {
      id
      name
      created
      modified
      organizationId
      userId
      processType
      committed
    }
  }
}"""

PARTS_UPLOAD_STATUS = """query importFilePartsUploadStatus(
  $importSessionId: ID!
  $importFileId: ID!
) {
  importFilePartsUploadStatus(
    importSessionId: $importSessionId
    importFileId: $importFileId
  ) {
    eTag
    size
    partNumber
  }
}"""


# ---- harness -------------------------------------------------------------------------------------


@dataclass
class Reply:
    status: int
    headers: Mapping[str, str]
    body: dict[str, Any]

    @property
    def data(self) -> dict[str, Any]:
        assert "errors" not in self.body, self.body
        assert self.status == 200, self.body
        data = self.body["data"]
        assert isinstance(data, dict)
        return data

    @property
    def code(self) -> str:
        errors = self.body.get("errors")
        assert errors, self.body
        code = errors[0]["extensions"]["code"]
        assert isinstance(code, str)
        return code

    @property
    def message(self) -> str:
        message = self.body["errors"][0]["message"]
        assert isinstance(message, str)
        return message


class Api:
    """A raw GraphQL-over-HTTP caller for the Import API."""

    def __init__(self, http: aiohttp.ClientSession, base_url: str) -> None:
        self.http = http
        self.url = base_url + "/api/import/graph"
        self.auth: tuple[str, str] | None = TOKEN

    async def call(
        self,
        query: str,
        variables: Mapping[str, Any] | None = None,
        *,
        headers: Mapping[str, str] | None = None,
    ) -> Reply:
        sent = dict(headers or {})
        if self.auth is not None and "Authorization" not in sent:
            token = base64.b64encode(f"{self.auth[0]}:{self.auth[1]}".encode()).decode()
            sent["Authorization"] = f"Basic {token}"
        body: dict[str, Any] = {"query": query}
        if variables is not None:
            body["variables"] = dict(variables)
        async with self.http.post(self.url, json=body, headers=sent) as response:
            return Reply(response.status, dict(response.headers), await response.json())

    async def ok(self, query: str, variables: Mapping[str, Any] | None = None) -> dict[str, Any]:
        return (await self.call(query, variables)).data

    async def put(self, url: str, data: bytes, headers: Mapping[str, str] | None = None) -> str:
        async with self.http.put(url, data=data, headers=dict(headers or {})) as response:
            assert response.status == 200, await response.text()
            return response.headers["ETag"]


@dataclass
class Env:
    api: Api
    plane: MatterportPlane
    store: BlobStore
    tmp: Path


@asynccontextmanager
async def running(
    tmp_path: Path, config: MatterportSandboxConfig | None = None, *, discard: bool = False
) -> AsyncIterator[Env]:
    """The plane on a BlobStore, served on an ephemeral loopback port."""
    data_dir = None if discard else tmp_path / "blobs"
    store = BlobStore(data_dir, secret=b"test-secret", discard=discard, min_part_size=MIN_PART)
    plane = MatterportPlane(config or MatterportSandboxConfig(min_part_size=MIN_PART), store)
    app = web.Application()
    store.register(app)
    plane.register(app)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    sock = socket.create_server(("127.0.0.1", 0))
    try:
        await web.SockSite(runner, sock).start()
        store.base_url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        async with aiohttp.ClientSession() as http:
            yield Env(Api(http, store.base_url), plane, store, tmp_path)
    finally:
        await runner.cleanup()
        sock.close()


def config(**changes: Any) -> MatterportSandboxConfig:
    base: dict[str, Any] = {"min_part_size": MIN_PART, "model_delay": 0.05}
    base.update(changes)
    return MatterportSandboxConfig(**base)


async def new_session(api: Api, name: str = "My Import API Demo") -> str:
    data = await api.ok(
        ADD_IMPORT_SESSION,
        {
            "organizationId": ORG,
            "processType": "E57",
            "name": name,
            "description": "My Import API Demo description",
        },
    )
    session_id = data["addImportSession"]["id"]
    assert isinstance(session_id, str)
    return session_id


async def add_file(api: Api, session_id: str, size: int, client_id: str = "file1") -> None:
    await api.ok(
        ADD_E57_OBJECT,
        {
            "importSessionId": session_id,
            "e57": {
                "id": f"e57-{client_id}",
                "file": {
                    "clientId": client_id,
                    "name": "SampleDemo.e57",
                    "type": "application/octet-stream",
                    "size": size,
                },
            },
        },
    )


def ids(session_id: str, client_id: str = "file1") -> dict[str, Any]:
    return {"importSessionId": session_id, "importFileId": client_id}


async def upload_part(api: Api, session_id: str, part: int, data: bytes) -> str:
    """requestPartUpload + PUT; returns the ETag as the storage answered it (quoted)."""
    reply = await api.ok(REQUEST_PART_UPLOAD, {**ids(session_id), "part": part, "size": len(data)})
    upload = reply["requestPartUpload"]
    assert upload["method"] == "PUT"
    headers = {h["key"]: h["value"] for h in upload["headers"]}
    return await api.put(upload["url"], data, headers)


def completed_parts(etags: list[str]) -> list[dict[str, Any]]:
    return [{"headers": [{"key": "ETag", "value": etag}]} for etag in etags]


def split(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


async def staged_file(env: Env, size: int = 160 * KiB) -> tuple[str, bytes, list[str]]:
    """A session with one E57 file whose parts (MIN_PART each) are all stored, not completed."""
    path = env.tmp / "scan.e57"
    write_sample_e57(path, size, seed=1)
    data = path.read_bytes()
    session_id = await new_session(env.api)
    await add_file(env.api, session_id, len(data))
    await env.api.ok(BEGIN_UPLOAD, ids(session_id))
    etags = [
        await upload_part(env.api, session_id, i, chunk)
        for i, chunk in enumerate(split(data, MIN_PART))
    ]
    return session_id, data, etags


async def wait_model(api: Api, session_id: str) -> dict[str, Any]:
    with anyio.fail_after(5):
        while True:
            session = (await api.ok(IMPORT_SESSION, {"importSessionId": session_id}))[
                "importSession"
            ]
            if session["modelId"] is not None:
                return dict(session)
            await anyio.sleep(0.02)


# ---- the whole flow ------------------------------------------------------------------------------


async def test_full_flow_three_parts_with_the_guides_documents(tmp_path: Path) -> None:
    async with running(tmp_path, config()) as env:
        api = env.api
        path = tmp_path / "scan.e57"
        source_md5 = write_sample_e57(path, 160 * KiB, seed=3)
        data = path.read_bytes()
        assert len(data) == 160 * KiB

        created = (
            await api.ok(
                ADD_IMPORT_SESSION,
                {
                    "organizationId": ORG,
                    "processType": "E57",
                    "name": "My Import API Demo",
                    "description": "My Import API Demo description",
                },
            )
        )["addImportSession"]
        session_id = created["id"]
        assert created["organizationId"] == ORG
        assert created["processType"] == "E57"
        assert created["name"] == "My Import API Demo"
        assert created["created"].endswith("Z") and len(created["created"]) == 20

        added = (
            await api.ok(
                ADD_E57_OBJECT,
                {
                    "importSessionId": session_id,
                    "e57": {
                        "id": "e57",
                        "file": {
                            "clientId": "file1",
                            "name": "SampleDemo.e57",
                            "type": "application/octet-stream",
                            "size": len(data),
                        },
                    },
                },
            )
        )["addE57Object"]
        assert added["clientId"] == "e57"
        assert added["files"][0]["clientId"] == "file1"
        assert added["files"][0]["uploadStatus"] == "PENDING"
        assert added["files"][0]["size"] == len(data)

        begun = (await api.ok(BEGIN_UPLOAD, ids(session_id)))["beginUpload"]
        assert begun["uploadStatus"] == "STARTED"
        assert begun["id"] == added["files"][0]["id"]

        etags = []
        for part, chunk in enumerate(split(data, MIN_PART)):
            upload = (
                await api.ok(
                    REQUEST_PART_UPLOAD, {**ids(session_id), "part": part, "size": len(chunk)}
                )
            )["requestPartUpload"]
            assert upload["minSize"] == MIN_PART
            assert upload["maxSize"] == 5 * 1024 * MiB
            assert upload["headers"] == []
            assert upload["method"] == "PUT"
            assert upload["completed"] is False
            assert upload["partNumber"] == part
            etags.append(await api.put(upload["url"], chunk))
        assert len(etags) == 3

        status = (await api.ok(PARTS_UPLOAD_STATUS, ids(session_id)))["importFilePartsUploadStatus"]
        assert [p["partNumber"] for p in status] == [0, 1, 2]
        assert [p["size"] for p in status] == [MIN_PART, MIN_PART, 32 * KiB]
        assert [p["eTag"] for p in status] == etags

        # Matterport's example sends the ETags without their quotes.
        unquoted = [etag.strip('"') for etag in etags]
        done = (
            await api.ok(
                COMPLETE_UPLOAD, {**ids(session_id), "completedParts": completed_parts(unquoted)}
            )
        )["completeUpload"]
        assert done["uploadStatus"] == "COMPLETED"

        committed = (await api.ok(COMMIT_IMPORT_SESSION, {"importSessionId": session_id}))[
            "commitImportSession"
        ]
        assert committed["id"] == session_id
        assert committed["files"] == []  # as in the guide's sample response
        assert committed["userId"]

        session = await wait_model(api, session_id)
        assert len(session["modelId"]) == 11
        assert session["files"][0]["uploadStatus"] == "COMPLETED"
        assert session["files"][0]["numParts"] is None
        assert session["files"][0]["parts"] is None

        listed = (await api.ok(LIST_IMPORT_SESSIONS, {"modelId": session["modelId"]}))[
            "listImportSessions"
        ]["results"]
        assert [s["id"] for s in listed] == [session_id]
        assert listed[0]["committed"] is True
        other = await api.ok(LIST_IMPORT_SESSIONS, {"modelId": "NoSuchModel"})
        assert other["listImportSessions"]["results"] == []

        assert env.plane.md5_of(session_id, "file1") == source_md5
        assert env.plane.session(session_id).failure is None
        assert env.plane.calls["requestPartUpload"] == 3
        assert env.plane.call_log[:4] == [
            "addImportSession",
            "addE57Object",
            "beginUpload",
            "requestPartUpload",
        ]
        assert env.store.stats()["requests"] == 3  # the PUTs
        stats = env.plane.stats()
        assert stats["models"] == 1 and stats["calls"]["completeUpload"] == 1


async def test_single_part_regime(tmp_path: Path) -> None:
    async with running(tmp_path, config(single_part=True)) as env:
        api = env.api
        path = tmp_path / "scan.e57"
        source_md5 = write_sample_e57(path, 100 * KiB, seed=4)
        data = path.read_bytes()
        session_id = await new_session(api)
        await add_file(api, session_id, len(data))
        await api.ok(BEGIN_UPLOAD, ids(session_id))

        smaller = await api.call(REQUEST_PART_UPLOAD, {**ids(session_id), "part": 0, "size": 10})
        assert smaller.code == "request.invalid"
        second = await api.call(
            REQUEST_PART_UPLOAD, {**ids(session_id), "part": 1, "size": len(data)}
        )
        assert second.code == "request.invalid"

        upload = (
            await api.ok(REQUEST_PART_UPLOAD, {**ids(session_id), "part": 0, "size": len(data)})
        )["requestPartUpload"]
        assert upload["minSize"] == upload["maxSize"] == len(data)
        assert upload["partNumber"] == 0
        etag = await api.put(upload["url"], data)
        assert etag.strip('"') == hashlib.md5(data).hexdigest()
        await api.ok(
            COMPLETE_UPLOAD, {**ids(session_id), "completedParts": completed_parts([etag])}
        )
        await api.ok(COMMIT_IMPORT_SESSION, {"importSessionId": session_id})
        await wait_model(api, session_id)
        assert env.plane.md5_of(session_id, "file1") == source_md5


async def test_single_part_refuses_a_file_above_max_part_size(tmp_path: Path) -> None:
    async with running(tmp_path, config(single_part=True, max_part_size=MiB)) as env:
        session_id = await new_session(env.api)
        await add_file(env.api, session_id, 2 * MiB)
        await env.api.ok(BEGIN_UPLOAD, ids(session_id))
        reply = await env.api.call(
            REQUEST_PART_UPLOAD, {**ids(session_id), "part": 0, "size": 2 * MiB}
        )
        assert reply.code == "request.invalid"
        assert "single-part" in reply.message


async def test_hundred_mib_minimum_is_announced_and_enforced(tmp_path: Path) -> None:
    async with running(tmp_path, config(min_part_size=100 * MiB)) as env:
        api = env.api
        session_id = await new_session(api)
        await add_file(api, session_id, 3 * KiB)
        await api.ok(BEGIN_UPLOAD, ids(session_id))
        upload = (await api.ok(REQUEST_PART_UPLOAD, {**ids(session_id), "part": 0, "size": 2048}))[
            "requestPartUpload"
        ]
        assert upload["minSize"] == 100 * MiB
        first = await api.put(upload["url"], b"a" * 2048)
        second = await upload_part(api, session_id, 1, b"b" * 1024)
        reply = await api.call(
            COMPLETE_UPLOAD, {**ids(session_id), "completedParts": completed_parts([first, second])}
        )
        assert reply.code == "request.invalid"
        assert "part 0 is 2048 bytes, below minSize" in reply.message


async def test_a_small_file_is_one_last_part_under_a_large_minimum(tmp_path: Path) -> None:
    async with running(tmp_path, config(min_part_size=100 * MiB)) as env:
        path = tmp_path / "small.e57"
        md5 = write_sample_e57(path, 5000)
        data = path.read_bytes()
        session_id = await new_session(env.api)
        await add_file(env.api, session_id, len(data))
        await env.api.ok(BEGIN_UPLOAD, ids(session_id))
        etag = await upload_part(env.api, session_id, 0, data)
        await env.api.ok(
            COMPLETE_UPLOAD, {**ids(session_id), "completedParts": completed_parts([etag])}
        )
        await env.api.ok(COMMIT_IMPORT_SESSION, {"importSessionId": session_id})
        session = await env.plane.wait_processed(session_id)
        assert session.model_id is not None
        assert env.plane.md5_of(session_id, "file1") == md5


async def test_a_session_with_two_files(tmp_path: Path) -> None:
    async with running(tmp_path, config()) as env:
        api = env.api
        session_id = await new_session(api)
        sources = {}
        for client_id, seed in (("a", 1), ("b", 2)):
            path = tmp_path / f"{client_id}.e57"
            sources[client_id] = write_sample_e57(path, 70 * KiB, seed=seed)
            data = path.read_bytes()
            await add_file(api, session_id, len(data), client_id)
            await api.ok(BEGIN_UPLOAD, ids(session_id, client_id))
            etags = []
            for part, chunk in enumerate(split(data, MIN_PART)):
                request = {**ids(session_id, client_id), "part": part, "size": len(chunk)}
                upload = (await api.ok(REQUEST_PART_UPLOAD, request))["requestPartUpload"]
                etags.append(await api.put(upload["url"], chunk))
            await api.ok(
                COMPLETE_UPLOAD,
                {**ids(session_id, client_id), "completedParts": completed_parts(etags)},
            )
        await api.ok(COMMIT_IMPORT_SESSION, {"importSessionId": session_id})
        await wait_model(api, session_id)
        for client_id, md5 in sources.items():
            assert env.plane.md5_of(session_id, client_id) == md5


# ---- resume information --------------------------------------------------------------------------


async def test_resume_from_parts_status_and_completed_flag(tmp_path: Path) -> None:
    async with running(tmp_path, config()) as env:
        api = env.api
        path = tmp_path / "scan.e57"
        write_sample_e57(path, 160 * KiB, seed=5)
        data = path.read_bytes()
        chunks = split(data, MIN_PART)
        session_id = await new_session(api)
        await add_file(api, session_id, len(data))

        pending = await api.ok(PARTS_UPLOAD_STATUS, ids(session_id))
        assert pending["importFilePartsUploadStatus"] == []

        await api.ok(BEGIN_UPLOAD, ids(session_id))
        etags = {0: await upload_part(api, session_id, 0, chunks[0])}
        etags[2] = await upload_part(api, session_id, 2, chunks[2])

        # A "crashed" client comes back: what is stored, and which URLs it still needs.
        status = (await api.ok(PARTS_UPLOAD_STATUS, ids(session_id)))["importFilePartsUploadStatus"]
        assert {p["partNumber"]: p["eTag"] for p in status} == etags
        for part, stored in ((0, True), (1, False), (2, True)):
            reply = await api.ok(
                REQUEST_PART_UPLOAD, {**ids(session_id), "part": part, "size": len(chunks[part])}
            )
            assert reply["requestPartUpload"]["completed"] is stored

        # While STARTED, importSession shows the part uploads requested so far.
        session = (await api.ok(IMPORT_SESSION, {"importSessionId": session_id}))["importSession"]
        assert session["files"][0]["numParts"] == 3
        assert session["files"][0]["parts"][0]["minSize"] == MIN_PART

        # beginUpload again (idempotent) keeps the stored parts.
        again = (await api.ok(BEGIN_UPLOAD, ids(session_id)))["beginUpload"]
        assert again["uploadStatus"] == "STARTED"
        assert (
            len((await api.ok(PARTS_UPLOAD_STATUS, ids(session_id)))["importFilePartsUploadStatus"])
            == 2
        )

        etags[1] = await upload_part(api, session_id, 1, chunks[1])
        ordered = [etags[i] for i in range(3)]
        await api.ok(
            COMPLETE_UPLOAD, {**ids(session_id), "completedParts": completed_parts(ordered)}
        )
        final = (await api.ok(PARTS_UPLOAD_STATUS, ids(session_id)))["importFilePartsUploadStatus"]
        assert [p["eTag"] for p in final] == ordered


async def test_reuploading_a_part_overwrites_it(tmp_path: Path) -> None:
    async with running(tmp_path, config()) as env:
        session_id, data, etags = await staged_file(env)
        garbage = b"x" * MIN_PART
        wrong = await upload_part(env.api, session_id, 1, garbage)
        reply = await env.api.call(
            COMPLETE_UPLOAD, {**ids(session_id), "completedParts": completed_parts(etags)}
        )
        assert reply.code == "request.invalid"
        assert "completedParts[1]" in reply.message
        assert wrong != etags[1]
        assert await upload_part(env.api, session_id, 1, data[MIN_PART : 2 * MIN_PART]) == etags[1]
        await env.api.ok(
            COMPLETE_UPLOAD, {**ids(session_id), "completedParts": completed_parts(etags)}
        )


# ---- authentication and error codes --------------------------------------------------------------


async def test_unauthenticated(tmp_path: Path) -> None:
    async with running(tmp_path, config()) as env:
        api = env.api
        variables = {"organizationId": ORG, "processType": "E57"}
        api.auth = None
        missing = await api.call(ADD_IMPORT_SESSION, variables)
        assert missing.status == 401
        assert missing.code == "request.unauthenticated"
        assert missing.headers["WWW-Authenticate"].startswith("Basic")
        assert missing.body["data"] is None

        api.auth = (TOKEN[0], "wrong-secret")
        assert (await api.call(ADD_IMPORT_SESSION, variables)).code == "request.unauthenticated"
        api.auth = ("unknown-id", TOKEN[1])
        assert (await api.call(ADD_IMPORT_SESSION, variables)).code == "request.unauthenticated"
        for header in ("Bearer abc", "Basic !!!", "Basic " + base64.b64encode(b"nocolon").decode()):
            reply = await api.call(ADD_IMPORT_SESSION, variables, headers={"Authorization": header})
            assert reply.status == 401 and reply.code == "request.unauthenticated"
        assert env.plane.sessions == {}
        assert env.plane.calls["addImportSession"] == 0


async def test_other_credentials_are_configurable(tmp_path: Path) -> None:
    pairs = (("id-1", "secret-1"), ("id-2", "secret-2"))
    async with running(tmp_path, config(credentials=pairs)) as env:
        env.api.auth = pairs[1]
        assert await new_session(env.api)
        env.api.auth = TOKEN
        reply = await env.api.call(
            ADD_IMPORT_SESSION, {"organizationId": ORG, "processType": "E57"}
        )
        assert reply.code == "request.unauthenticated"


async def test_unknown_organization_is_unauthorized(tmp_path: Path) -> None:
    async with running(tmp_path, config()) as env:
        reply = await env.api.call(
            ADD_IMPORT_SESSION, {"organizationId": "P79zdxVGgWq", "processType": "E57"}
        )
        assert reply.status == 200
        assert reply.code == "request.unauthorized"
        assert reply.body["data"] == {"addImportSession": None}


async def test_graphql_validation_errors_are_request_invalid(tmp_path: Path) -> None:
    async with running(tmp_path, config()) as env:
        api = env.api
        cases = [
            ('query { importSession(importSessionId: "x") { id nope } }', None),  # unknown field
            ('query { importSession(id: "x") { id } }', None),  # unknown argument
            ('mutation { addImportSession(organizationId: "o", processType: OBJ) { id } }', None),
            ("query {", None),  # syntax
            (BEGIN_UPLOAD, {"importSessionId": "s"}),  # missing variable
            (REQUEST_PART_UPLOAD, {**ids("s"), "part": 0, "size": "big"}),  # wrong type
            (REQUEST_PART_UPLOAD, {**ids("s"), "part": 0, "size": 1.5}),  # not an integer
            (REQUEST_PART_UPLOAD, {**ids("s"), "part": 0, "size": 2**63}),  # beyond 64 bits
            (REQUEST_PART_UPLOAD, {**ids("s"), "part": 2**31, "size": 1}),  # Int is 32-bit
            (ADD_IMPORT_SESSION, {"organizationId": ORG, "processType": "IFC"}),  # enum
        ]
        for query, variables in cases:
            reply = await api.call(query, variables)
            assert reply.status == 200, (query, reply.body)
            assert reply.code == "request.invalid", (query, reply.body)
        assert env.plane.sessions == {}


async def test_malformed_http_bodies_are_400(tmp_path: Path) -> None:
    async with running(tmp_path, config()) as env:
        token = base64.b64encode(":".join(TOKEN).encode()).decode()
        headers = {"Authorization": f"Basic {token}", "Content-Type": "application/json"}
        for body in (
            b"not json",
            b"[1, 2]",
            b'{"query": 5}',
            b'{"query": "{ x }", "variables": 3}',
        ):
            async with env.api.http.post(env.api.url, data=body, headers=headers) as response:
                assert response.status == 400
                payload = await response.json()
                assert payload["errors"][0]["extensions"]["code"] == "request.invalid"


async def test_not_found(tmp_path: Path) -> None:
    async with running(tmp_path, config()) as env:
        api = env.api
        unknown = await api.call(IMPORT_SESSION, {"importSessionId": "0cumin458wkndg4qke309xmm"})
        assert unknown.code == "not.found"
        assert unknown.body["data"] == {"importSession": None}
        assert (await api.call(BEGIN_UPLOAD, ids("nope"))).code == "not.found"
        session_id = await new_session(api)
        await add_file(api, session_id, 4096)
        assert (await api.call(BEGIN_UPLOAD, ids(session_id, "file2"))).code == "not.found"
        # importFileId takes the clientId, not the server's file id.
        file_id = env.plane.sessions[session_id].files["file1"].id
        wrong = await api.call(PARTS_UPLOAD_STATUS, ids(session_id, file_id))
        assert wrong.code == "not.found"
        assert "clientId" in wrong.message


async def test_not_unique(tmp_path: Path) -> None:
    async with running(tmp_path, config()) as env:
        session_id = await new_session(env.api)
        await add_file(env.api, session_id, 4096)
        duplicate = await env.api.call(
            ADD_E57_OBJECT,
            {
                "importSessionId": session_id,
                "e57": {
                    "id": "another-object",
                    "file": {"clientId": "file1", "name": "b.e57", "type": "x", "size": 10},
                },
            },
        )
        assert duplicate.code == "not.unique"
        same_object = await env.api.call(
            ADD_E57_OBJECT,
            {
                "importSessionId": session_id,
                "e57": {
                    "id": "e57-file1",
                    "file": {"clientId": "file2", "name": "b.e57", "type": "x", "size": 10},
                },
            },
        )
        assert same_object.code == "not.unique"
        assert list(env.plane.sessions[session_id].files) == ["file1"]


async def test_quota_exceeded(tmp_path: Path) -> None:
    async with running(tmp_path, config(quota=1)) as env:
        api = env.api
        first, _, etags = await staged_file(env)
        second = await new_session(api, "opened before the first commit")
        await api.ok(COMPLETE_UPLOAD, {**ids(first), "completedParts": completed_parts(etags)})
        await api.ok(COMMIT_IMPORT_SESSION, {"importSessionId": first})
        refused = await api.call(ADD_IMPORT_SESSION, {"organizationId": ORG, "processType": "E57"})
        assert refused.code == "quota.exceeded"
        # A session opened earlier cannot commit past the quota either.
        path = tmp_path / "second.e57"
        write_sample_e57(path, 4096)
        await add_file(api, second, 4096)
        await api.ok(BEGIN_UPLOAD, ids(second))
        etag = await upload_part(api, second, 0, path.read_bytes())
        await api.ok(COMPLETE_UPLOAD, {**ids(second), "completedParts": completed_parts([etag])})
        late = await api.call(COMMIT_IMPORT_SESSION, {"importSessionId": second})
        assert late.code == "quota.exceeded"

    async with running(tmp_path / "zero", config(quota=0)) as env:
        reply = await env.api.call(
            ADD_IMPORT_SESSION, {"organizationId": ORG, "processType": "E57"}
        )
        assert reply.code == "quota.exceeded"


async def test_injected_internal_errors_once_by_name(tmp_path: Path) -> None:
    faulty = config(
        fail_operations=("requestPartUpload", "requestPartUpload", "commitImportSession")
    )
    async with running(tmp_path, faulty) as env:
        api = env.api
        session_id = await new_session(api)
        await add_file(api, session_id, 4096)
        await api.ok(BEGIN_UPLOAD, ids(session_id))
        request = {**ids(session_id), "part": 0, "size": 4096}
        assert (await api.call(REQUEST_PART_UPLOAD, request)).code == "error.internal"
        assert (await api.call(REQUEST_PART_UPLOAD, request)).code == "error.internal"
        assert (await api.ok(REQUEST_PART_UPLOAD, request))["requestPartUpload"]["partNumber"] == 0
        assert env.plane.calls["requestPartUpload"] == 3
        assert env.plane.stats()["injected_faults"] == {"requestPartUpload": 2}
        assert env.plane.errors["error.internal"] == 2


async def test_injected_internal_errors_at_a_rate_are_seeded(tmp_path: Path) -> None:
    async def pattern(seed: int) -> list[str]:
        async with running(tmp_path / str(seed), config(internal_error_rate=0.5, seed=seed)) as env:
            outcomes = []
            for _ in range(12):
                reply = await env.api.call(LIST_IMPORT_SESSIONS, {})
                outcomes.append(reply.code if "errors" in reply.body else "ok")
            return outcomes

    first = await pattern(7)
    assert first == await pattern(7)
    assert "ok" in first and "error.internal" in first


async def test_fault_after_effect_loses_only_the_answer(tmp_path: Path) -> None:
    async with running(
        tmp_path, config(fail_operations=("beginUpload",), fail_after_effect=True)
    ) as env:
        session_id = await new_session(env.api)
        await add_file(env.api, session_id, 4096)
        assert (await env.api.call(BEGIN_UPLOAD, ids(session_id))).code == "error.internal"
        assert env.plane.sessions[session_id].files["file1"].status == "STARTED"
        retried = (await env.api.ok(BEGIN_UPLOAD, ids(session_id)))["beginUpload"]
        assert retried["uploadStatus"] == "STARTED"


# ---- the state machine ---------------------------------------------------------------------------


async def test_state_machine_violations(tmp_path: Path) -> None:
    async with running(tmp_path, config()) as env:
        api = env.api
        session_id = await new_session(api)
        empty = await api.call(COMMIT_IMPORT_SESSION, {"importSessionId": session_id})
        assert empty.code == "request.invalid" and "no files" in empty.message
        await add_file(api, session_id, 4096)
        early = await api.call(REQUEST_PART_UPLOAD, {**ids(session_id), "part": 0, "size": 4096})
        assert early.code == "request.invalid" and "beginUpload" in early.message
        complete_early = await api.call(
            COMPLETE_UPLOAD, {**ids(session_id), "completedParts": completed_parts(['"x"'])}
        )
        assert complete_early.code == "request.invalid"
        commit_early = await api.call(COMMIT_IMPORT_SESSION, {"importSessionId": session_id})
        assert commit_early.code == "request.invalid" and "PENDING" in commit_early.message
        await api.ok(BEGIN_UPLOAD, ids(session_id))
        commit_started = await api.call(COMMIT_IMPORT_SESSION, {"importSessionId": session_id})
        assert commit_started.code == "request.invalid" and "STARTED" in commit_started.message
        bad_parts = [
            {"part": -1, "size": 10},
            {"part": 10_000, "size": 10},
            {"part": 0, "size": 0},
            {"part": 0, "size": 4097},  # larger than the file
        ]
        for bad in bad_parts:
            reply = await api.call(REQUEST_PART_UPLOAD, {**ids(session_id), **bad})
            assert reply.code == "request.invalid", bad
        no_etag = await api.call(
            COMPLETE_UPLOAD,
            {**ids(session_id), "completedParts": [{"headers": [{"key": "X", "value": "1"}]}]},
        )
        assert no_etag.code == "request.invalid" and "ETag" in no_etag.message
        nothing = await api.call(COMPLETE_UPLOAD, {**ids(session_id), "completedParts": []})
        assert nothing.code == "request.invalid"


async def test_max_part_size_is_enforced(tmp_path: Path) -> None:
    async with running(tmp_path, config(max_part_size=128 * KiB)) as env:
        session_id = await new_session(env.api)
        await add_file(env.api, session_id, 1 * MiB)
        await env.api.ok(BEGIN_UPLOAD, ids(session_id))
        reply = await env.api.call(
            REQUEST_PART_UPLOAD, {**ids(session_id), "part": 0, "size": 128 * KiB + 1}
        )
        assert reply.code == "request.invalid" and "maxSize" in reply.message


async def test_completion_is_checked_part_by_part(tmp_path: Path) -> None:
    async with running(tmp_path, config()) as env:
        api = env.api
        session_id, _, etags = await staged_file(env)

        async def complete(listed: list[str]) -> Any:
            return await api.call(
                COMPLETE_UPLOAD, {**ids(session_id), "completedParts": completed_parts(listed)}
            )

        swapped = await complete([etags[1], etags[0], etags[2]])
        assert swapped.code == "request.invalid"
        assert "completedParts[0]" in swapped.message and "part order" in swapped.message
        wrong = await complete([etags[0], '"0123456789abcdef0123456789abcdef"', etags[2]])
        assert "completedParts[1]" in wrong.message
        missing = await complete([*etags, etags[0]])
        assert "part 3 was never uploaded" in missing.message
        short = await complete(etags[:2])
        assert "declared" in short.message
        assert env.plane.sessions[session_id].files["file1"].status == "STARTED"

        done = await complete(etags)  # quoted, as the storage returned them
        assert done.data["completeUpload"]["uploadStatus"] == "COMPLETED"
        again = await complete([e.strip('"') for e in etags])  # a retried completion
        assert again.data["completeUpload"]["uploadStatus"] == "COMPLETED"
        different = await complete([etags[0], etags[0], etags[2]])
        assert different.code == "request.invalid" and "COMPLETED" in different.message
        late = await api.call(REQUEST_PART_UPLOAD, {**ids(session_id), "part": 0, "size": 10})
        assert late.code == "request.invalid" and "COMPLETED" in late.message


async def test_committed_sessions_are_closed(tmp_path: Path) -> None:
    async with running(tmp_path, config()) as env:
        api = env.api
        session_id, _, etags = await staged_file(env)
        await api.ok(COMPLETE_UPLOAD, {**ids(session_id), "completedParts": completed_parts(etags)})
        await api.ok(COMMIT_IMPORT_SESSION, {"importSessionId": session_id})
        add = await api.call(
            ADD_E57_OBJECT,
            {
                "importSessionId": session_id,
                "e57": {
                    "id": "o2",
                    "file": {"clientId": "f2", "name": "n", "type": "t", "size": 1},
                },
            },
        )
        assert add.code == "request.invalid" and "committed" in add.message
        # A retried commit answers with the session (idempotent_retries, the default).
        again = await api.ok(COMMIT_IMPORT_SESSION, {"importSessionId": session_id})
        assert again["commitImportSession"]["id"] == session_id
        assert env.plane.calls["commitImportSession"] == 2


async def test_strict_transitions_refuse_repeats(tmp_path: Path) -> None:
    async with running(tmp_path, config(idempotent_retries=False)) as env:
        api = env.api
        session_id, _, etags = await staged_file(env)
        assert (await api.call(BEGIN_UPLOAD, ids(session_id))).code == "request.invalid"
        parts = {**ids(session_id), "completedParts": completed_parts(etags)}
        await api.ok(COMPLETE_UPLOAD, parts)
        assert (await api.call(COMPLETE_UPLOAD, parts)).code == "request.invalid"
        await api.ok(COMMIT_IMPORT_SESSION, {"importSessionId": session_id})
        again = await api.call(COMMIT_IMPORT_SESSION, {"importSessionId": session_id})
        assert again.code == "request.invalid"


# ---- 64-bit sizes, headers -----------------------------------------------------------------------


async def test_long_sizes_above_two_gib(tmp_path: Path) -> None:
    async with running(tmp_path, config()) as env:
        api = env.api
        session_id = await new_session(api)
        for client_id, size in (("file1", 2090321920), ("big", 5 * 2**31 + 7)):
            await add_file(api, session_id, size, client_id)
        literal = await api.ok(
            """mutation ($s: ID!) {
              addE57Object(importSessionId: $s, e57: {id: "lit", file: {
                clientId: "lit", name: "l.e57", type: "application/octet-stream",
                size: 9007199254740993
              }}) { files { size } }
            }""",
            {"s": session_id},
        )
        assert literal["addE57Object"]["files"][0]["size"] == 9007199254740993
        session = (await api.ok(IMPORT_SESSION, {"importSessionId": session_id}))["importSession"]
        assert [f["size"] for f in session["files"]] == [2090321920, 5 * 2**31 + 7, 2**53 + 1]
        await api.ok(BEGIN_UPLOAD, ids(session_id, "big"))
        upload = await api.ok(
            REQUEST_PART_UPLOAD, {**ids(session_id, "big"), "part": 9, "size": 3 * 2**30}
        )
        assert upload["requestPartUpload"]["maxSize"] == 5 * 2**30


async def test_required_part_headers_are_returned_and_enforced(tmp_path: Path) -> None:
    required = (("x-amz-server-side-encryption", "AES256"),)
    async with running(tmp_path, config(part_headers=required)) as env:
        session_id = await new_session(env.api)
        await add_file(env.api, session_id, 4096)
        await env.api.ok(BEGIN_UPLOAD, ids(session_id))
        upload = (
            await env.api.ok(REQUEST_PART_UPLOAD, {**ids(session_id), "part": 0, "size": 4096})
        )["requestPartUpload"]
        assert upload["headers"] == [{"key": "x-amz-server-side-encryption", "value": "AES256"}]
        async with env.api.http.put(upload["url"], data=b"z" * 4096) as response:
            assert response.status == 403
        await env.api.put(upload["url"], b"z" * 4096, {"x-amz-server-side-encryption": "AES256"})


# ---- the E57 check at commit ---------------------------------------------------------------------


async def test_a_corrupt_e57_never_becomes_a_model(tmp_path: Path) -> None:
    async with running(tmp_path, config(quota=1)) as env:
        api = env.api
        path = tmp_path / "scan.e57"
        write_sample_e57(path, 160 * KiB, seed=9)
        data = bytearray(path.read_bytes())
        data[70 * KiB] ^= 0xFF  # inside page 70
        session_id = await new_session(api)
        await add_file(api, session_id, len(data))
        await api.ok(BEGIN_UPLOAD, ids(session_id))
        etags = [
            await upload_part(api, session_id, i, bytes(chunk))
            for i, chunk in enumerate(split(bytes(data), MIN_PART))
        ]
        await api.ok(COMPLETE_UPLOAD, {**ids(session_id), "completedParts": completed_parts(etags)})
        await api.ok(COMMIT_IMPORT_SESSION, {"importSessionId": session_id})
        with anyio.fail_after(5):
            session = await env.plane.wait_processed(session_id)
        assert session.model_id is None
        assert session.failure is not None and "page 70" in session.failure
        await anyio.sleep(0.1)
        seen = (await api.ok(IMPORT_SESSION, {"importSessionId": session_id}))["importSession"]
        assert seen["modelId"] is None
        assert env.plane.stats()["failed"] == 1
        # A failed model does not use up the quota.
        assert await new_session(api)


async def test_a_file_that_is_not_e57_fails_the_check(tmp_path: Path) -> None:
    async with running(tmp_path, config()) as env:
        api = env.api
        data = b"ISO-10303-21;\n" + b"\0" * 5000
        session_id = await new_session(api)
        await add_file(api, session_id, len(data))
        await api.ok(BEGIN_UPLOAD, ids(session_id))
        etag = await upload_part(api, session_id, 0, data)
        await api.ok(
            COMPLETE_UPLOAD, {**ids(session_id), "completedParts": completed_parts([etag])}
        )
        await api.ok(COMMIT_IMPORT_SESSION, {"importSessionId": session_id})
        with anyio.fail_after(5):
            session = await env.plane.wait_processed(session_id)
        assert session.failure is not None and "signature" in session.failure


async def test_discard_mode_skips_the_check(tmp_path: Path) -> None:
    async with running(tmp_path, config(), discard=True) as env:
        api = env.api
        data = b"not an e57 file at all" * 100
        session_id = await new_session(api)
        await add_file(api, session_id, len(data))
        await api.ok(BEGIN_UPLOAD, ids(session_id))
        etag = await upload_part(api, session_id, 0, data)
        await api.ok(
            COMPLETE_UPLOAD, {**ids(session_id), "completedParts": completed_parts([etag])}
        )
        await api.ok(COMMIT_IMPORT_SESSION, {"importSessionId": session_id})
        session = await wait_model(api, session_id)
        assert session["modelId"]
        assert env.plane.session(session_id).failure is None


async def test_the_sandbox_server_hosts_the_plane(tmp_path: Path) -> None:
    from engine.sandbox.server import Sandbox, SandboxConfig

    sandbox_config = SandboxConfig(
        data_dir=tmp_path / "sandbox", min_part_size=MIN_PART, matterport=config()
    )
    async with Sandbox(sandbox_config) as sandbox, aiohttp.ClientSession() as http:
        planes = [p for p in sandbox.planes if isinstance(p, MatterportPlane)]
        assert len(planes) == 1
        api = Api(http, sandbox.url)
        session_id = await new_session(api)
        assert planes[0].sessions.keys() == {session_id}
        async with http.get(sandbox.url + "/_sandbox/stats") as response:
            stats = await response.json()
        assert stats["planes"]["matterport"]["sessions"] == 1


# ---- pure pieces ---------------------------------------------------------------------------------


def test_config_is_validated() -> None:
    with pytest.raises(ValueError, match="unknown operations"):
        MatterportSandboxConfig(fail_operations=("requestPartUplaod",))
    with pytest.raises(ValueError, match="min_part_size"):
        MatterportSandboxConfig(min_part_size=10, max_part_size=5)
    with pytest.raises(ValueError, match="credentials"):
        MatterportSandboxConfig(credentials=())
    with pytest.raises(ValueError, match="internal_error_rate"):
        MatterportSandboxConfig(internal_error_rate=1.5)
    relaxed = MatterportSandboxConfig(organizations={"a", "b"}, credentials=[("i", "s")])  # type: ignore[arg-type]
    assert relaxed.organizations == frozenset({"a", "b"})
    assert relaxed.credentials == (("i", "s"),)


def test_check_completion_and_etags() -> None:
    stored = {
        1: StoredPart(1, MIN_PART, '"aa"'),
        2: StoredPart(2, MIN_PART, '"bb"'),
        3: StoredPart(3, 10, '"cc"'),
    }
    limits = {"file_size": 2 * MIN_PART + 10, "min_size": MIN_PART, "max_size": 5 * MiB}
    assert check_completion(["aa", '"BB"', " cc "], stored, **limits) == [
        (1, '"aa"'),
        (2, '"bb"'),
        (3, '"cc"'),
    ]
    with pytest.raises(ApiError, match="part order") as caught:
        check_completion(["bb", "aa", "cc"], stored, **limits)
    assert caught.value.code == "request.invalid"
    with pytest.raises(ApiError, match="declared"):
        check_completion(["aa", "bb", "cc"], stored, **{**limits, "file_size": 1})
    assert normalize_etag('W/"ABC"') == normalize_etag("abc") == "abc"
