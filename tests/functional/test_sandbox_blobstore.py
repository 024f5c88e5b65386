"""The sandbox blob store over real HTTP on loopback, driven by a raw aiohttp client (no engine).

Every S3 rule the engine relies on is checked from the outside: ETags, overwrite, composite ETag,
completion errors, URL signing and expiry, Content-Length, key safety, each fault kind, determinism
of the fault plan, discard mode and the stats.
"""

from __future__ import annotations

import base64
import hashlib
import io
import logging
import re
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import aiohttp
import anyio
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream
from multidict import CIMultiDict

from engine.sandbox import (
    BlobError,
    BlobStore,
    FaultPlan,
    Sandbox,
    SandboxConfig,
    StoredObject,
    StoredPart,
)
from engine.sandbox.faults import KINDS, STATUS_FAULTS

pytestmark = pytest.mark.anyio

KiB = 1024
MiB = 1024 * KiB
MIN_PART = 64 * KiB
KEY = "projects/p1/scan one.e57"


def md5_hex(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def s3_multipart_etag(parts: Sequence[bytes]) -> str:
    """The S3 formula, written independently of the store: md5(md5(p1)‖…‖md5(pN))-N, quoted."""
    joined = b"".join(hashlib.md5(p).digest() for p in parts)
    return f'"{hashlib.md5(joined).hexdigest()}-{len(parts)}"'


def payload(size: int, seed: int) -> bytes:
    block = hashlib.sha256(str(seed).encode()).digest()
    return (block * (size // len(block) + 1))[:size]


def with_query(url: str, **changes: str) -> str:
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    query.update(changes)
    return urlunsplit(parts._replace(query=urlencode(query)))


def error_code(body: str) -> str:
    match = re.search(r"<Code>([^<]*)</Code>", body)
    assert match is not None, body
    return match.group(1)


class Reply:
    def __init__(self, status: int, headers: CIMultiDict[str], body: str) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    @property
    def etag(self) -> str | None:
        return self.headers.get("ETag")

    @property
    def code(self) -> str:
        return error_code(self.body)


@pytest.fixture
async def sandbox(anyio_backend: str, tmp_path: Path) -> AsyncIterator[Sandbox]:
    config = SandboxConfig(data_dir=tmp_path / "data", min_part_size=MIN_PART)
    async with Sandbox(config) as sb:
        yield sb


@pytest.fixture
async def session(anyio_backend: str) -> AsyncIterator[aiohttp.ClientSession]:
    # aiohttp >= 3.12 silently re-sends an idempotent request (PUT) once when the connection
    # drops; that would hide reset faults from these tests and skew the attempt counters. There
    # is no public switch, so turn the private one off, loudly if it ever disappears.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as client:
        assert isinstance(client._retry_connection, bool)
        client._retry_connection = False
        yield client


async def put(
    session: aiohttp.ClientSession,
    url: str,
    data: bytes,
    headers: Mapping[str, str] | None = None,
    timeout: float = 10.0,
) -> Reply:
    # BytesIO: aiohttp warns about large raw bytes bodies; the length is still sent up front.
    async with session.put(
        url, data=io.BytesIO(data), headers=headers, timeout=aiohttp.ClientTimeout(total=timeout)
    ) as resp:
        return Reply(resp.status, resp.headers.copy(), await resp.text())


async def raw_request(sb: Sandbox, head: str, body: bytes = b"") -> tuple[int, str]:
    """Send bytes exactly as given (no client-side URL normalisation); return status and body."""
    url = urlsplit(sb.url)
    assert url.hostname is not None and url.port is not None
    async with await anyio.connect_tcp(url.hostname, url.port) as stream:
        await stream.send(head.encode() + b"\r\n\r\n" + body)
        reader = BufferedByteReceiveStream(stream)
        header_block = (await reader.receive_until(b"\r\n\r\n", 65536)).decode()
        status = int(header_block.split(" ", 2)[1])
        length = re.search(r"(?im)^content-length:\s*(\d+)", header_block)
        assert length is not None, header_block
        return status, (await reader.receive_exactly(int(length.group(1)))).decode()


def path_and_query(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}"


MATTERPORT_AUTH = "Basic " + base64.b64encode(b"sandbox-token-id:sandbox-token-secret").decode()
SPECKLE_AUTH = "Bearer sandbox-token"


async def graphql(
    session: aiohttp.ClientSession,
    url: str,
    query: str,
    variables: Mapping[str, Any],
    authorization: str,
) -> Any:
    """POST a GraphQL document to a control plane; its whole JSON answer."""
    async with session.post(
        url, json={"query": query, "variables": variables}, headers={"Authorization": authorization}
    ) as resp:
        return await resp.json()


# ---- parts, overwrite, completion ----------------------------------------------------------------


async def test_part_put_returns_quoted_md5_etag(
    sandbox: Sandbox, session: aiohttp.ClientSession
) -> None:
    store = sandbox.store
    upload_id = store.create_multipart(KEY)
    data = payload(100 * KiB, 1)
    reply = await put(session, store.presign_part(KEY, upload_id, 1), data)
    assert reply.status == 200
    assert reply.etag == f'"{md5_hex(data)}"'
    assert store.list_parts(upload_id) == [StoredPart(1, len(data), f'"{md5_hex(data)}"')]


async def test_reput_overwrites_the_part(sandbox: Sandbox, session: aiohttp.ClientSession) -> None:
    store = sandbox.store
    upload_id = store.create_multipart(KEY)
    url = store.presign_part(KEY, upload_id, 1)
    first, second = payload(MIN_PART, 1), payload(MIN_PART + 7, 2)
    assert (await put(session, url, first)).etag == f'"{md5_hex(first)}"'
    assert (await put(session, url, second)).etag == f'"{md5_hex(second)}"'
    assert store.list_parts(upload_id) == [StoredPart(1, len(second), f'"{md5_hex(second)}"')]
    stored = store.complete_multipart(KEY, upload_id, [(1, md5_hex(second))])
    path = store.object_path(KEY)
    assert path is not None and path.read_bytes() == second
    assert stored.etag == s3_multipart_etag([second])


async def test_complete_assembles_a_byte_identical_object_with_the_s3_etag(
    sandbox: Sandbox, session: aiohttp.ClientSession
) -> None:
    store = sandbox.store
    parts = [payload(MIN_PART, 1), payload(MIN_PART + 1000, 2), payload(3 * MiB + 5, 3)]
    parts.append(payload(17, 4))  # the last part may be smaller than the minimum
    upload_id = store.create_multipart(KEY)
    etags: dict[int, str] = {}

    async def send(number: int, data: bytes) -> None:
        reply = await put(session, store.presign_part(KEY, upload_id, number), data)
        assert reply.status == 200, reply.body
        assert reply.etag is not None
        etags[number] = reply.etag

    async with anyio.create_task_group() as tg:  # out of order, concurrently
        for number, data in reversed(list(enumerate(parts, start=1))):
            tg.start_soon(send, number, data)

    listed = [(n, etags[n]) for n in sorted(etags)]
    stored = store.complete_multipart(KEY, upload_id, listed)
    whole = b"".join(parts)
    assert stored.size == len(whole)
    assert stored.md5 == md5_hex(whole)
    assert stored.etag == s3_multipart_etag(parts)
    path = store.object_path(KEY)
    assert path is not None and path.read_bytes() == whole
    assert store.head(KEY) == stored
    # A retried completion with the same parts answers the same object (S3 tolerates it) ...
    assert store.complete_multipart(KEY, upload_id, listed) == stored
    # ... anything else on a finished upload is NoSuchUpload, and so is a PUT to it.
    with pytest.raises(BlobError) as info:
        store.list_parts(upload_id)
    assert info.value.code == "NoSuchUpload" and info.value.status == 404
    reply = await put(session, store.presign_part(KEY, upload_id, 1), parts[0])
    assert (reply.status, reply.code) == (404, "NoSuchUpload")
    # The admin endpoint reports the object.
    async with session.get(f"{sandbox.url}/_sandbox/objects/{KEY}") as resp:
        assert resp.status == 200
        assert await resp.json() == {
            "key": KEY,
            "size": len(whole),
            "etag": stored.etag,
            "md5": md5_hex(whole),
        }
    async with session.get(f"{sandbox.url}/_sandbox/objects/nope") as resp:
        assert resp.status == 404


async def test_complete_multipart_async_matches_the_sync_result(
    sandbox: Sandbox, session: aiohttp.ClientSession
) -> None:
    store = sandbox.store
    parts = [payload(MIN_PART, 5), payload(1234, 6)]
    upload_id = store.create_multipart(KEY)
    listed = []
    for number, data in enumerate(parts, start=1):
        reply = await put(session, store.presign_part(KEY, upload_id, number), data)
        assert reply.etag is not None
        listed.append((number, reply.etag))
    stored = await store.complete_multipart_async(KEY, upload_id, listed)
    assert stored.etag == s3_multipart_etag(parts)
    assert stored.md5 == md5_hex(b"".join(parts))


async def test_completion_enforces_the_s3_rules(
    sandbox: Sandbox, session: aiohttp.ClientSession
) -> None:
    store = sandbox.store
    upload_id = store.create_multipart(KEY)
    small, big, last = payload(MIN_PART - 1, 1), payload(MIN_PART, 2), payload(10, 3)
    for number, data in ((1, small), (2, big), (3, last)):
        assert (await put(session, store.presign_part(KEY, upload_id, number), data)).status == 200

    def fails(parts: list[tuple[int, str]], **kwargs: int) -> str:
        with pytest.raises(BlobError) as info:
            store.complete_multipart(KEY, upload_id, parts, **kwargs)
        assert info.value.status == 400
        return info.value.code

    assert fails([(1, md5_hex(small)), (2, md5_hex(big))]) == "EntityTooSmall"
    assert fails([(2, md5_hex(big)), (1, md5_hex(small))]) == "InvalidPartOrder"
    assert fails([(2, md5_hex(big)), (2, md5_hex(big))]) == "InvalidPartOrder"
    assert fails([(2, md5_hex(small))]) == "InvalidPart"  # wrong ETag
    assert fails([(2, md5_hex(big)), (4, md5_hex(last))]) == "InvalidPart"  # never uploaded
    assert fails([]) == "MalformedXML"
    # The checks failed without side effects: the upload is still open, and a per-call minimum
    # (as a control plane may set) lets part 1 through. ETags are accepted with or without quotes.
    stored = store.complete_multipart(
        KEY,
        upload_id,
        [(1, f'"{md5_hex(small)}"'), (2, md5_hex(big)), (3, md5_hex(last))],
        min_part_size=MIN_PART - 1,
    )
    assert stored.etag == s3_multipart_etag([small, big, last])
    other = store.create_multipart(KEY)
    store.abort_multipart(other)
    with pytest.raises(BlobError) as info:
        store.complete_multipart(KEY, other, [(1, md5_hex(small))])
    assert info.value.code == "NoSuchUpload"


# ---- signing, expiry, headers, lengths, keys -----------------------------------------------------


async def test_expired_url_is_refused(sandbox: Sandbox, session: aiohttp.ClientSession) -> None:
    store = sandbox.store
    upload_id = store.create_multipart(KEY)
    reply = await put(session, store.presign_part(KEY, upload_id, 1, expires_in=-1), b"abc")
    assert reply.status == 403
    assert reply.code == "AccessDenied"
    assert "<Message>Request has expired</Message>" in reply.body
    assert store.list_parts(upload_id) == []


async def test_tampered_url_is_refused(sandbox: Sandbox, session: aiohttp.ClientSession) -> None:
    store = sandbox.store
    upload_id = store.create_multipart(KEY)
    url = store.presign_part(KEY, upload_id, 1)
    signature = dict(parse_qsl(urlsplit(url).query))["X-Signature"]
    flipped = ("0" if signature[0] != "0" else "1") + signature[1:]
    tampered = [
        with_query(url, **{"X-Signature": flipped}),
        with_query(url, partNumber="2"),  # a valid URL for part 1 must not write part 2
        with_query(url, **{"X-Expires": "9999999999"}),  # nor live longer
        url.replace("/scan%20one.e57", "/scan%20two.e57"),
        url.split("&X-Signature=")[0],  # unsigned
    ]
    for bad in tampered:
        reply = await put(session, bad, b"abc")
        assert (reply.status, reply.code) == (403, "SignatureDoesNotMatch"), bad
    assert store.list_parts(upload_id) == []
    assert (await put(session, url, b"abc")).status == 200


async def test_signed_headers_must_be_sent_with_their_values(
    sandbox: Sandbox, session: aiohttp.ClientSession
) -> None:
    store = sandbox.store
    url = store.presign_put(KEY, required_headers={"X-Amz-Meta-Fileid": "f-123"})
    assert "X-SignedHeaders=x-amz-meta-fileid" in url
    for headers in ({}, {"x-amz-meta-fileid": "f-124"}):
        reply = await put(session, url, b"abc", headers)
        assert (reply.status, reply.code) == (403, "SignatureDoesNotMatch")
    assert store.head(KEY) is None
    reply = await put(session, url, b"abc", {"X-AMZ-META-FILEID": "f-123"})
    assert reply.status == 200
    assert reply.etag == f'"{md5_hex(b"abc")}"'


async def test_chunked_body_is_refused_with_411(
    sandbox: Sandbox, session: aiohttp.ClientSession
) -> None:
    store = sandbox.store
    upload_id = store.create_multipart(KEY)

    async def body() -> AsyncIterator[bytes]:
        yield b"abc"
        yield b"def"

    url = store.presign_part(KEY, upload_id, 1)
    async with session.put(url, data=body()) as resp:  # async generator: sent chunked
        assert resp.request_info.headers.get("Transfer-Encoding") == "chunked"
        assert resp.status == 411
        assert error_code(await resp.text()) == "MissingContentLength"
    status, text = await raw_request(
        sandbox, f"PUT {path_and_query(url)} HTTP/1.1\r\nHost: sandbox"
    )  # no Content-Length at all
    assert (status, error_code(text)) == (411, "MissingContentLength")
    assert store.list_parts(upload_id) == []


@pytest.mark.parametrize(
    "raw_path",
    [
        "/blob/a/../../../etc/passwd",
        "/blob/a/%2e%2e/%2E%2E/etc/passwd",
        "/blob/%2e%2e",
        "/blob//etc/passwd",
        "/blob/a%5C..%5Cb",
        "/blob/a%00b",
    ],
)
async def test_path_traversal_keys_are_refused(sandbox: Sandbox, raw_path: str) -> None:
    status, text = await raw_request(
        sandbox,
        f"PUT {raw_path}?X-Expires=9999999999&X-Signature=00 HTTP/1.1\r\n"
        "Host: sandbox\r\nContent-Length: 3",
        b"abc",
    )
    assert (status, error_code(text)) == (400, "InvalidKey")
    data_dir = sandbox.store.data_dir
    assert data_dir is not None
    assert not list((data_dir / "objects").iterdir())


@pytest.mark.parametrize("key", ["../x", "/abs", "a/./b", "a\\b", "a\x00b", "a//b", "", "a/"])
def test_invalid_keys_cannot_be_presigned_or_created(key: str, tmp_path: Path) -> None:
    store = BlobStore(tmp_path, secret=b"s")
    store.base_url = "http://127.0.0.1:1"
    with pytest.raises(BlobError) as info:
        store.presign_put(key)
    assert (info.value.code, info.value.status) == ("InvalidKey", 400)
    with pytest.raises(BlobError) as info:
        store.create_multipart(key)
    assert (info.value.code, info.value.status) == ("InvalidKey", 400)


async def test_part_number_size_and_upload_are_checked_before_the_body(
    sandbox: Sandbox, session: aiohttp.ClientSession
) -> None:
    store = sandbox.store
    upload_id = store.create_multipart(KEY)
    for number in (0, 10_001):
        reply = await put(session, store.presign_part(KEY, upload_id, number), b"abc")
        assert (reply.status, reply.code) == (400, "InvalidArgument")
    reply = await put(session, store.presign_part(KEY, "no-such-upload", 1), b"abc")
    assert (reply.status, reply.code) == (404, "NoSuchUpload")
    reply = await put(session, store.presign_part("other/key.e57", upload_id, 1), b"abc")
    assert (reply.status, reply.code) == (404, "NoSuchUpload")
    # Content-Length above 5 GiB is refused from the header alone; no body is ever sent.
    too_big = 5 * 1024 * MiB + 1
    for url in (store.presign_part(KEY, upload_id, 1), store.presign_put(KEY)):
        status, text = await raw_request(
            sandbox,
            f"PUT {path_and_query(url)} HTTP/1.1\r\nHost: sandbox\r\nContent-Length: {too_big}",
        )
        assert (status, error_code(text)) == (400, "EntityTooLarge")


async def test_single_put_stores_the_object_and_checks_content_md5(
    sandbox: Sandbox, session: aiohttp.ClientSession
) -> None:
    import base64

    store = sandbox.store
    data = payload(300 * KiB, 9)
    url = store.presign_put(KEY)
    bad_md5 = base64.b64encode(hashlib.md5(b"other").digest()).decode()
    reply = await put(session, url, data, {"Content-MD5": bad_md5})
    assert (reply.status, reply.code) == (400, "BadDigest")
    assert store.head(KEY) is None
    good_md5 = base64.b64encode(hashlib.md5(data).digest()).decode()
    reply = await put(session, url, data, {"Content-MD5": good_md5})
    assert reply.status == 200 and reply.etag == f'"{md5_hex(data)}"'
    stored = store.head(KEY)
    assert stored is not None
    assert (stored.size, stored.etag, stored.md5) == (
        len(data),
        f'"{md5_hex(data)}"',
        md5_hex(data),
    )
    path = store.object_path(KEY)
    assert path is not None and path.read_bytes() == data
    assert (await put(session, url, b"")).etag == f'"{md5_hex(b"")}"'  # overwrite, empty object
    assert path.read_bytes() == b""


@pytest.mark.parametrize("key", ["a+b/c%20d é?#&=.ifc", "x/" + "k" * 600 + ".e57", "a", "a/b"])
async def test_unusual_keys_round_trip(
    sandbox: Sandbox, session: aiohttp.ClientSession, key: str
) -> None:
    store = sandbox.store
    data = key.encode()
    assert (await put(session, store.presign_put(key), data)).status == 200
    upload_id = store.create_multipart(key)
    assert (await put(session, store.presign_part(key, upload_id, 1), data)).status == 200
    assert store.list_parts(upload_id)[0].etag == f'"{md5_hex(data)}"'
    path = store.object_path(key)
    assert path is not None and path.read_bytes() == data
    assert store.data_dir is not None and path.parent == store.data_dir / "objects"


async def test_a_body_cut_short_stores_nothing(sandbox: Sandbox) -> None:
    store = sandbox.store
    upload_id = store.create_multipart(KEY)
    url = store.presign_part(KEY, upload_id, 1)
    host, port = urlsplit(sandbox.url).hostname, urlsplit(sandbox.url).port
    assert host is not None and port is not None
    async with await anyio.connect_tcp(host, port) as stream:
        head = f"PUT {path_and_query(url)} HTTP/1.1\r\nHost: x\r\nContent-Length: {2 * MiB}\r\n\r\n"
        await stream.send(head.encode() + payload(MiB, 1))
    with anyio.fail_after(5):
        while store.stats()["disconnects"] < 1:
            await anyio.sleep(0.01)
    assert store.list_parts(upload_id) == []
    data_dir = store.data_dir
    assert data_dir is not None
    assert not list((data_dir / "tmp").iterdir())
    assert not list((data_dir / "uploads" / upload_id).iterdir())


# ---- faults --------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(STATUS_FAULTS))
async def test_status_faults_answer_their_status_then_the_part_succeeds(
    sandbox: Sandbox, session: aiohttp.ClientSession, kind: str
) -> None:
    store = sandbox.store
    upload_id = store.create_multipart(KEY)
    store.faults = FaultPlan(schedule={(KEY, 1, 0): kind}, retry_after=0.25)
    url = store.presign_part(KEY, upload_id, 1)
    data = payload(MIN_PART, 3)
    reply = await put(session, url, data)
    expected = STATUS_FAULTS[kind]
    assert (reply.status, reply.code) == (expected.status, expected.code)
    if kind == "throttle":
        assert reply.status == 429 and reply.headers["Retry-After"] == "0.25"
    if kind == "slowdown":
        assert reply.status == 503 and reply.code == "SlowDown"
    if kind == "expired":
        assert "Request has expired" in reply.body
    assert store.list_parts(upload_id) == []
    reply = await put(session, url, data)  # attempt 1: no fault scheduled
    assert reply.status == 200 and reply.etag == f'"{md5_hex(data)}"'
    assert store.stats()["faults"] == {kind: 1}


async def test_reset_fault_drops_the_connection_mid_body_quietly(
    sandbox: Sandbox, session: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    store = sandbox.store
    upload_id = store.create_multipart(KEY)
    store.faults = FaultPlan(schedule={(KEY, 1, 0): "reset"})
    url = store.presign_part(KEY, upload_id, 1)
    data = payload(4 * MiB, 4)
    with caplog.at_level(logging.INFO), pytest.raises(aiohttp.ClientConnectionError):
        await put(session, url, data)
    assert store.list_parts(upload_id) == []
    assert 0 < store.stats()["bytes_received"] < len(data)
    assert (await put(session, url, data)).etag == f'"{md5_hex(data)}"'
    noisy = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert noisy == []


async def test_stall_fault_stops_reading_then_drops_the_connection(
    sandbox: Sandbox, session: aiohttp.ClientSession
) -> None:
    store = sandbox.store
    upload_id = store.create_multipart(KEY)
    store.faults = FaultPlan(schedule={(KEY, 1, 0): "stall"}, stall_seconds=0.4)
    url = store.presign_part(KEY, upload_id, 1)
    data = payload(8 * MiB, 5)
    started = anyio.current_time()
    with pytest.raises((aiohttp.ClientConnectionError, TimeoutError)):
        await put(session, url, data)
    assert anyio.current_time() - started >= 0.35
    assert store.list_parts(upload_id) == []
    # A client with a shorter timeout gives up first; the server notices and stops stalling.
    store.faults = FaultPlan(schedule={(KEY, 1, 1): "stall"}, stall_seconds=30)
    with anyio.fail_after(5), pytest.raises((aiohttp.ClientConnectionError, TimeoutError)):
        await put(session, url, data, timeout=0.3)
    assert (await put(session, url, data)).etag == f'"{md5_hex(data)}"'


async def test_bad_etag_fault_stores_the_right_bytes_but_answers_a_wrong_etag(
    sandbox: Sandbox, session: aiohttp.ClientSession
) -> None:
    store = sandbox.store
    upload_id = store.create_multipart(KEY)
    store.faults = FaultPlan(schedule={(KEY, 1, 0): "bad_etag"})
    url = store.presign_part(KEY, upload_id, 1)
    data = payload(MIN_PART, 6)
    reply = await put(session, url, data)
    assert reply.status == 200
    assert reply.etag is not None and re.fullmatch(r'"[0-9a-f]{32}"', reply.etag)
    assert reply.etag != f'"{md5_hex(data)}"'
    assert store.list_parts(upload_id) == [StoredPart(1, len(data), f'"{md5_hex(data)}"')]
    with pytest.raises(BlobError) as info:  # the wrong ETag does not complete
        store.complete_multipart(KEY, upload_id, [(1, reply.etag)])
    assert info.value.code == "InvalidPart"
    reply = await put(session, url, data)  # only once
    assert reply.etag == f'"{md5_hex(data)}"'
    stored = store.complete_multipart(KEY, upload_id, [(1, reply.etag)])
    path = store.object_path(KEY)
    assert path is not None and path.read_bytes() == data and stored.md5 == md5_hex(data)


async def test_latency_delays_every_request(
    sandbox: Sandbox, session: aiohttp.ClientSession
) -> None:
    store = sandbox.store
    store.faults = FaultPlan(latency=0.2)
    started = anyio.current_time()
    assert (await put(session, store.presign_put(KEY), b"abc")).status == 200
    assert anyio.current_time() - started >= 0.2


def test_fault_plan_decisions_are_deterministic_and_bounded() -> None:
    rates = {"503": 0.2, "reset": 0.2, "throttle": 0.2, "bad_etag": 0.1}
    plan = FaultPlan(seed=42, rates=rates)
    slots = [
        (key, part, attempt) for key in ("a", "b") for part in range(50) for attempt in range(6)
    ]
    first = [plan.decide(*slot) for slot in slots]
    assert (
        first == [FaultPlan(seed=42, rates=rates).decide(*slot) for slot in reversed(slots)][::-1]
    )
    assert first != [FaultPlan(seed=43, rates=rates).decide(*slot) for slot in slots]
    assert set(first) - {None} <= set(rates)
    assert len(set(first)) >= 4  # the draw really spreads over the kinds
    # Rates are never drawn at attempt_index >= max_faulty_attempts; the schedule always wins.
    assert all(plan.decide(key, part, 3) is None for key in "ab" for part in range(50))
    everything = FaultPlan(rates={"500": 1.0}, schedule={("a", 1, 7): "stall"})
    assert [everything.decide("a", 1, i) for i in range(9)] == ["500"] * 3 + [None] * 4 + [
        "stall",
        None,
    ]
    assert FaultPlan(seed=1, rates=rates) == FaultPlan(seed=1, rates=dict(rates))
    assert hash(FaultPlan(seed=1, rates=rates)) == hash(FaultPlan(seed=1, rates=dict(rates)))
    assert FaultPlan.from_spec("503=0.2, reset=0.2,throttle=0.2,bad_etag=0.1", seed=42) == plan
    for bad in ({"teapot": 0.1}, {"500": 1.5}, {"500": 0.6, "503": 0.6}):
        with pytest.raises(ValueError):
            FaultPlan(rates=bad)
    with pytest.raises(ValueError):
        FaultPlan(schedule={("a", 1, 0): "teapot"})
    assert set(KINDS) == set(STATUS_FAULTS) | {"reset", "stall", "bad_etag"}


async def test_same_seed_same_fault_sequence_whatever_the_interleaving(
    sandbox: Sandbox, session: aiohttp.ClientSession
) -> None:
    store = sandbox.store
    plan = FaultPlan(seed=7, rates={"503": 0.25, "reset": 0.15, "throttle": 0.15}, retry_after=0)
    parts = range(1, 9)
    data = payload(16 * KiB, 7)

    async def attempt(url: str) -> str:
        try:
            reply = await put(session, url, data)
        except aiohttp.ClientConnectionError:
            return "reset"
        return str(reply.status)

    async def run(order: Sequence[int], concurrent: bool) -> dict[int, list[str]]:
        store.faults = plan
        store.reset_attempts()
        upload_id = store.create_multipart(KEY)
        outcomes: dict[int, list[str]] = {}

        async def until_stored(number: int) -> None:
            url = store.presign_part(KEY, upload_id, number)
            history = outcomes.setdefault(number, [])
            while not history or history[-1] != "200":
                history.append(await attempt(url))

        if concurrent:
            async with anyio.create_task_group() as tg:
                for number in order:
                    tg.start_soon(until_stored, number)
        else:
            for number in order:
                await until_stored(number)
        assert [p.number for p in store.list_parts(upload_id)] == list(parts)
        return outcomes

    sequential = await run(list(parts), concurrent=False)
    interleaved = await run(list(reversed(parts)), concurrent=True)
    assert sequential == interleaved
    expected_kind = {"503": "503", "reset": "reset", "throttle": "429", None: "200"}
    for number, history in sequential.items():
        predicted = [expected_kind[plan.decide(KEY, number, i)] for i in range(len(history))]
        assert history == predicted
        assert len(history) <= plan.max_faulty_attempts + 1
    assert any(len(history) > 1 for history in sequential.values())


# ---- discard mode, stats, life cycle -------------------------------------------------------------


async def test_discard_mode_hashes_and_counts_but_stores_no_bytes(
    anyio_backend: str, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    config = SandboxConfig(data_dir=None, discard=True, min_part_size=MIN_PART)
    parts = [payload(MIN_PART, 1), payload(700 * KiB, 2)]
    async with Sandbox(config) as sb:
        store = sb.store
        assert store.data_dir is None
        upload_id = store.create_multipart(KEY)
        listed = []
        for number, data in enumerate(parts, start=1):
            reply = await put(session, store.presign_part(KEY, upload_id, number), data)
            assert reply.etag == f'"{md5_hex(data)}"'
            listed.append((number, reply.etag))
        stored = store.complete_multipart(KEY, upload_id, listed)
        assert stored.etag == s3_multipart_etag(parts)
        assert stored.size == sum(map(len, parts))
        assert stored.md5 == ""  # documented: unknown without the bytes
        assert store.object_path(KEY) is None
        single = payload(1000, 3)
        reply = await put(session, store.presign_put("single.ifc"), single)
        assert reply.etag == f'"{md5_hex(single)}"'
        assert store.head("single.ifc") == StoredObject(
            "single.ifc", 1000, f'"{md5_hex(single)}"', md5_hex(single)
        )
        assert store.object_path("single.ifc") is None
        stats = store.stats()
        assert stats["discard"] is True
        assert stats["bytes_received"] == stats["bytes_stored"] == sum(map(len, parts)) + 1000
    assert not any(p.name.startswith("upload-engine-sandbox-") for p in Path(tmp_path).iterdir())


async def test_stats_count_requests_and_faults(
    sandbox: Sandbox, session: aiohttp.ClientSession
) -> None:
    store = sandbox.store
    upload_id = store.create_multipart(KEY)
    store.faults = FaultPlan(schedule={(KEY, 1, 0): "503", (KEY, 2, 0): "throttle"}, retry_after=0)
    data = payload(1000, 1)
    for number in (1, 1, 2, 2):
        await put(session, store.presign_part(KEY, upload_id, number), data)
    await put(session, store.presign_part(KEY, upload_id, 3, expires_in=-5), data)
    async with session.get(f"{sandbox.url}/_sandbox/stats") as resp:
        assert resp.status == 200
        stats = await resp.json()
    assert stats["requests"] == 5
    assert stats["faults"] == {"503": 1, "throttle": 1}
    assert stats["responses"] == {"200": 2, "403": 1, "429": 1, "503": 1}
    assert stats["errors"] == {"AccessDenied": 1, "ServiceUnavailable": 1, "TooManyRequests": 1}
    assert stats["puts_by_part"] == {KEY: {"1": 2, "2": 2}}  # the expired one never counted
    assert stats["bytes_received"] == 4 * len(data)
    assert stats["bytes_stored"] == 2 * len(data)
    assert stats["parts_stored"] == 2 and stats["uploads_open"] == 1
    assert "planes" in stats
    store.reset_stats()
    assert store.stats()["requests"] == 0


async def test_sandbox_life_cycle_removes_its_temp_dir(anyio_backend: str) -> None:
    async with Sandbox(SandboxConfig()) as sb:
        data_dir = sb.store.data_dir
        assert data_dir is not None and data_dir.is_dir()
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", sb.url)
        upload_id = sb.store.create_multipart(KEY)
        assert (data_dir / "uploads" / upload_id).is_dir()
    assert not data_dir.exists()
    with pytest.raises(RuntimeError):
        _ = sb.url
    assert data_dir.name.startswith("upload-engine-sandbox-")
