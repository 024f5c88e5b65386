"""The public server's APIs in the sandbox: ``speckle_api="v2"`` (presigned upload, startFileImport,
``Model.uploads``) and ``"legacy"`` (before presigned uploads), and the legacy REST upload
``POST /api/file/{fileType}/{projectId}[/{modelName}]``, over real HTTP.

Sources (specklesystems/speckle-server): ``packages/server/assets/fileuploads/typedefs/
fileuploads.graphql`` at HEAD (v2) and before commit 4738b97 (legacy),
``modules/fileuploads/graph/resolvers/fileUploads.ts``, ``modules/fileuploads/rest/router.ts``,
``modules/blobstorage/services/streams.ts``, ``modules/blobstorage/rest/busboy.ts``.
"""

from __future__ import annotations

import tracemalloc
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest

from engine.sandbox.blobstore import MiB
from engine.sandbox.speckle import UPLOAD_REQUEST_ERROR, SpeckleSandboxConfig
from tests.functional.test_sandbox_speckle import (
    GENERATE_UPLOAD_URL,
    GENERATE_WITH_HEADERS,
    PROJECT,
    START_PORTABLE,
    STATUS,
    TOKEN,
    Client,
    ifc_bytes,
    sandbox,
)

pytestmark = pytest.mark.anyio

V2 = SpeckleSandboxConfig(speckle_api="v2", step_delay=0.01)
LEGACY = SpeckleSandboxConfig(speckle_api="legacy", step_delay=0.01)

START_FILE_IMPORT = """
mutation StartFileImport($input: StartFileImportInput!) {
  fileUploadMutations {
    startFileImport(input: $input) {
      id projectId modelId modelName convertedStatus convertedMessage convertedVersionId
      fileName fileType fileSize userId uploadComplete
    }
  }
}
"""
UPLOADS = """
query ModelFileImportJobs($projectId: String!, $modelId: String!, $input: GetModelUploadsInput) {
  project(id: $projectId) {
    model(id: $modelId) {
      uploads(input: $input) {
        totalCount cursor
        items { id convertedStatus convertedMessage convertedVersionId fileName }
      }
      pendingImportedVersions { id convertedStatus }
    }
  }
}
"""
FILE_UPLOAD = """
query($p: String!, $id: String!) {
  stream(id: $p) { fileUpload(id: $id) { id convertedStatus convertedMessage convertedVersionId } }
}
"""
ACCEPTED_UPLOAD = {"uploadStatus": 1}


async def upload_v2(client: Client, file_name: str, body: bytes) -> tuple[str, str]:
    """v2's generateUploadUrl (no additionalRequestHeaders) + PUT: (fileId, ETag)."""
    variables = {"input": {"fileName": file_name, "projectId": PROJECT}}
    data = await client.data(GENERATE_UPLOAD_URL, variables)
    generated = data["fileUploadMutations"]["generateUploadUrl"]
    status, etag = await client.put(generated["url"], body)
    assert status == 200
    return generated["fileId"], etag


async def poll_upload(client: Client, file_id: str, terminal: bool = True) -> list[dict[str, Any]]:
    """``stream.fileUpload`` until convertedStatus is 2 or 3; every state seen."""
    seen: list[dict[str, Any]] = []
    for _ in range(400):
        data = await client.data(FILE_UPLOAD, {"p": PROJECT, "id": file_id})
        seen.append(data["stream"]["fileUpload"])
        if seen[-1]["convertedStatus"] in (2, 3):
            return seen
        await anyio.sleep(0.005)
    raise AssertionError(f"upload {file_id} never ended: {seen[-3:]}")


async def rest_upload(
    client: Client,
    path: str,
    files: Mapping[str, tuple[str, bytes]],
    *,
    token: str | None = TOKEN,
) -> tuple[int, Any, Mapping[str, str]]:
    form = aiohttp.FormData()
    form.add_field("note", "a form field, not a file")
    for key, (name, body) in files.items():
        form.add_field(key, body, filename=name, content_type="application/octet-stream")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    url = f"{client.base_url}/api/file/{path}"
    async with client.http.post(url, data=form, headers=headers) as response:
        return response.status, await response.json(), response.headers


# ---- the v2 schema -------------------------------------------------------------------------------


async def test_v2_has_no_ingestion_api(tmp_path: Path) -> None:
    async with sandbox(tmp_path, V2) as (client, plane, _):
        refused = [
            (GENERATE_WITH_HEADERS, {"input": {"fileName": "a.ifc", "projectId": PROJECT}}),
            (START_PORTABLE, {"input": {"etag": "e", "fileId": "f", "modelId": "m",
                                        "projectId": PROJECT}}),
            (STATUS, {"ingestionId": "x", "projectId": PROJECT}),
            ('{ project(id: "p") { model(id: "m") { ingestionHistory { totalCount } } } }', {}),
        ]  # fmt: skip
        for query, variables in refused:
            status, body, _ = await client.post(query, variables)
            assert status == 400, body
            assert body["errors"][0]["extensions"]["code"] == "GRAPHQL_VALIDATION_FAILED"
        assert plane.calls["generateUploadUrl"] == plane.calls["startFileIngestion"] == 0
        info = await client.data("{ serverInfo { version configuration { blobSizeLimitBytes } } }")
        assert info["serverInfo"] == {
            "version": "2.31.14",
            "configuration": {"blobSizeLimitBytes": 100 * MiB},
        }
        # No subscription socket on this API.
        async with client.http.get(client.endpoint) as response:
            assert response.status == 405


async def test_v2_presigned_upload_and_start_file_import(tmp_path: Path) -> None:
    async with sandbox(tmp_path, V2) as (client, plane, _):
        data = await client.data(
            GENERATE_UPLOAD_URL, {"input": {"fileName": "Tower.IFC", "projectId": PROJECT}}
        )
        generated = data["fileUploadMutations"]["generateUploadUrl"]
        body = ifc_bytes(tmp_path)
        status, etag = await client.put(generated["url"], body)
        assert status == 200
        model_id = await client.create_model("tower")
        variables = {
            "input": {"etag": etag, "fileId": generated["fileId"], "modelId": model_id,
                      "projectId": PROJECT}
        }  # fmt: skip
        upload = (await client.data(START_FILE_IMPORT, variables))["fileUploadMutations"]
        upload = upload["startFileImport"]
        assert upload["id"] == generated["fileId"]  # a file upload's id is its blob's
        assert upload["convertedStatus"] == 0 and upload["convertedMessage"] is None
        assert (upload["modelName"], upload["modelId"]) == ("tower", model_id)
        assert (upload["fileName"], upload["fileType"], upload["fileSize"]) == (
            "Tower.IFC",
            "ifc",
            len(body),
        )
        assert upload["uploadComplete"] is True
        seen = await poll_upload(client, upload["id"])
        statuses = [s["convertedStatus"] for s in seen]
        assert statuses == sorted(statuses) and statuses[-1] == 2
        assert seen[-1]["convertedMessage"] == "File converted successfully"
        version_id = seen[-1]["convertedVersionId"]
        assert plane.versions[version_id].model_id == model_id
        listed = await client.data(UPLOADS, {"projectId": PROJECT, "modelId": model_id})
        model = listed["project"]["model"]
        assert model["uploads"]["totalCount"] == 1
        assert model["uploads"]["items"][0]["convertedVersionId"] == version_id
        assert model["pendingImportedVersions"] == []
        # Completion is not idempotent here either.
        code = (await client.error(START_FILE_IMPORT, variables))[0]
        assert code == "ALREADY_REGISTERED_BLOB_ERROR"


async def test_v2_failed_imports_end_with_status_3(tmp_path: Path) -> None:
    async with sandbox(tmp_path, V2) as (client, plane, _):
        model_id = await client.create_model("m")
        file_id, etag = await upload_v2(client, "broken.ifc", b"not STEP at all\n")
        variables = {
            "input": {"etag": etag, "fileId": file_id, "modelId": model_id, "projectId": PROJECT}
        }
        await client.data(START_FILE_IMPORT, variables)
        final = (await poll_upload(client, file_id))[-1]
        assert final["convertedStatus"] == 3
        assert "ISO-10303-21" in final["convertedMessage"]
        # A type the self-hosted server does not ingest: refused, and its record ends in error.
        obj_id, obj_etag = await upload_v2(client, "part.obj", b"v 0 0 0\n")
        variables["input"].update(fileId=obj_id, etag=obj_etag)
        assert (await client.error(START_FILE_IMPORT, variables))[0] == "UNSUPPORTED_FILE_TYPE"
        final = (await poll_upload(client, obj_id))[-1]
        assert final["convertedStatus"] == 3
        assert final["convertedMessage"] == "The provided file type is not supported for importing."
        assert plane.versions == {}


async def test_legacy_has_only_the_rest_upload(tmp_path: Path) -> None:
    async with sandbox(tmp_path, LEGACY) as (client, plane, _):
        variables = {"input": {"fileName": "a.ifc", "projectId": PROJECT}}
        status, body, _ = await client.post(GENERATE_UPLOAD_URL, variables)
        assert status == 400
        assert body["errors"][0]["extensions"]["code"] == "GRAPHQL_VALIDATION_FAILED"
        status, body, headers = await rest_upload(
            client, f"autodetect/{PROJECT}", {"file": ("tower.ifc", ifc_bytes(tmp_path))}
        )
        assert status == 201, body
        assert "Warning" not in headers  # the deprecation warning came with 2.25.8
        [result] = body["uploadResults"]
        final = (await poll_upload(client, result["blobId"]))[-1]
        assert final["convertedStatus"] == 2
        main = plane.model_by_name(PROJECT, "main")
        assert main is not None and plane.versions[final["convertedVersionId"]].model_id == main.id


# ---- the legacy REST upload ----------------------------------------------------------------------


async def test_rest_upload_answers_201_with_upload_results(tmp_path: Path) -> None:
    config = SpeckleSandboxConfig(speckle_api="v2", step_delay=0.01, size_limit=8_000)
    async with sandbox(tmp_path, config) as (client, plane, _):
        model_id = await client.create_model("Scans/Level 1")
        files = {
            "first": ("a.ifc", ifc_bytes(tmp_path, 4096, seed=1)),
            "second": ("b.ifc", ifc_bytes(tmp_path, 8_001, seed=2)),  # over the limit
            "third": ("c.ifc", ifc_bytes(tmp_path, 8_000, seed=3)),  # exactly the limit
        }
        # The model is found case-insensitively; a nested name travels percent-encoded.
        status, body, headers = await rest_upload(
            client, f"autodetect/{PROJECT}/SCANS%2Flevel%201", files
        )
        assert status == 201, body
        assert headers["Warning"].startswith("Deprecated API; use POST /graphql")
        assert int(headers["X-RateLimit-Remaining"]) == 499  # ALL_REQUESTS: 500 a second
        first, second, third = body["uploadResults"]
        assert first == {
            "blobId": first["blobId"],
            "uploadStatus": 1,
            "fileSize": 4096,
            "fileName": "a.ifc",
            "formKey": "first",
        }
        assert second == {
            "blobId": second["blobId"],
            "uploadStatus": 2,
            "uploadError": "File size limit reached",
            "fileName": "b.ifc",
            "fileSize": None,
            "formKey": "second",
        }
        assert (third["uploadStatus"], third["fileSize"]) == (1, 8_000)
        # Every entry became a file upload of the model; the stored bytes are the sent ones.
        assert (await poll_upload(client, first["blobId"]))[-1]["convertedStatus"] == 2
        assert (await poll_upload(client, second["blobId"]))[-1]["convertedStatus"] == 3
        assert (
            plane.ingested_md5[first["blobId"]]
            == __import__("hashlib").md5(files["first"][1]).hexdigest()
        )
        assert second["blobId"] not in plane.ingested_md5
        assert {r.model_id for r in plane.ingestions.values()} == {model_id}


def _form(boundary: str, parts: list[bytes]) -> bytes:
    return b"".join(f"--{boundary}\r\n".encode() + p + b"\r\n" for p in parts) + (
        f"--{boundary}--\r\n".encode()
    )


async def test_rest_upload_refuses_bad_input_like_the_server(tmp_path: Path) -> None:
    config = SpeckleSandboxConfig(
        speckle_api="v2",
        projects={PROJECT, "private"},
        tokens={TOKEN: {PROJECT}, "private-token": {"private"}},
    )
    async with sandbox(tmp_path, config) as (client, plane, _):
        base = f"{client.base_url}/api/file/autodetect"
        auth = {"Authorization": f"Bearer {TOKEN}"}
        part = b'Content-Disposition: form-data; name="f"; filename="a.ifc"\r\n\r\nISO-10303-21;\n'
        missing = "Project ID is malformed and cannot be found, or the project does not exist"
        no_model = {"message": "Branch {branchName} was not found", "code": "BRANCH_NOT_FOUND"}
        cases: list[tuple[str, dict[str, str], bytes, int, Any]] = [
            (f"{base}/{PROJECT}", {}, b"", 403,
             {"error": "Your auth token does not have the required scope: streams:write."}),
            (f"{base}/{PROJECT}", {"Authorization": "Bearer nope-nope-nope"}, b"", 403,
             {"error": "Your token is not valid."}),
            (f"{base}/missing", auth, b"", 404, {"error": missing}),
            (f"{base}/private", auth, b"", 403, {"error": "You do not have access to the project"}),
            (f"{base}/{PROJECT}/nope", auth, b"", 404, {"error": no_model}),
            (f"{base}/{PROJECT}", auth, b"x", 400,
             {"error": {"message": "Missing Content-Type", "code": "BAD_REQUEST_ERROR"}}),
            (f"{base}/{PROJECT}", {**auth, "Content-Type": "text/plain"}, b"x", 400,
             {"error": {"message": "Unsupported content type: text/plain",
                        "code": "BAD_REQUEST_ERROR"}}),
            (f"{base}/{PROJECT}", {**auth, "Content-Type": "multipart/form-data"}, b"x", 400,
             {"error": {"message": "Multipart: Boundary not found", "code": "BAD_REQUEST_ERROR"}}),
            (f"{base}/{PROJECT}", {**auth, "Content-Type": "multipart/form-data; boundary=zz"},
             b"--zz\r\n" + part, 400,  # breaks off: no closing boundary
             {"error": "Upload request error. The server logs may have more details."}),
            (f"{base}/{PROJECT}",
             {**auth, "Content-Type": "application/x-www-form-urlencoded"}, b"a=b", 201,
             {"uploadResults": []}),
            (f"{base}/{PROJECT}", {**auth, "Content-Type": "multipart/form-data; boundary=zz"},
             _form("zz", [part]), 201, None),
        ]  # fmt: skip
        for url, headers, body, status, expected in cases:
            async with client.http.post(
                url, data=body, headers=headers, skip_auto_headers=["Content-Type"]
            ) as response:
                text = await response.text()
                assert response.status == status, (url, headers, text)
                assert TOKEN not in text and "Traceback" not in text
                answer = await response.json(content_type=None)
                if expected is not None:
                    assert answer == expected, (url, headers)
        broken = [b for b in plane.blobs.values() if b.status == "error"]
        assert [b.upload_error for b in broken] == ["Unexpected end of form"]
        assert UPLOAD_REQUEST_ERROR == (
            '{ "error": "Upload request error. The server logs may have more details." }'
        )


async def test_rest_upload_streams_the_body(tmp_path: Path) -> None:
    size = 48 * MiB
    config = SpeckleSandboxConfig(speckle_api="v2", size_limit=64 * MiB)
    chunk = b"ISO-10303-21;\n" + bytes(MiB - 14)

    async def body() -> AsyncIterator[bytes]:
        for _ in range(size // MiB):
            yield chunk

    async with sandbox(tmp_path, config) as (client, plane, _):
        with aiohttp.MultipartWriter("form-data") as form:
            part = form.append(body(), {"Content-Type": "application/octet-stream"})
            part.set_content_disposition("form-data", name="file", filename="big.ifc")
        tracemalloc.start()
        try:
            async with client.http.post(
                f"{client.base_url}/api/file/autodetect/{PROJECT}",
                data=form,
                headers={"Authorization": f"Bearer {TOKEN}"},
            ) as response:
                answer = await response.json()
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert response.status == 201, answer
        [result] = answer["uploadResults"]
        assert (result["uploadStatus"], result["fileSize"]) == (1, size)
        assert plane.store.head(plane.blobs[result["blobId"]].key).size == size
        # About 13 MiB of 1 MiB buffers in flight on both sides; holding the body would be 48.
        assert peak < size // 2, f"peak {peak / MiB:.1f} MiB for a {size // MiB} MiB upload"


async def test_app_speckle_systems_has_no_rest_upload(tmp_path: Path) -> None:
    async with sandbox(tmp_path) as (client, plane, _):
        url = f"{client.base_url}/api/file/autodetect/{PROJECT}"
        form = aiohttp.FormData()
        form.add_field("f", b"ISO-10303-21;\n", filename="a.ifc")
        async with client.http.post(
            url, data=form, headers={"Authorization": f"Bearer {TOKEN}"}
        ) as r:
            assert r.status == 404
        assert plane.blobs == {}
