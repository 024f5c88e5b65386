"""The Speckle control plane of the sandbox, over real HTTP on loopback with raw aiohttp.

No engine client code is used here: the sandbox must be right on its own terms, so that a client
that works against it works against the platform. Each behaviour follows the public
specklesystems/speckle-server source named in the sandbox module that keeps it; the other
``test_sandbox_speckle_*.py`` files cover the limits, the v2/legacy APIs and live status.
"""

from __future__ import annotations

import hashlib
import random
import re
import socket
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest
from aiohttp import web

from engine.sandbox.blobstore import BlobStore
from engine.sandbox.ifc import MIN_SAMPLE_SIZE, is_ifc_header, write_sample_ifc
from engine.sandbox.server import Sandbox, SandboxConfig
from engine.sandbox.speckle import (
    INVALID_TOKEN_BODY,
    SpecklePlane,
    SpeckleSandboxConfig,
    StatusSnapshot,
    Verdict,
    check_blob,
    ingestion_phase,
    snapshot_for_phase,
    terminal_snapshot,
)

pytestmark = pytest.mark.anyio

TOKEN = "sandbox-token"
PROJECT = "sandbox-project"

# ---- the seed's documents, verbatim -------------------------------------------------------------

GENERATE_UPLOAD_URL = """
mutation GenerateFileUploadUrl($input: GenerateFileUploadUrlInput!) {
  fileUploadMutations {
    generateUploadUrl(input: $input) {
      url
      fileId
    }
  }
}
"""

CREATE_MODEL = """
mutation CreateModel($input: CreateModelInput!) {
  modelMutations {
    create(input: $input) {
      id
    }
  }
}
"""

START_FILE_INGESTION = """
mutation StartFileIngestion($input: StartFileImportInput!) {
  fileUploadMutations {
    startFileIngestion(input: $input) {
      id
      statusData {
        status
      }
    }
  }
}
"""

INGESTION = """
query Ingestion($ingestionId: ID!, $projectId: String!) {
  project(id: $projectId) {
    ingestion(id: $ingestionId) {
      statusData {
        ... on ModelIngestionQueuedStatus {
          status
          progressMessage
        }
        ... on ModelIngestionSuccessStatus {
          status
          versionId
        }
        ... on ModelIngestionProcessingStatus {
          status
          progressMessage
        }
        ... on ModelIngestionFailedStatus {
          status
          errorReason
        }
      }
    }
  }
}
"""

# ---- the fuller documents a client uses ---------------------------------------------------------

# The seed's StartFileIngestion selects `status` on the union, which the real schema refuses;
# this is the portable form.
START_PORTABLE = START_FILE_INGESTION.replace(
    "statusData {\n        status\n      }",
    "statusData { __typename ... on HasModelIngestionStatus { status } }",
)
assert START_PORTABLE != START_FILE_INGESTION

GENERATE_WITH_HEADERS = """
mutation GenerateFileUploadUrl($input: GenerateFileUploadUrlInput!) {
  fileUploadMutations {
    generateUploadUrl(input: $input) {
      url
      fileId
      additionalRequestHeaders { header value }
    }
  }
}
"""

STATUS = """
query Status($ingestionId: ID!, $projectId: String!) {
  project(id: $projectId) {
    ingestion(id: $ingestionId) {
      id
      modelId
      statusData {
        __typename
        ... on HasModelIngestionStatus { status }
        ... on ModelIngestionQueuedStatus { progressMessage }
        ... on ModelIngestionProcessingStatus { progressMessage progress }
        ... on ModelIngestionSuccessStatus { versionId }
        ... on ModelIngestionFailedStatus { errorReason }
        ... on ModelIngestionCancelledStatus { cancellationMessage }
        ... on ModelIngestionInvalidStatus { validationMessage }
      }
    }
  }
}
"""

MODEL_BY_NAME = """
query ModelByName($projectId: String!, $name: String!, $search: String) {
  project(id: $projectId) {
    modelByName(name: $name) { id name }
    models(filter: {search: $search}) { totalCount items { id name } }
  }
}
"""

TERMINAL = {"success", "failed", "cancelled", "timeout", "invalidInput"}


# ---- helpers ------------------------------------------------------------------------------------


class Client:
    """Raw HTTP against one sandbox: GraphQL posts and presigned PUTs."""

    def __init__(self, http: aiohttp.ClientSession, base_url: str) -> None:
        self.http = http
        self.base_url = base_url
        self.endpoint = base_url + "/graphql"

    async def post(
        self,
        query: str,
        variables: Mapping[str, Any] | None = None,
        *,
        token: str | None = TOKEN,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[int, Any, Mapping[str, str]]:
        sent = {"Authorization": f"Bearer {token}"} if token is not None else {}
        sent.update(headers or {})
        payload = {"query": query, "variables": dict(variables or {})}
        async with self.http.post(self.endpoint, json=payload, headers=sent) as response:
            body = await response.json(content_type=None)
            return response.status, body, response.headers

    async def data(self, query: str, variables: Mapping[str, Any] | None = None) -> Any:
        status, body, _ = await self.post(query, variables)
        assert status == 200, body
        assert "errors" not in body, body
        return body["data"]

    async def error(
        self, query: str, variables: Mapping[str, Any] | None = None, *, token: str = TOKEN
    ) -> tuple[str, str]:
        """The (code, message) of the one resolver error the request must produce (HTTP 200)."""
        status, body, _ = await self.post(query, variables, token=token)
        assert status == 200, body
        assert len(body["errors"]) == 1, body
        assert body["data"] is None, body
        error = body["errors"][0]
        return error["extensions"]["code"], error["message"]

    async def generate(
        self, file_name: str, project: str = PROJECT
    ) -> tuple[str, str, dict[str, str]]:
        data = await self.data(
            GENERATE_WITH_HEADERS, {"input": {"projectId": project, "fileName": file_name}}
        )
        out = data["fileUploadMutations"]["generateUploadUrl"]
        headers = {h["header"]: h["value"] for h in out["additionalRequestHeaders"]}
        return out["url"], out["fileId"], headers

    async def put(
        self, url: str, body: bytes, headers: Mapping[str, str] | None = None
    ) -> tuple[int, str]:
        sent = {"Content-Type": "application/octet-stream", **(headers or {})}
        async with self.http.put(url, data=body, headers=sent) as response:
            await response.read()
            return response.status, response.headers.get("ETag", "")

    async def upload(self, file_name: str, body: bytes, project: str = PROJECT) -> tuple[str, str]:
        """generateUploadUrl + PUT; returns (fileId, ETag as the store returned it)."""
        url, file_id, headers = await self.generate(file_name, project)
        status, etag = await self.put(url, body, headers)
        assert status == 200, status
        return file_id, etag

    async def create_model(self, name: str, project: str = PROJECT) -> str:
        data = await self.data(CREATE_MODEL, {"input": {"projectId": project, "name": name}})
        return str(data["modelMutations"]["create"]["id"])

    async def start(
        self, file_id: str, etag: str, model_id: str, project: str = PROJECT
    ) -> tuple[int, Any, Mapping[str, str]]:
        variables = {
            "input": {"etag": etag, "fileId": file_id, "modelId": model_id, "projectId": project}
        }
        return await self.post(START_PORTABLE, variables)

    async def ingest(self, file_name: str, body: bytes, model_name: str = "scans") -> str:
        """Upload and start an ingestion; returns its id."""
        file_id, etag = await self.upload(file_name, body)
        model_id = await self.create_model(model_name)
        status, response, _ = await self.start(file_id, etag, model_id)
        assert status == 200 and "errors" not in response, response
        return str(response["data"]["fileUploadMutations"]["startFileIngestion"]["id"])

    async def wait_terminal(self, ingestion_id: str, project: str = PROJECT) -> list[Any]:
        """Poll STATUS until a terminal status; returns every statusData seen."""
        seen: list[Any] = []
        for _ in range(500):
            data = await self.data(STATUS, {"ingestionId": ingestion_id, "projectId": project})
            status_data = data["project"]["ingestion"]["statusData"]
            seen.append(status_data)
            if status_data["status"] in TERMINAL:
                return seen
            await anyio.sleep(0.005)
        raise AssertionError(f"ingestion {ingestion_id} never ended: {seen[-3:]}")


@asynccontextmanager
async def sandbox(
    tmp_path: Path, speckle: SpeckleSandboxConfig | None = None
) -> AsyncIterator[tuple[Client, SpecklePlane, Sandbox]]:
    """The real sandbox server (server.py wires the plane), with raw aiohttp."""
    config = SandboxConfig(data_dir=tmp_path / "sandbox", speckle=speckle)
    async with Sandbox(config) as sb, aiohttp.ClientSession() as http:
        planes = [p for p in sb.planes if isinstance(p, SpecklePlane)]
        assert len(planes) == 1
        yield Client(http, sb.url), planes[0], sb


@asynccontextmanager
async def own_server(
    tmp_path: Path, speckle: SpeckleSandboxConfig, clock: Callable[[], float]
) -> AsyncIterator[tuple[Client, SpecklePlane]]:
    """A bare server of our own (store + plane, injected clock), independent of server.py."""
    store = BlobStore(tmp_path / "own", secret=b"test-secret")
    plane = SpecklePlane(speckle, store, clock=clock)
    app = web.Application()
    store.register(app)
    plane.register(app)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        sock = socket.create_server(("127.0.0.1", 0))
        await web.SockSite(runner, sock).start()
        store.base_url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        async with aiohttp.ClientSession() as http:
            yield Client(http, store.base_url), plane
    finally:
        await runner.cleanup()


FAST = SpeckleSandboxConfig(step_delay=0.01)


def ifc_bytes(tmp_path: Path, size: int = 4096, seed: int = 7) -> bytes:
    path = tmp_path / f"sample-{size}-{seed}.ifc"
    write_sample_ifc(path, size, seed=seed)
    return path.read_bytes()


# ---- the seed's flow ----------------------------------------------------------------------------


async def test_seed_flow_verbatim(tmp_path: Path) -> None:
    # The seed's step 4 selects `statusData { status }`, which only the lenient schema takes.
    config = SpeckleSandboxConfig(
        step_delay=0.01, additional_header=("x-ms-blob-type", "BlockBlob"), status_interface=True
    )
    source = tmp_path / "MyModel.ifc"
    md5 = write_sample_ifc(source, 200_000, seed=1)
    async with sandbox(tmp_path, config) as (client, plane, _):
        # Step 1: generate an upload URL (the seed's document, then the headers to send).
        data = await client.data(
            GENERATE_UPLOAD_URL, {"input": {"fileName": "MyModel.ifc", "projectId": PROJECT}}
        )
        generated = data["fileUploadMutations"]["generateUploadUrl"]
        assert set(generated) == {"url", "fileId"}
        assert re.fullmatch(r"[0-9a-f]{10}", generated["fileId"])
        assert plane.blobs[generated["fileId"]].status == "pending"
        # Step 2: PUT the raw bytes, with every additional header; keep the ETag as returned.
        status, etag = await client.put(
            generated["url"], source.read_bytes(), {"x-ms-blob-type": "BlockBlob"}
        )
        assert status == 200
        assert etag == f'"{md5}"'
        # Step 3: create a model.
        data = await client.data(
            CREATE_MODEL, {"input": {"projectId": PROJECT, "name": "model name"}}
        )
        model_id = data["modelMutations"]["create"]["id"]
        # Step 4: start the ingestion with the quoted ETag.
        variables = {
            "input": {
                "etag": etag,
                "fileId": generated["fileId"],
                "modelId": model_id,
                "projectId": PROJECT,
            }
        }
        data = await client.data(START_FILE_INGESTION, variables)
        started = data["fileUploadMutations"]["startFileIngestion"]
        assert started["statusData"] == {"status": "queued"}
        # Step 5: poll with the seed's query until success.
        seen = []
        for _ in range(500):
            data = await client.data(
                INGESTION, {"ingestionId": started["id"], "projectId": PROJECT}
            )
            status_data = data["project"]["ingestion"]["statusData"]
            seen.append(status_data["status"])
            if status_data["status"] == "success":
                break
            assert status_data["status"] in ("queued", "processing"), status_data
            assert status_data["progressMessage"]
            await anyio.sleep(0.002)
        assert seen[-1] == "success"
        assert seen == sorted(seen, key=["queued", "processing", "success"].index)
        version_id = status_data["versionId"]
        # What the sandbox recorded.
        assert plane.ingested_md5[generated["fileId"]] == md5
        assert plane.versions[version_id].model_id == model_id
        assert plane.calls["startFileIngestion"] == 1
        assert plane.calls["generateUploadUrl"] == 1
        data = await client.data(
            "query($p: String!, $m: String!) { project(id: $p) { model(id: $m) {"
            " versions { totalCount items { id message } } latestIngestion { id } } } }",
            {"p": PROJECT, "m": model_id},
        )
        model = data["project"]["model"]
        assert model["versions"]["totalCount"] == 1
        assert model["versions"]["items"][0]["id"] == version_id
        assert model["latestIngestion"]["id"] == started["id"]


async def test_progress_follows_the_clock(tmp_path: Path) -> None:
    now = [100.0]
    config = SpeckleSandboxConfig(step_delay=1.0, processing_steps=3)
    async with own_server(tmp_path, config, lambda: now[0]) as (client, plane):
        ingestion_id = await client.ingest("a.ifc", ifc_bytes(tmp_path))
        variables = {"ingestionId": ingestion_id, "projectId": PROJECT}
        observed = []
        for t in (0.0, 0.99, 1.0, 2.5, 3.0, 4.0, 50.0):
            now[0] = 100.0 + t
            data = await client.data(STATUS, variables)
            observed.append(data["project"]["ingestion"]["statusData"])
        kinds = [o["__typename"] for o in observed]
        assert kinds == [
            "ModelIngestionQueuedStatus",
            "ModelIngestionQueuedStatus",
            "ModelIngestionProcessingStatus",
            "ModelIngestionProcessingStatus",
            "ModelIngestionProcessingStatus",
            "ModelIngestionSuccessStatus",
            "ModelIngestionSuccessStatus",
        ]
        assert [o["progress"] for o in observed[2:5]] == [0.25, 0.5, 0.75]
        assert observed[5]["versionId"] == observed[6]["versionId"]
        assert len(plane.versions) == 1  # decided once, one version


# ---- startFileIngestion's checks, in order ------------------------------------------------------


async def test_unquoted_etag_is_rejected_then_quoted_succeeds(tmp_path: Path) -> None:
    async with sandbox(tmp_path, FAST) as (client, plane, _):
        file_id, etag = await client.upload("a.ifc", ifc_bytes(tmp_path))
        model_id = await client.create_model("m")
        assert etag.startswith('"') and etag.endswith('"')
        _, body, _ = await client.start(file_id, etag.strip('"'), model_id)
        assert body["data"] is None
        assert body["errors"][0]["extensions"]["code"] == "USER_INPUT_ERROR"
        assert body["errors"][0]["message"] == f"ETag mismatch: expected {etag.strip(chr(34))}"
        assert body["errors"][0]["path"] == ["fileUploadMutations", "startFileIngestion"]
        assert plane.blobs[file_id].status == "pending"  # a mismatch does not consume the blob
        status, body, _ = await client.start(file_id, etag, model_id)
        assert status == 200 and "errors" not in body, body


async def test_second_start_fails_already_registered(tmp_path: Path) -> None:
    async with sandbox(tmp_path, FAST) as (client, plane, _):
        file_id, etag = await client.upload("a.ifc", ifc_bytes(tmp_path))
        model_id = await client.create_model("m")
        _, first, _ = await client.start(file_id, etag, model_id)
        assert "errors" not in first
        for _ in range(2):
            _, again, _ = await client.start(file_id, etag, model_id)
            assert again["errors"][0]["extensions"]["code"] == "ALREADY_REGISTERED_BLOB_ERROR"
            assert again["data"] is None
        assert plane.calls["startFileIngestion"] == 3
        assert len(plane.ingestions) == 1


async def test_checks_run_in_the_servers_order(tmp_path: Path) -> None:
    config = SpeckleSandboxConfig(
        step_delay=0.01,
        size_limit=10_000,
        projects={PROJECT, "other"},
        tokens={TOKEN: {PROJECT, "other"}},
    )
    body = ifc_bytes(tmp_path, 4096)
    async with sandbox(tmp_path, config) as (client, plane, _):
        model_id = await client.create_model("m")

        async def start(file_id: str, etag: str, model: str = model_id) -> tuple[str, str]:
            variables = {
                "input": {"etag": etag, "fileId": file_id, "modelId": model, "projectId": PROJECT}
            }
            return await client.error(START_PORTABLE, variables)

        # 1. etag empty, before anything else (even an unknown blob and model).
        assert await start("nope", "", "nope") == (
            "USER_INPUT_ERROR",
            "ETag is required to register a completed upload",
        )
        # 2. the blob must have been generated, for this project.
        code, message = await start("nope", '"x"', "nope")
        assert code == "USER_INPUT_ERROR" and "generateUploadUrl" in message
        other_id, other_etag = await client.upload("o.ifc", body, project="other")
        code, message = await start(other_id, other_etag)
        assert code == "USER_INPUT_ERROR" and "generateUploadUrl" in message
        # 4. generated but never uploaded: the storage has nothing.
        _, never_id, _ = await client.generate("never.ifc")
        code, message = await start(never_id, '"x"', "nope")
        assert code == "STORED_BLOB_ACCESS_ERROR" and never_id in message
        # 5. the ETag, compared as raw strings, before the size and the model.
        big_id, big_etag = await client.upload("big.ifc", ifc_bytes(tmp_path, 20_000))
        assert (await start(big_id, big_etag + " ", "nope"))[0] == "USER_INPUT_ERROR"
        assert plane.blobs[big_id].status == "pending"
        # 6. the size (limit 10 000): the blob fails for good, before the model is looked at.
        code, message = await start(big_id, big_etag, "nope")
        assert code == "USER_INPUT_ERROR"
        assert message == (
            "File size exceeds maximum allowed size of 10000 bytes. Actual size: 20000 bytes"
        )
        code, message = await start(big_id, big_etag)
        assert code == "ALREADY_REGISTERED_BLOB_ERROR" and "FILE_SIZE_EXCEEDED" in message
        empty_id, empty_etag = await client.upload("empty.ifc", b"")
        assert (await start(empty_id, empty_etag))[0] == "USER_INPUT_ERROR"
        # 7. the model, last: the blob is registered by then, so a retry is refused.
        file_id, etag = await client.upload("a.ifc", body)
        assert await start(file_id, etag, "nope") == (
            "MODEL_NOT_FOUND",
            "Attempting to work with a non-existant model",
        )
        assert (await start(file_id, etag))[0] == "ALREADY_REGISTERED_BLOB_ERROR"
        # 8. the file type, after the model: a type the server does not ingest also consumes it.
        dwg_id, dwg_etag = await client.upload("plan.docx", body)
        assert await start(dwg_id, dwg_etag) == (
            "UNSUPPORTED_FILE_TYPE",
            "The provided file type is not supported for importing.",
        )
        assert (await start(dwg_id, dwg_etag))[0] == "ALREADY_REGISTERED_BLOB_ERROR"
        assert plane.ingestions == {}
        assert plane.ingested_md5[file_id] == hashlib.md5(body).hexdigest()


# ---- authentication, access, validation ---------------------------------------------------------


async def test_bad_token_is_refused_before_graphql(tmp_path: Path) -> None:
    async with sandbox(tmp_path, FAST) as (client, plane, sb):
        variables = {"input": {"fileName": "a.ifc", "projectId": PROJECT}}
        for token, headers in (
            ("wrong-token", {}),
            (None, {"Authorization": f"Basic {TOKEN}"}),  # only "Bearer " is stripped
            (None, {"Authorization": "Bearer"}),
        ):
            status, body, _ = await client.post(
                GENERATE_UPLOAD_URL, variables, token=token, headers=headers
            )
            assert status == 403
            assert body == INVALID_TOKEN_BODY == {"error": "Your token is not valid."}
        # Refused before GraphQL: even a broken document gets the same answer.
        status, body, _ = await client.post("{ nonsense", token="wrong-token")
        assert (status, body) == (403, INVALID_TOKEN_BODY)
        assert plane.calls == {}
        assert sb.stats()["planes"]["speckle"]["unauthenticated"] == 4


async def test_no_token_is_an_anonymous_caller(tmp_path: Path) -> None:
    # createAuthContextFromToken lets a request without a token through (auth: false); the
    # mutation groups (@hasServerRole) and the project policies refuse what it may not do.
    async with sandbox(tmp_path, FAST) as (client, plane, _):
        variables = {"input": {"fileName": "a.ifc", "projectId": PROJECT}}
        status, body, _ = await client.post(GENERATE_UPLOAD_URL, variables, token=None)
        assert status == 200 and body["data"] is None
        assert body["errors"][0]["message"] == "Must provide an auth token"
        assert body["errors"][0]["extensions"] == {"code": "UNAUTHORIZED", "statusCode": 401}
        query = "query($p: String!) { project(id: $p) { id } }"
        status, body, _ = await client.post(query, {"p": PROJECT}, token=None)
        assert body["errors"][0]["extensions"]["code"] == "FORBIDDEN"
        assert body["errors"][0]["message"] == "You are not logged in to this server"
        status, body, _ = await client.post(query, {"p": "missing"}, token=None)
        assert body["errors"][0]["extensions"]["code"] == "STREAM_NOT_FOUND"
        status, body, _ = await client.post("{ serverInfo { version } }", token=None)
        assert status == 200 and body["data"]["serverInfo"]["version"]
        assert plane.calls["generateUploadUrl"] == 0


async def test_access_and_not_found_codes(tmp_path: Path) -> None:
    config = SpeckleSandboxConfig(
        step_delay=0.01,
        projects={PROJECT, "private"},
        tokens={TOKEN: {PROJECT}, "other-token": {"private"}},
    )
    async with sandbox(tmp_path, config) as (client, _, _):
        generate = GENERATE_UPLOAD_URL

        def generate_in(project: str) -> dict[str, Any]:
            return {"input": {"fileName": "a.ifc", "projectId": project}}

        forbidden = ("FORBIDDEN", "You do not have access to the project")
        assert await client.error(generate, generate_in("private")) == forbidden
        assert await client.error(generate, generate_in("missing")) == (
            "STREAM_NOT_FOUND",
            "Project not found",
        )
        query = "query($p: String!) { project(id: $p) { id } }"
        assert await client.error(query, {"p": "private"}) == forbidden
        assert (await client.error(query, {"p": "missing"}))[0] == "STREAM_NOT_FOUND"
        assert (await client.data(query, {"p": PROJECT}))["project"]["id"] == PROJECT
        # models.ts: an unknown model, by id or by name, is BRANCH_NOT_FOUND "Model not found".
        model = 'query($p: String!) { project(id: $p) { model(id: "nope") { id } } }'
        assert await client.error(model, {"p": PROJECT}) == ("BRANCH_NOT_FOUND", "Model not found")
        by_name = 'query($p: String!) { project(id: $p) { modelByName(name: "nope") { id } } }'
        status, body, _ = await client.post(by_name, {"p": PROJECT})
        assert status == 200 and body["data"] is None
        assert body["errors"][0]["message"] == "Model not found"
        assert body["errors"][0]["extensions"] == {"code": "BRANCH_NOT_FOUND", "statusCode": 404}
        assert body["errors"][0]["path"] == ["project", "modelByName"]
        version = 'query($p: String!) { project(id: $p) { version(id: "nope") { id } } }'
        assert await client.error(version, {"p": PROJECT}) == (
            "COMMIT_NOT_FOUND",
            "Version not found",
        )
        # Project.ingestion is nullable: an unknown id is null, not an error.
        data = await client.data(STATUS, {"ingestionId": "nope", "projectId": PROJECT})
        assert data == {"project": {"ingestion": None}}
        create = {"input": {"projectId": "private", "name": "x"}}
        assert (await client.error(CREATE_MODEL, create))[0] == "FORBIDDEN"
        # The other token sees only its own project.
        assert (await client.error(query, {"p": PROJECT}, token="other-token"))[0] == "FORBIDDEN"
        start = {"input": {"etag": '"x"', "fileId": "f", "modelId": "m", "projectId": "private"}}
        assert (await client.error(START_PORTABLE, start))[0] == "FORBIDDEN"


async def test_request_errors_follow_apollo(tmp_path: Path) -> None:
    async with sandbox(tmp_path, FAST) as (client, plane, _):
        # A field the schema does not have: 400 GRAPHQL_VALIDATION_FAILED.
        status, body, _ = await client.post('{ project(id: "sandbox-project") { nope } }')
        assert status == 400
        assert body["errors"][0]["extensions"]["code"] == "GRAPHQL_VALIDATION_FAILED"
        assert "data" not in body
        # A syntax error: 400 GRAPHQL_PARSE_FAILED.
        status, body, _ = await client.post("mutation {")
        assert status == 400
        assert body["errors"][0]["extensions"]["code"] == "GRAPHQL_PARSE_FAILED"
        # Variables that do not fit: 400 BAD_USER_INPUT, nothing ran (app.ts sets Apollo's
        # status400ForVariableCoercionErrors: true).
        status, body, _ = await client.post(GENERATE_UPLOAD_URL, {"input": {"fileName": "a.ifc"}})
        assert status == 400
        assert body["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
        assert "data" not in body
        assert plane.calls["generateUploadUrl"] == 0
        # Unknown operation name: 400.
        async with client.http.post(
            client.endpoint,
            json={"query": CREATE_MODEL, "operationName": "Other"},
            headers={"Authorization": f"Bearer {TOKEN}"},
        ) as response:
            assert response.status == 400
            body = await response.json()
            assert body["errors"][0]["extensions"]["code"] == "OPERATION_RESOLUTION_FAILURE"
        # Not JSON: 400 BAD_REQUEST.
        async with client.http.post(
            client.endpoint,
            data=b"query { x }",
            headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
        ) as response:
            assert response.status == 400
            body = await response.json()
            assert body["errors"][0]["extensions"]["code"] == "BAD_REQUEST"
        # A field a v3 server has but the v2 one lacks is fine here (v3 is the default).
        status, body, _ = await client.post(
            GENERATE_WITH_HEADERS, {"input": {"fileName": "a.ifc", "projectId": PROJECT}}
        )
        assert status == 200 and "errors" not in body
        # Bad input values are resolver errors: 200 with a code and its statusCode.
        for name in ("", "no-extension", "trailing."):
            variables = {"input": {"fileName": name, "projectId": PROJECT}}
            status, body, _ = await client.post(GENERATE_UPLOAD_URL, variables)
            assert (status, body["data"]) == (200, None)
            assert body["errors"][0]["message"] == "File name must have a valid extension"
            assert body["errors"][0]["extensions"] == {
                "code": "USER_INPUT_ERROR",
                "statusCode": 400,
            }


async def test_models_by_name_and_their_rules(tmp_path: Path) -> None:
    # ModelMutations.create sanitizes the name (parts trimmed, empty parts dropped), refuses a
    # taken one case-insensitively, stores it lower-cased (createBranchFactory) and validates it;
    # modelByName's dataloader finds only the stored (lower-case) name.
    async with sandbox(tmp_path, FAST) as (client, plane, _):
        # Projects start with "main", as on the real server.
        main = plane.model_by_name(PROJECT, "main")
        assert main is not None
        model_id = await client.create_model(" Scans / Level 1 ")
        assert plane.models[model_id].name == "scans/level 1"
        data = await client.data(
            MODEL_BY_NAME, {"projectId": PROJECT, "name": "scans/level 1", "search": "LEVEL"}
        )
        assert data["project"]["modelByName"] == {"id": model_id, "name": "scans/level 1"}
        assert data["project"]["models"]["items"] == [{"id": model_id, "name": "scans/level 1"}]
        by_name = (
            "query($p: String!, $n: String!) { project(id: $p) { modelByName(name: $n) { id } } }"
        )
        assert (await client.error(by_name, {"p": PROJECT, "n": "Scans/Level 1"}))[0] == (
            "BRANCH_NOT_FOUND"
        )
        create = {"input": {"projectId": PROJECT, "name": "SCANS/level 1"}}
        code, message = await client.error(CREATE_MODEL, create)
        assert (code, message) == ("BRANCH_CREATE_ERROR", "A branch with this name already exists")
        assert await client.error(
            CREATE_MODEL, {"input": {"projectId": PROJECT, "name": " / "}}
        ) == (
            "BRANCH_NAME_ERROR",
            "Model name is required",
        )
        for bad in ("", "   ", "#x", "$x", "a,b", "a\\b"):
            create = {"input": {"projectId": PROJECT, "name": bad}}
            assert (await client.error(CREATE_MODEL, create))[0] == "BRANCH_NAME_ERROR"
        # Slashes are sanitized away, not refused.
        for sloppy, stored in (("a//b", "a/b"), ("/c", "c"), ("d/", "d")):
            created = await client.create_model(sloppy)
            assert plane.models[created].name == stored
        data = await client.data(
            "query($p: String!) { project(id: $p) {"
            " models(limit: 1) { totalCount cursor items { name displayName } } } }",
            {"p": PROJECT},
        )
        models = data["project"]["models"]
        assert models["totalCount"] == 5
        assert models["items"] == [{"name": "d", "displayName": "d"}]
        assert models["cursor"] is not None


# ---- the blob store and the rate limiter --------------------------------------------------------


async def test_missing_additional_header_is_refused_by_the_blob_store(tmp_path: Path) -> None:
    config = SpeckleSandboxConfig(step_delay=0.01, additional_header=("x-upload-token", "s3cr3t"))
    body = ifc_bytes(tmp_path)
    async with sandbox(tmp_path, config) as (client, _, _):
        url, _, headers = await client.generate("a.ifc")
        assert headers == {"x-upload-token": "s3cr3t"}
        assert (await client.put(url, body))[0] == 403
        assert (await client.put(url, body, {"x-upload-token": "wrong"}))[0] == 403
        assert (await client.put(url, body, headers))[0] == 200
        # Without the setting, the list is empty.
    async with sandbox(tmp_path / "plain", FAST) as (client, _, _):
        assert (await client.generate("a.ifc"))[2] == {}


async def test_rate_limit_answers_429_with_fractional_retry_after(tmp_path: Path) -> None:
    # Fault injection (sandbox rule) answers with the server's real 429 (its body and headers).
    config = SpeckleSandboxConfig(step_delay=0.01, rate_limit_every=3, retry_after=0.2)
    query = "query($p: String!) { project(id: $p) { id } }"
    async with sandbox(tmp_path, config) as (client, plane, _):
        statuses = []
        for _ in range(7):
            status, body, headers = await client.post(query, {"p": PROJECT})
            statuses.append(status)
            if status == 429:
                assert headers["Retry-After"] == "0.2"
                assert float(headers["Retry-After"]) == pytest.approx(0.2)
                assert body == {
                    "error": {
                        "message": "You have sent too many requests. You are being rate "
                        "limited. Please try again later.",
                        "code": "RATE_LIMIT_ERROR",
                    }
                }
                assert "X-RateLimit-Reset" in headers
            else:
                assert int(headers["X-RateLimit-Remaining"]) >= 0
        assert statuses == [200, 200, 429, 200, 200, 429, 200]
        # The limiter comes before authentication.
        assert (await client.post(query, {"p": PROJECT}, token="bad"))[0] == 403
        assert (await client.post(query, {"p": PROJECT}, token="bad"))[0] == 429
        assert plane.stats()["rate_limited"] == 3


# ---- terminal statuses and content checks -------------------------------------------------------


async def test_every_terminal_status(tmp_path: Path) -> None:
    config = SpeckleSandboxConfig(
        step_delay=0.005,
        status_rules={
            "*.failed.ifc": "failed",
            "*.cancelled.ifc": "cancelled",
            "*.timeout.ifc": "timeout",
            "*.invalid.ifc": "invalidInput",
        },
    )
    body = ifc_bytes(tmp_path)
    expected = {
        "a.ifc": ("ModelIngestionSuccessStatus", "success", "versionId"),
        "a.failed.ifc": ("ModelIngestionFailedStatus", "failed", "errorReason"),
        "a.timeout.ifc": ("ModelIngestionFailedStatus", "timeout", "errorReason"),
        "a.cancelled.ifc": ("ModelIngestionCancelledStatus", "cancelled", "cancellationMessage"),
        "a.invalid.ifc": ("ModelIngestionInvalidStatus", "invalidInput", "validationMessage"),
    }
    async with sandbox(tmp_path, config) as (client, plane, _):
        for index, (file_name, (typename, status, field)) in enumerate(expected.items()):
            ingestion_id = await client.ingest(file_name, body, model_name=f"m{index}")
            final = (await client.wait_terminal(ingestion_id))[-1]
            assert final["__typename"] == typename
            assert final["status"] == status
            assert final[field]
        assert len(plane.versions) == 1
        assert plane.stats()["ingestions"] == {
            "success": 1,
            "failed": 1,
            "timeout": 1,
            "cancelled": 1,
            "invalidInput": 1,
        }


async def test_force_status_applies_to_every_ingestion(tmp_path: Path) -> None:
    config = SpeckleSandboxConfig(step_delay=0, force_status="cancelled")
    async with sandbox(tmp_path, config) as (client, _, _):
        ingestion_id = await client.ingest("a.ifc", ifc_bytes(tmp_path))
        seen = await client.wait_terminal(ingestion_id)
        assert [s["status"] for s in seen] == ["cancelled"]  # step_delay=0: terminal at once


async def test_content_that_is_not_ifc_fails_with_a_reason(tmp_path: Path) -> None:
    async with sandbox(tmp_path, FAST) as (client, plane, _):
        cases = {
            "notes.ifc": b"hello, this is not STEP\n",
            "house.3dm": ifc_bytes(tmp_path),  # an app format, with the wrong signature
        }
        reasons = {}
        for index, (file_name, body) in enumerate(cases.items()):
            ingestion_id = await client.ingest(file_name, body, model_name=f"m{index}")
            final = (await client.wait_terminal(ingestion_id))[-1]
            assert final["__typename"] == "ModelIngestionFailedStatus"
            assert final["status"] == "failed"
            reasons[file_name] = final["errorReason"]
        assert "ISO-10303-21" in reasons["notes.ifc"]
        assert "is not a 3DM file" in reasons["house.3dm"]
        assert plane.versions == {}


async def test_e57_files_are_validated(tmp_path: Path) -> None:
    e57 = pytest.importorskip("engine.sandbox.e57")
    good = tmp_path / "scan.e57"
    md5 = e57.write_sample_e57(good, 64 * 1024, seed=3)
    broken = bytearray(good.read_bytes())
    broken[20_000] ^= 0xFF  # inside a page: its CRC no longer matches
    async with sandbox(tmp_path, FAST) as (client, plane, _):
        ok_id = await client.ingest("scan.e57", good.read_bytes(), model_name="good")
        bad_id = await client.ingest("broken.e57", bytes(broken), model_name="bad")
        ok = (await client.wait_terminal(ok_id))[-1]
        bad = (await client.wait_terminal(bad_id))[-1]
        assert ok["status"] == "success"
        assert bad["status"] == "failed"
        assert "not a valid E57 file" in bad["errorReason"]
        assert plane.ingested_md5[plane.ingestions[ok_id].file_id] == md5


async def test_real_union_refuses_the_seeds_status_selection(tmp_path: Path) -> None:
    # The default is the real schema: statusData is a union (the SDKs select `status` through
    # `... on HasModelIngestionStatus`), so the seed's own document fails validation.
    async with sandbox(tmp_path, FAST) as (client, plane, _):
        file_id, etag = await client.upload("a.ifc", ifc_bytes(tmp_path))
        model_id = await client.create_model("m")
        variables = {
            "input": {"etag": etag, "fileId": file_id, "modelId": model_id, "projectId": PROJECT}
        }
        status, body, _ = await client.post(START_FILE_INGESTION, variables)
        assert status == 400
        assert body["errors"][0]["extensions"]["code"] == "GRAPHQL_VALIDATION_FAILED"
        assert "data" not in body
        assert plane.calls["startFileIngestion"] == 0  # nothing ran: the blob is still pending
        data = await client.data(START_PORTABLE, variables)
        started = data["fileUploadMutations"]["startFileIngestion"]
        assert started["statusData"] == {
            "__typename": "ModelIngestionQueuedStatus",
            "status": "queued",
        }
        final = (await client.wait_terminal(started["id"]))[-1]  # fragments work on the union
        assert final["status"] == "success"


async def test_stats_and_repr(tmp_path: Path) -> None:
    async with sandbox(tmp_path, FAST) as (client, plane, sb):
        ingestion_id = await client.ingest("a.ifc", ifc_bytes(tmp_path))
        await client.wait_terminal(ingestion_id)
        stats = sb.stats()["planes"]["speckle"]
        assert stats["calls"]["generateUploadUrl"] == 1
        assert stats["operations"]["StartFileIngestion"] == 1
        assert stats["blobs"] == {"completed": 1}
        assert stats["ingestions"] == {"success": 1}
        assert stats["versions"] == 1
        assert "versions=1" in repr(plane)
        snapshot = await plane.ingestion_status(ingestion_id)
        assert snapshot.status == "success" and snapshot.terminal


# ---- pure parts ---------------------------------------------------------------------------------


def test_phases_and_snapshots() -> None:
    assert [ingestion_phase(t, step_delay=1.0, steps=2) for t in (-1, 0, 0.5, 1, 2, 3, 99)] == [
        0,
        0,
        0,
        1,
        2,
        3,
        3,
    ]
    assert ingestion_phase(0, step_delay=0, steps=2) == 3
    assert snapshot_for_phase(0, steps=2, file_name="a.ifc").to_graphql()["__typename"] == (
        "ModelIngestionQueuedStatus"
    )
    processing = snapshot_for_phase(2, steps=2, file_name="a.ifc")
    assert processing.progress == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="terminal"):
        snapshot_for_phase(3, steps=2, file_name="a.ifc")
    timeout = terminal_snapshot(Verdict("timeout", "idle"), None).to_graphql()
    assert timeout == {
        "__typename": "ModelIngestionFailedStatus",
        "status": "timeout",
        "errorReason": "idle",
        "errorStacktrace": None,
    }
    assert StatusSnapshot("queued").terminal is False


def test_config_is_validated_and_frozen() -> None:
    cases: list[dict[str, Any]] = [
        {"speckle_api": "v4"},
        {"server_kind": "cloud"},
        {"rate_limit_per_second": 0},
        {"rate_limit_burst": 0},
        {"ws_keepalive": 0},
        {"projects": set()},
        {"tokens": {"": {"p"}}},
        {"size_limit": 0},
        {"url_expiry": 0},
        {"step_delay": -1},
        {"processing_steps": 0},
        {"rate_limit_every": 0},
        {"force_status": "success"},
        {"status_rules": {"*.ifc": "nope"}},
        {"additional_header": ("bad name", "v")},
        {"initial_models": ("#main",)},
    ]
    for bad in cases:
        with pytest.raises(ValueError):
            SpeckleSandboxConfig(**bad)
    config = SpeckleSandboxConfig(
        tokens={"t": {"p"}}, projects=["p"], status_rules={"*.x.ifc": "failed"}
    )
    assert config.tokens["t"] == frozenset({"p"})
    assert config.forced_status_for("a.x.ifc") == "failed"
    assert config.forced_status_for("a.ifc") is None
    with pytest.raises(TypeError):
        config.tokens["u"] = frozenset()  # type: ignore[index]


def test_check_blob(tmp_path: Path) -> None:
    path = tmp_path / "a.ifc"
    path.write_bytes(b"\xef\xbb\xbf\n  ISO-10303-21;\nHEADER;\n")
    assert check_blob(path, "a.ifc") is None
    assert check_blob(path, "A.IFC") is None
    assert check_blob(None, "a.ifc") is None  # discard mode: nothing is read
    assert check_blob(None, "a.obj") is None  # an app format: the server took it at the start
    assert check_blob(None, "a.txt") == "File type txt is not supported"
    assert "could not be read" in (check_blob(tmp_path / "gone.ifc", "gone.ifc") or "")
    for name, body, ok in (
        ("a.3dm", b"3D Geometry File Format       1", True),
        ("a.3dm", b"not rhino", False),
        ("a.dwg", b"AC1032" + bytes(100), True),
        ("a.ply", b"ply\nformat ascii 1.0\n", True),
        ("a.stl", b"solid cube\n", True),
        ("a.stl", bytes(84), True),
        ("a.stl", b"tiny", False),
        ("a.obj", b"v 0 0 0\n", True),
    ):
        (tmp_path / name).write_bytes(body)
        assert (check_blob(tmp_path / name, name) is None) is ok, (name, body)


# ---- the IFC sample writer ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "size", [MIN_SAMPLE_SIZE, MIN_SAMPLE_SIZE + 1, MIN_SAMPLE_SIZE + 4, MIN_SAMPLE_SIZE + 5, 9_999]
)
def test_write_sample_ifc_exact_size(tmp_path: Path, size: int) -> None:
    path = tmp_path / "s.ifc"
    md5 = write_sample_ifc(path, size, seed=size)
    data = path.read_bytes()
    assert len(data) == size
    assert hashlib.md5(data).hexdigest() == md5
    assert is_ifc_header(data[:64])
    assert data.endswith(b"ENDSEC;\nEND-ISO-10303-21;\n")


def test_write_sample_ifc_is_plausible_and_seeded(tmp_path: Path) -> None:
    size = 7_000_003  # more than one slab
    first, second, third = tmp_path / "1.ifc", tmp_path / "2.ifc", tmp_path / "3.ifc"
    assert write_sample_ifc(first, size, seed=5) == write_sample_ifc(second, size, seed=5)
    assert write_sample_ifc(third, size, seed=6) != write_sample_ifc(first, size, seed=5)
    text = first.read_text("ascii")
    data_section = text.split("DATA;\n", 1)[1].rsplit("ENDSEC;", 1)[0]
    lines = [line for line in data_section.splitlines() if line.startswith("#")]
    names = [line.split("=", 1)[0] for line in lines]
    assert len(names) == len(set(names)) > 100_000
    point = re.compile(r"#[1-9]\d*=IFCCARTESIANPOINT\(\((-?[1-9]\d*|-?0)\.\d{4},.*\)\);")
    sample = random.Random(0).sample(lines[3:], 1000)
    assert all(point.fullmatch(line) for line in sample), sample[:3]
    with pytest.raises(ValueError):
        write_sample_ifc(tmp_path / "tiny.ifc", MIN_SAMPLE_SIZE - 1)


def test_is_ifc_header() -> None:
    assert is_ifc_header(b"ISO-10303-21;\nHEADER;")
    assert is_ifc_header(b"\xef\xbb\xbfISO-10303-21;")
    assert is_ifc_header(b" \r\n\tISO-10303-21;")
    assert not is_ifc_header(b"ISO-10303-2")
    assert not is_ifc_header(b"ASTM-E57")
    assert not is_ifc_header(b"x ISO-10303-21;")
    assert not is_ifc_header(b"")
