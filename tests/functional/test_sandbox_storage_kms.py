"""The blob store's ``kms`` and ``sse-c`` modes over real HTTP on loopback (raw aiohttp, no engine).

What a client meets on an SSE-KMS bucket or with customer keys: ETags of 32 hex digits that are
not the MD5 of the bytes, the encryption response headers, S3's ``-N`` completion ETag that no
one can verify from the bytes, and (SSE-C) parts refused without the key. The true MD5 is still
recorded, so tests can check the bytes.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from engine.sandbox import BlobError, Sandbox, SandboxConfig
from engine.sandbox.options import add_serve_options, config_from_args
from tests.functional.test_sandbox_blobstore import (
    MATTERPORT_AUTH,
    MIN_PART,
    error_code,
    graphql,
    md5_hex,
    payload,
    put,
    s3_multipart_etag,
    session,
)

pytestmark = pytest.mark.anyio

__all__ = ["session"]  # the fixture, imported for these tests

SSE = "x-amz-server-side-encryption"
KMS_KEY_ID = "x-amz-server-side-encryption-aws-kms-key-id"
ALGORITHM = "x-amz-server-side-encryption-customer-algorithm"
CUSTOMER_KEY = "x-amz-server-side-encryption-customer-key"
KEY_MD5 = "x-amz-server-side-encryption-customer-key-MD5"
HEX_ETAG = re.compile(r'^"[0-9a-f]{32}"$')


def customer_headers(key: bytes) -> dict[str, str]:
    return {
        ALGORITHM: "AES256",
        CUSTOMER_KEY: base64.b64encode(key).decode(),
        KEY_MD5: base64.b64encode(hashlib.md5(key).digest()).decode(),
    }


@pytest.fixture
async def kms(anyio_backend: str, tmp_path: Path) -> AsyncIterator[Sandbox]:
    config = SandboxConfig(data_dir=tmp_path / "data", min_part_size=MIN_PART, storage_mode="kms")
    async with Sandbox(config) as sb:
        yield sb


@pytest.fixture
async def sse_c(anyio_backend: str, tmp_path: Path) -> AsyncIterator[Sandbox]:
    config = SandboxConfig(data_dir=tmp_path / "data", min_part_size=MIN_PART, storage_mode="sse-c")
    async with Sandbox(config) as sb:
        yield sb


# ---- kms -----------------------------------------------------------------------------------------


async def test_kms_part_etags_are_32_hex_but_not_the_md5_and_say_aws_kms(
    kms: Sandbox, session: aiohttp.ClientSession
) -> None:
    store = kms.store
    upload = store.create_multipart("scan.e57")
    parts = [payload(MIN_PART, 1), payload(1000, 2)]
    etags = []
    for number, data in enumerate(parts, start=1):
        reply = await put(session, store.presign_part("scan.e57", upload, number), data)
        assert reply.status == 200
        assert reply.etag is not None and HEX_ETAG.match(reply.etag), reply.etag
        assert reply.etag != f'"{md5_hex(data)}"'
        assert reply.headers[SSE] == "aws:kms"
        assert reply.headers[KMS_KEY_ID].startswith("arn:aws:kms:")
        etags.append(reply.etag)
    # ListParts answers the ETags the PUTs answered (what a resuming client compares with).
    assert [p.etag for p in store.list_parts(upload)] == etags

    # The same bytes again: a new ETag (a fresh data key), still not the MD5.
    again = await put(session, store.presign_part("scan.e57", upload, 2), parts[1])
    assert again.etag is not None and HEX_ETAG.match(again.etag)
    assert again.etag not in (etags[1], f'"{md5_hex(parts[1])}"')
    etags[1] = again.etag

    # A client that lists the MD5s it computed is refused, as S3 refuses unknown ETags.
    md5s = [(n, md5_hex(p)) for n, p in enumerate(parts, start=1)]
    with pytest.raises(BlobError) as refused:
        await store.complete_multipart_async("scan.e57", upload, md5s)
    assert refused.value.code == "InvalidPart"

    stored = await store.complete_multipart_async("scan.e57", upload, list(enumerate(etags, 1)))
    whole = b"".join(parts)
    assert re.fullmatch(r'"[0-9a-f]{32}-2"', stored.etag)
    assert stored.etag != s3_multipart_etag(parts)  # not the MD5-of-MD5s a client could check
    joined = b"".join(bytes.fromhex(etag.strip('"')) for etag in etags)
    assert stored.etag == f'"{hashlib.md5(joined).hexdigest()}-2"'  # S3's rule over the ETags
    assert stored.md5 == md5_hex(whole)  # the true MD5, for tests
    async with session.get(f"{kms.url}/_sandbox/objects/scan.e57") as view:
        assert (await view.json())["md5"] == md5_hex(whole)
    stats = store.stats()
    assert stats["mode"] == "kms" and stats["kms_key_id"] == reply.headers[KMS_KEY_ID]


async def test_kms_single_put_etag_is_not_the_md5(
    kms: Sandbox, session: aiohttp.ClientSession
) -> None:
    data = payload(4096, 3)
    reply = await put(session, kms.store.presign_put("model.ifc"), data)
    assert reply.status == 200 and reply.headers[SSE] == "aws:kms"
    assert reply.etag is not None and HEX_ETAG.match(reply.etag)
    assert reply.etag != f'"{md5_hex(data)}"'
    stored = kms.store.head("model.ifc")
    assert stored is not None and stored.etag == reply.etag and stored.md5 == md5_hex(data)


async def test_the_default_mode_is_plain_s3(tmp_path: Path, session: aiohttp.ClientSession) -> None:
    async with Sandbox(SandboxConfig(data_dir=tmp_path / "data")) as sb:
        data = payload(100, 4)
        reply = await put(session, sb.store.presign_put("plain"), data)
        assert reply.etag == f'"{md5_hex(data)}"'
        assert SSE not in reply.headers and ALGORITHM not in reply.headers
        assert sb.store.stats()["mode"] == "s3"


# ---- sse-c ---------------------------------------------------------------------------------------


async def test_sse_c_parts_need_the_customer_key_and_echo_it(
    sse_c: Sandbox, session: aiohttp.ClientSession
) -> None:
    store = sse_c.store
    key_headers = store.required_put_headers
    assert set(key_headers) == {ALGORITHM, CUSTOMER_KEY, KEY_MD5}
    upload = store.create_multipart("scan.e57")
    url = store.presign_part("scan.e57", upload, 1)
    data = payload(2048, 5)

    bare = await put(session, url, data)
    assert (bare.status, bare.code) == (400, "InvalidRequest")
    assert "Subsequent part requests must include the appropriate encryption" in bare.body
    assert store.list_parts(upload) == []

    other_key = customer_headers(bytes(range(32)))
    wrong_md5 = {**key_headers, KEY_MD5: other_key[KEY_MD5]}
    for headers, code in (
        ({**key_headers, ALGORITHM: "AES128"}, "InvalidEncryptionAlgorithmError"),
        ({**key_headers, CUSTOMER_KEY: "bm90IDMyIGJ5dGVz"}, "InvalidArgument"),
        (wrong_md5, "InvalidArgument"),
        (other_key, "InvalidRequest"),  # a valid key, but not the upload's
    ):
        refused = await put(session, url, data, headers)
        assert (refused.status, refused.code) == (400, code), headers
    assert store.list_parts(upload) == []

    stored = await put(session, url, data, key_headers)
    assert stored.status == 200
    assert stored.etag is not None and HEX_ETAG.match(stored.etag)
    assert stored.etag != f'"{md5_hex(data)}"'
    assert stored.headers[ALGORITHM] == "AES256"
    assert stored.headers[KEY_MD5] == key_headers[KEY_MD5]
    assert [p.etag for p in store.list_parts(upload)] == [stored.etag]


async def test_sse_c_single_put_is_encrypted_only_with_a_key(
    sse_c: Sandbox, session: aiohttp.ClientSession
) -> None:
    data = payload(512, 6)
    plain = await put(session, sse_c.store.presign_put("plain.ifc"), data)
    assert plain.etag == f'"{md5_hex(data)}"' and ALGORITHM not in plain.headers
    own_key = customer_headers(b"k" * 32)
    sealed = await put(session, sse_c.store.presign_put("sealed.ifc"), data, own_key)
    assert sealed.status == 200 and sealed.headers[KEY_MD5] == own_key[KEY_MD5]
    assert sealed.etag is not None and sealed.etag != plain.etag and HEX_ETAG.match(sealed.etag)
    stored = sse_c.store.head("sealed.ifc")
    assert stored is not None and stored.md5 == md5_hex(data)


START = (
    """mutation($org: ID!) { addImportSession(organizationId: $org, processType: E57) { id } }"""
)
ADD = """mutation($s: ID!) { addE57Object(importSessionId: $s, e57: {id: "e57", file:
  {clientId: "f", name: "a.e57", type: "application/octet-stream", size: 100}}) { id } }"""
BEGIN = """mutation($s: ID!) { beginUpload(importSessionId: $s, importFileId: "f") { id } }"""
PART = """mutation($s: ID!) { requestPartUpload(importSessionId: $s, importFileId: "f",
  part: 0, size: 100) { url headers { key value } } }"""


async def test_sse_c_matterport_hands_out_the_key_its_parts_need(
    sse_c: Sandbox, session: aiohttp.ClientSession
) -> None:
    async def graph(query: str, variables: dict[str, str]) -> Any:
        url = f"{sse_c.url}/api/import/graph"
        answer = await graphql(session, url, query, variables, MATTERPORT_AUTH)
        assert "errors" not in answer, answer
        return answer["data"]

    started = await graph(START, {"org": "sandbox-org"})
    session_id = started["addImportSession"]["id"]
    for document in (ADD, BEGIN):
        await graph(document, {"s": session_id})
    part = (await graph(PART, {"s": session_id}))["requestPartUpload"]
    headers = {h["key"]: h["value"] for h in part["headers"]}
    assert headers == sse_c.store.required_put_headers
    data = payload(100, 7)
    stored = await put(session, part["url"], data, headers)
    assert stored.status == 200 and stored.headers[ALGORITHM] == "AES256"
    assert stored.etag != f'"{md5_hex(data)}"'


# ---- configuration -------------------------------------------------------------------------------


def test_storage_mode_options_and_their_refusals() -> None:
    import argparse

    parser = argparse.ArgumentParser()
    add_serve_options(parser)
    assert config_from_args(parser.parse_args([])).storage_mode == "s3"
    for mode in ("kms", "sse-c", "azure"):
        assert config_from_args(parser.parse_args(["--storage-mode", mode])).storage_mode == mode
    with pytest.raises(SystemExit):
        parser.parse_args(["--storage-mode", "gcs"])
    external = parser.parse_args(["--storage-mode", "kms", "--storage", "s3://bucket"])
    with pytest.raises(ValueError, match="--storage-mode applies to the sandbox's own"):
        config_from_args(external)
    with pytest.raises(ValueError, match="storage_mode must be one of"):
        SandboxConfig(storage_mode="gcs")
    with pytest.raises(ValueError, match="max_object_size must be positive"):
        SandboxConfig(max_object_size=0)
    assert error_code("<Error><Code>X</Code></Error>") == "X"  # the helper the tests share
