"""The Speckle plane's limits: the blob size it states and enforces, the formats each server kind
ingests, and the rate limiter (its real 429), over real HTTP against the in-process sandbox.

Sources: ``modules/blobstorage/graph/resolvers/index.ts`` and ``services/presigned.ts`` (the size),
``modules/fileuploads/index.ts`` and ``packages/shared/src/blobs/index.ts`` (the formats),
``modules/core/utils/ratelimiter.ts`` and ``modules/core/rest/ratelimiter.ts`` (the limiter), all
in specklesystems/speckle-server.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from engine.sandbox.blobstore import MiB
from engine.sandbox.speckle import RHINO_EXTENSIONS, SpeckleSandboxConfig, accepted_extensions
from tests.functional.test_sandbox_speckle import (
    PROJECT,
    START_PORTABLE,
    TOKEN,
    own_server,
    sandbox,
)

pytestmark = pytest.mark.anyio

SERVER_INFO = """
query { serverInfo { version blobSizeLimitBytes
  configuration { blobSizeLimitBytes objectSizeLimitBytes objectMultipartUploadSizeLimitBytes } } }
"""
PROJECT_QUERY = "query($p: String!) { project(id: $p) { id } }"
RATE_LIMITED = {
    "error": {
        "message": "You have sent too many requests. You are being rate limited. Please try "
        "again later.",
        "code": "RATE_LIMIT_ERROR",
    }
}


# ---- the blob size limit -------------------------------------------------------------------------


async def test_server_info_states_the_public_default_limit(tmp_path: Path) -> None:
    async with sandbox(tmp_path) as (client, _, _):
        info = (await client.data(SERVER_INFO))["serverInfo"]
    assert info["configuration"]["blobSizeLimitBytes"] == 100 * MiB  # FILE_SIZE_LIMIT_MB 100
    assert info["blobSizeLimitBytes"] == 100 * MiB  # the deprecated twin
    assert info["configuration"]["objectSizeLimitBytes"] == 100 * MiB
    assert info["version"] == "3.0.23"
    async with sandbox(tmp_path / "small", SpeckleSandboxConfig(size_limit=12_345)) as (c, _, _):
        info = (await c.data(SERVER_INFO))["serverInfo"]
    assert info["configuration"]["blobSizeLimitBytes"] == 12_345


async def test_a_file_over_the_limit_is_refused_at_completion_not_before(tmp_path: Path) -> None:
    config = SpeckleSandboxConfig(size_limit=10_000, step_delay=0.01)
    async with sandbox(tmp_path, config) as (client, plane, _):
        # generateUploadUrl knows no size, and the presigned PUT takes any body.
        url, file_id, _ = await client.generate("big.ifc")
        status, etag = await client.put(url, b"ISO-10303-21;\n" + bytes(20_000 - 14))
        assert status == 200
        model_id = await client.create_model("big")
        variables = {
            "input": {"etag": etag, "fileId": file_id, "modelId": model_id, "projectId": PROJECT}
        }
        assert await client.error(START_PORTABLE, variables) == (
            "USER_INPUT_ERROR",
            "File size exceeds maximum allowed size of 10000 bytes. Actual size: 20000 bytes",
        )
        # The blob failed for good; a retry says why, with FILE_SIZE_EXCEEDED.
        assert await client.error(START_PORTABLE, variables) == (
            "ALREADY_REGISTERED_BLOB_ERROR",
            "[FILE_SIZE_EXCEEDED] File size exceeds maximum allowed size for the project at the "
            "time of upload",
        )
        assert plane.blobs[file_id].status == "error"
        assert plane.ingestions == {}


# ---- formats per server kind ---------------------------------------------------------------------


def test_the_server_kinds_take_the_public_lists() -> None:
    assert accepted_extensions("self-hosted") == {"ifc"}
    app = accepted_extensions("app")
    assert {"ifc", "obj", "stl", "dwg", "dxf", "3dm", "e57", "fbx", "skp", "step"} <= app
    assert app == RHINO_EXTENSIONS | {"ifc"}
    assert "txt" not in app and "rvt" not in app
    assert SpeckleSandboxConfig().kind == "app"
    assert SpeckleSandboxConfig(speckle_api="v2").kind == "self-hosted"


@pytest.mark.parametrize(
    ("kind", "file_name", "body", "accepted"),
    [
        ("app", "part.obj", b"v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n", True),
        ("app", "part.STL", b"solid part\nendsolid part\n", True),
        ("app", "plan.dwg", b"AC1032" + bytes(64), True),
        ("app", "notes.docx", b"PK\x03\x04", False),
        ("self-hosted", "part.obj", b"v 0 0 0\n", False),
        ("self-hosted", "scan.e57", b"ASTM-E57" + bytes(64), False),
        ("self-hosted", "tower.IFC", b"ISO-10303-21;\nHEADER;\n", True),
    ],
)
async def test_each_kind_ingests_its_formats(
    tmp_path: Path, kind: str, file_name: str, body: bytes, accepted: bool
) -> None:
    config = SpeckleSandboxConfig(server_kind=kind, step_delay=0)  # type: ignore[arg-type]
    async with sandbox(tmp_path, config) as (client, plane, _):
        file_id, etag = await client.upload(file_name, body)
        model_id = await client.create_model("m")
        status, response, _ = await client.start(file_id, etag, model_id)
        assert status == 200
        if not accepted:
            error = response["errors"][0]
            assert error["extensions"] == {"code": "UNSUPPORTED_FILE_TYPE", "statusCode": 400}
            assert error["message"] == "The provided file type is not supported for importing."
            assert plane.blobs[file_id].status == "completed"  # registered before the check
            return
        ingestion_id = response["data"]["fileUploadMutations"]["startFileIngestion"]["id"]
        final = (await client.wait_terminal(ingestion_id))[-1]
        assert final["status"] == "success", final  # a light check for non-IFC formats


# ---- the rate limiter ---------------------------------------------------------------------------


async def test_the_limiter_is_on_by_default_with_the_public_figures(tmp_path: Path) -> None:
    config = SpeckleSandboxConfig()
    assert (config.rate_limit_per_second, config.rate_limit_burst) == (50, 200)
    async with sandbox(tmp_path) as (client, _, _):
        remaining = []
        for _ in range(3):
            status, _, headers = await client.post(PROJECT_QUERY, {"p": PROJECT})
            assert status == 200
            remaining.append(headers["X-RateLimit-Remaining"])
    assert remaining == ["49", "48", "47"]


async def test_a_refused_request_gets_the_servers_429(tmp_path: Path) -> None:
    now = [1000.0]
    config = SpeckleSandboxConfig(rate_limit_per_second=3, rate_limit_burst=2)
    async with own_server(tmp_path, config, lambda: now[0]) as (client, plane):
        seen = []
        for _ in range(5):  # 3 a second, then 2 more from the burst (remaining 0 then)
            status, _, headers = await client.post(PROJECT_QUERY, {"p": PROJECT})
            seen.append((status, headers.get("X-RateLimit-Remaining")))
        assert seen == [(200, "2"), (200, "1"), (200, "0"), (200, "0"), (200, "0")]
        status, body, headers = await client.post(PROJECT_QUERY, {"p": PROJECT})
        assert (status, body) == (429, RATE_LIMITED)
        # The regular limiter blocks for a whole second from its 4th request.
        assert headers["Retry-After"] == "1"
        assert "X-RateLimit-Remaining" not in headers
        assert headers["X-Speckle-Meditation"] == "https://http.cat/429"
        reset = datetime.fromisoformat(headers["X-RateLimit-Reset"].replace("Z", "+00:00"))
        assert 0.5 < (reset - datetime.now(UTC)).total_seconds() <= 1.0
        now[0] += 0.4
        status, _, headers = await client.post(PROJECT_QUERY, {"p": PROJECT})
        assert (status, headers["Retry-After"]) == (429, "0.6")  # fractional
        now[0] += 0.6  # the block is over and the window too
        status, _, headers = await client.post(PROJECT_QUERY, {"p": PROJECT})
        assert (status, headers["X-RateLimit-Remaining"]) == (200, "2")
        assert plane.stats()["rate_limited"] == 2


async def test_the_limiter_counts_before_the_token_per_source(tmp_path: Path) -> None:
    now = [50.0]
    config = SpeckleSandboxConfig(
        rate_limit_per_second=1,
        rate_limit_burst=1,
        tokens={TOKEN: {PROJECT}, "other-token-42": {PROJECT}},
    )
    async with own_server(tmp_path, config, lambda: now[0]) as (client, _):
        # An invalid token is counted (under its own source) before it is refused.
        answers = [await client.post(PROJECT_QUERY, {"p": PROJECT}, token="x" * 12) for _ in "123"]
        assert [
            (status, headers.get("X-RateLimit-Remaining")) for status, _, headers in answers
        ] == [
            (403, "0"),
            (403, "0"),
            (429, None),
        ]
        # Another token is another source (the token past its first 10 characters).
        assert (await client.post(PROJECT_QUERY, {"p": PROJECT}))[0] == 200
        assert (await client.post(PROJECT_QUERY, {"p": PROJECT}, token="other-token-42"))[0] == 200
        # Without a token the source is the address.
        assert (await client.post(PROJECT_QUERY, {"p": PROJECT}, token=None))[0] == 200


async def test_the_limiter_can_be_switched_off(tmp_path: Path) -> None:
    config = SpeckleSandboxConfig(rate_limit_per_second=None)
    async with sandbox(tmp_path, config) as (client, plane, _):
        for _ in range(5):
            status, _, headers = await client.post(PROJECT_QUERY, {"p": PROJECT})
            assert status == 200
            assert "X-RateLimit-Remaining" not in headers
        assert plane.stats()["rate_limited"] == 0
