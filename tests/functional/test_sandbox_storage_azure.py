"""The blob store's ``azure`` mode over real HTTP on loopback (raw aiohttp, no engine): Azure Blob
Storage's Put Blob behind a service SAS, alone and behind the Speckle plane.

Pinned here: the SAS-shaped URL, ``x-ms-blob-type: BlockBlob`` required (400
``MissingRequiredHeader``), 201 with an opaque ``"0x8D…"`` ETag, ``Content-MD5`` and
``x-ms-content-crc64`` (checked against an independent CRC-64), an expired SAS answering 403
``AuthenticationFailed`` with its detail in Azure's XML, and the single-PUT cap (413
``RequestBodyTooLarge``, with a small configured cap).
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest

from engine.sandbox import BlobError, BlobStore, Sandbox, SandboxConfig
from engine.sandbox.ifc import write_sample_ifc
from tests.functional.test_sandbox_blobstore import (
    MATTERPORT_AUTH,
    SPECKLE_AUTH,
    KiB,
    graphql,
    md5_hex,
    payload,
    put,
    session,
    with_query,
)

pytestmark = pytest.mark.anyio

__all__ = ["session"]  # the fixture, imported for these tests

BLOCK_BLOB = {"x-ms-blob-type": "BlockBlob"}
CAP = 4 * KiB


def crc64_nvme(data: bytes) -> int:
    """CRC-64 as Azure computes it, bit by bit (reflected 0x9A6C9329AC4BC9B5, ~0 in and out),
    written independently of the sandbox's table-driven one."""
    crc = (1 << 64) - 1
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x9A6C9329AC4BC9B5 if crc & 1 else 0)
    return crc ^ ((1 << 64) - 1)


def detail(body: str, element: str) -> str:
    match = re.search(rf"<{element}>([^<]*)</{element}>", body)
    assert match is not None, body
    return match.group(1)


@pytest.fixture
async def azure(anyio_backend: str, tmp_path: Path) -> AsyncIterator[Sandbox]:
    config = SandboxConfig(data_dir=tmp_path / "data", storage_mode="azure", max_object_size=CAP)
    async with Sandbox(config) as sb:
        yield sb


def test_crc64_reference_check_value() -> None:
    # The CRC catalogue's check value of CRC-64/NVME (the same parameters) for "123456789".
    assert crc64_nvme(b"123456789") == 0xAE8B14860A799888


async def test_sas_url_shape(azure: Sandbox) -> None:
    url = azure.store.presign_put("speckle/p/f", expires_in=600)
    parts = urlsplit(url)
    assert parts.path == "/blob/speckle/p/f"
    query = {name: values[0] for name, values in parse_qs(parts.query).items()}
    assert set(query) == {"sv", "se", "sr", "sp", "sig"}
    assert (query["sr"], query["sp"]) == ("b", "cw")
    assert re.fullmatch(r"\d{4}-\d\d-\d\d", query["sv"])
    expiry = datetime.strptime(query["se"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert timedelta(seconds=590) < expiry - datetime.now(UTC) < timedelta(seconds=610)
    assert len(base64.b64decode(query["sig"])) == 32  # HMAC-SHA256
    with pytest.raises(ValueError, match="Put Blob only"):
        azure.store.presign_part("k", "upload", 1)
    with pytest.raises(BlobError) as no_multipart:
        azure.store.create_multipart("k")
    assert no_multipart.value.code == "NotImplemented"


async def test_put_blob_requires_block_blob_type(
    azure: Sandbox, session: aiohttp.ClientSession
) -> None:
    url = azure.store.presign_put("a.ifc")
    missing = await put(session, url, b"data")
    assert missing.status == 400
    assert missing.headers["x-ms-error-code"] == "MissingRequiredHeader" == missing.code
    assert detail(missing.body, "HeaderName") == "x-ms-blob-type"
    assert missing.body.startswith('<?xml version="1.0" encoding="utf-8"?><Error><Code>')
    assert re.search(
        r"<Message>[^<]*\nRequestId:[0-9a-f-]{36}\nTime:[0-9T:.-]+Z</Message>", missing.body
    )
    page = await put(session, url, b"data", {"x-ms-blob-type": "PageBlob"})
    assert (page.status, page.code) == (400, "InvalidHeaderValue")
    assert azure.store.head("a.ifc") is None


async def test_put_blob_answers_201_with_opaque_etag_md5_and_crc64(
    azure: Sandbox, session: aiohttp.ClientSession
) -> None:
    data = payload(3000, 1)
    url = azure.store.presign_put("a.ifc")
    first = await put(session, url, data, BLOCK_BLOB)
    assert first.status == 201
    assert first.etag is not None and re.fullmatch(r'"0x8D[0-9A-F]{13}"', first.etag)
    assert first.headers["Content-MD5"] == base64.b64encode(hashlib.md5(data).digest()).decode()
    crc = crc64_nvme(data).to_bytes(8, "little")
    assert first.headers["x-ms-content-crc64"] == base64.b64encode(crc).decode()
    assert first.headers["x-ms-request-server-encrypted"] == "true"
    assert first.headers["x-ms-version"] == parse_qs(urlsplit(url).query)["sv"][0]
    assert re.fullmatch(r"[0-9a-f-]{36}", first.headers["x-ms-request-id"])
    assert "Last-Modified" in first.headers and "x-amz-request-id" not in first.headers

    again = await put(session, url, data, {**BLOCK_BLOB, "x-ms-version": "2021-08-06"})
    assert again.status == 201 and again.etag != first.etag  # every write a new ETag
    assert again.headers["x-ms-version"] == "2021-08-06"
    stored = azure.store.head("a.ifc")
    assert stored is not None and stored.etag == again.etag and stored.md5 == md5_hex(data)
    assert azure.store.stats()["responses"] == {"201": 2}


async def test_expired_or_tampered_sas_answers_authentication_failed(
    azure: Sandbox, session: aiohttp.ClientSession
) -> None:
    expired = await put(session, azure.store.presign_put("a", expires_in=-5), b"x", BLOCK_BLOB)
    assert (expired.status, expired.code) == (403, "AuthenticationFailed")
    assert expired.headers["x-ms-error-code"] == "AuthenticationFailed"
    text = detail(expired.body, "AuthenticationErrorDetail")
    stamp = r"\w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d GMT"
    assert re.fullmatch(
        rf"Signed expiry time \[{stamp}\] must be after signed start time \[{stamp}\]", text
    )
    url = azure.store.presign_put("a")
    for tampered in (with_query(url, se="2099-01-01T00:00:00Z"), with_query(url, sig="AAAA")):
        refused = await put(session, tampered, b"x", BLOCK_BLOB)
        assert (refused.status, refused.code) == (403, "AuthenticationFailed")
        assert detail(refused.body, "AuthenticationErrorDetail") == "Signature did not match."
    unsigned = await put(session, url.split("&sig=")[0], b"x", BLOCK_BLOB)
    assert (unsigned.status, unsigned.code) == (403, "AuthenticationFailed")
    assert azure.store.head("a") is None


async def test_single_put_cap_is_refused_before_the_body(
    azure: Sandbox, session: aiohttp.ClientSession
) -> None:
    url = azure.store.presign_put("big")
    assert (await put(session, url, payload(CAP, 2), BLOCK_BLOB)).status == 201
    over = await put(session, url, payload(CAP + 1, 2), BLOCK_BLOB)
    assert (over.status, over.code) == (413, "RequestBodyTooLarge")
    assert detail(over.body, "MaxLimit") == str(CAP)
    assert azure.store.stats()["puts_by_part"] == {"big": {"0": 1}}  # the refused PUT never ran


def test_put_blob_default_cap_is_5000_mib() -> None:
    store = BlobStore(None, secret=b"s", discard=True, mode="azure")
    assert store.max_object_size == 5000 * 1024 * 1024
    assert BlobStore(None, secret=b"s", discard=True).max_object_size == 5 * 1024**3


GENERATE = """mutation($input: GenerateFileUploadUrlInput!) { fileUploadMutations {
  generateUploadUrl(input: $input) { url fileId additionalRequestHeaders { header value } } } }"""
CREATE_MODEL = """mutation($input: CreateModelInput!) { modelMutations { create(input: $input) {
  id } } }"""
INGEST = """mutation($input: StartFileImportInput!) { fileUploadMutations {
  startFileIngestion(input: $input) { id } } }"""


async def test_speckle_behind_azure_hands_out_the_blob_type_and_takes_the_opaque_etag(
    azure: Sandbox, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    async def graph(query: str, variables: dict[str, Any]) -> Any:
        answer = await graphql(session, f"{azure.url}/graphql", query, variables, SPECKLE_AUTH)
        assert "errors" not in answer, answer
        return answer["data"]

    project = "sandbox-project"
    source = tmp_path / "model.ifc"
    write_sample_ifc(source, 3 * KiB, seed=3)
    data = source.read_bytes()
    generated = (await graph(GENERATE, {"input": {"projectId": project, "fileName": "m.ifc"}}))[
        "fileUploadMutations"
    ]["generateUploadUrl"]
    assert generated["additionalRequestHeaders"] == [
        {"header": "x-ms-blob-type", "value": "BlockBlob"}
    ]
    assert "sig" in parse_qs(urlsplit(generated["url"]).query)
    headers = {h["header"]: h["value"] for h in generated["additionalRequestHeaders"]}
    assert (await put(session, generated["url"], data)).code == "MissingRequiredHeader"
    stored = await put(session, generated["url"], data, headers)
    assert stored.status == 201 and stored.etag is not None and stored.etag.startswith('"0x8D')

    model = (await graph(CREATE_MODEL, {"input": {"projectId": project, "name": "m"}}))[
        "modelMutations"
    ]["create"]["id"]
    ingest = {"projectId": project, "modelId": model, "fileId": generated["fileId"]}
    started = await graph(INGEST, {"input": {**ingest, "etag": stored.etag}})
    assert started["fileUploadMutations"]["startFileIngestion"]["id"]


async def test_matterport_behind_azure_refuses_begin_upload_in_one_line(
    azure: Sandbox, session: aiohttp.ClientSession
) -> None:
    async def graph(query: str, variables: dict[str, str]) -> Any:
        url = f"{azure.url}/api/import/graph"
        return await graphql(session, url, query, variables, MATTERPORT_AUTH)

    opened = await graph(
        "mutation($o: ID!) { addImportSession(organizationId: $o, processType: E57) { id } }",
        {"o": "sandbox-org"},
    )
    ids = {"s": opened["data"]["addImportSession"]["id"]}
    added = await graph(
        """mutation($s: ID!) { addE57Object(importSessionId: $s, e57: {id: "e", file:
        {clientId: "f", name: "a.e57", type: "application/octet-stream", size: 10}}) { id } }""",
        ids,
    )
    assert "errors" not in added
    begun = await graph(
        'mutation($s: ID!) { beginUpload(importSessionId: $s, importFileId: "f") { id } }', ids
    )
    (error,) = begun["errors"]
    assert error["extensions"]["code"] == "request.invalid"
    assert error["message"] == (
        "the storage refused the upload: azure mode stores one PUT per blob: no multipart"
    )
