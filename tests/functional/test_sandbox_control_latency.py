"""The sandbox's control-plane latency (``SandboxConfig.control_latency``, ``--control-latency``).

A simulation knob, not a service behaviour: every request to a route a control plane registers
(Matterport's and Speckle's GraphQL, Speckle's REST upload and subscription upgrade) is answered
that many seconds later; the blob store and the admin routes are not delayed (the blob store has
its own ``latency``). The real clients (``engine.graphql.GraphQLClient`` as both providers build
it) see every call take at least that long, and concurrent calls wait side by side, not in turn.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import anyio
import pytest

from engine import UploadConfig, Uploader
from engine.graphql import GraphQLClient
from engine.providers.matterport import ADD_IMPORT_SESSION, Matterport, MatterportCredentials
from engine.providers.speckle.documents import SERVER
from engine.providers.speckle.errors import classify as speckle_classify
from engine.sandbox.server import Sandbox, SandboxConfig
from engine.sandbox.speckle import SpeckleSandboxConfig

pytestmark = pytest.mark.anyio

LATENCY = 0.25
MATTERPORT = MatterportCredentials("sandbox-token-id", "sandbox-token-secret")
NEW_SESSION = {"organizationId": "sandbox-org", "processType": "E57", "name": "latency"}


@asynccontextmanager
async def clients(**config: Any) -> AsyncIterator[tuple[Sandbox, GraphQLClient, GraphQLClient]]:
    """A sandbox, and the real Matterport and Speckle GraphQL clients of an open uploader."""
    async with Sandbox(SandboxConfig(discard=True, **config)) as sb, Uploader(UploadConfig()) as up:
        services = up.services
        matterport = Matterport(MATTERPORT, endpoint=f"{sb.url}/api/import/graph")
        speckle = GraphQLClient(
            services.http,
            f"{sb.url}/graphql",
            headers={"Authorization": "Bearer sandbox-token"},
            classify=speckle_classify,
            policy=services.retry,
            clock=services.clock,
        )
        yield sb, matterport.graphql(services), speckle


async def timed(call: Awaitable[Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = await call
    return time.perf_counter() - started, result


async def test_every_graphql_call_of_the_real_clients_waits() -> None:
    async with clients(control_latency=LATENCY) as (_sb, matterport, speckle):
        took, data = await timed(matterport.execute(ADD_IMPORT_SESSION, NEW_SESSION))
        assert data["addImportSession"]["id"]
        assert took >= LATENCY
        took, data = await timed(speckle.execute(SERVER))
        assert data["serverInfo"]["version"]
        assert took >= LATENCY


async def test_data_and_admin_requests_are_not_delayed() -> None:
    async with clients(control_latency=5.0) as (sb, _mp, _sp), aiohttp.ClientSession() as http:
        with anyio.fail_after(2.0):  # far below the control planes' 5 s
            async with http.put(f"{sb.url}/blob/not-signed", data=b"x") as put:
                assert put.status == 403  # the blob store answered, unsigned
            async with http.get(f"{sb.url}/_sandbox/stats") as stats:
                assert stats.status == 200


async def test_concurrent_calls_wait_side_by_side() -> None:
    async with clients(control_latency=LATENCY) as (_sb, matterport, _speckle):
        tooks: list[float] = []

        async def one() -> None:
            took, _ = await timed(matterport.execute(ADD_IMPORT_SESSION, NEW_SESSION))
            tooks.append(took)

        started = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for _ in range(4):
                tg.start_soon(one)
        assert len(tooks) == 4 and min(tooks) >= LATENCY
        assert time.perf_counter() - started < 2 * LATENCY  # a link delay, not a queue


async def test_speckle_rest_upload_and_subscription_upgrade_wait() -> None:
    v2 = SpeckleSandboxConfig(speckle_api="v2")
    async with clients(control_latency=LATENCY, speckle=v2) as (sb, _mp, _sp):
        form = aiohttp.FormData()
        form.add_field("file", b"ISO-10303-21;\n", filename="a.ifc")
        async with aiohttp.ClientSession() as http:
            url = f"{sb.url}/api/file/autodetect/sandbox-project/main"
            headers = {"Authorization": "Bearer sandbox-token"}
            started = time.perf_counter()
            async with http.post(url, data=form, headers=headers) as answer:
                assert answer.status == 201, await answer.text()
            assert time.perf_counter() - started >= LATENCY
    async with clients(control_latency=LATENCY) as (sb, _mp, _sp), aiohttp.ClientSession() as http:
        started = time.perf_counter()
        async with http.ws_connect(f"{sb.url}/graphql", protocols=("graphql-ws",)) as ws:
            assert ws.protocol == "graphql-ws"
            assert time.perf_counter() - started >= LATENCY


@pytest.mark.parametrize("bad", [-0.01, float("nan"), float("inf")])
def test_control_latency_must_be_finite_and_not_negative(bad: float) -> None:
    with pytest.raises(ValueError, match="control_latency must be a finite number of seconds"):
        SandboxConfig(control_latency=bad)
