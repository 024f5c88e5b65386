"""Live status in the sandbox: the ``projectModelIngestionUpdated`` subscription over WebSocket
(subscriptions-transport-ws, subprotocol ``graphql-ws``) and ``Model.ingestionHistory``, over real
HTTP against the in-process sandbox.

Sources: ``packages/server/app.ts`` (``buildApolloSubscriptionServer``: the protocol, where the
token is looked for, the keep-alive) in specklesystems/speckle-server; the subscription's name,
input and payload from the SDKs (specklepy ``subscription_resource.py`` and
``model_ingestion_inputs.py``, speckle-sharp-sdk ``SubscriptionResource.cs``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest

from engine.sandbox.speckle import SpeckleSandboxConfig
from tests.functional.test_sandbox_speckle import (
    PROJECT,
    START_PORTABLE,
    TOKEN,
    Client,
    ifc_bytes,
    sandbox,
)

pytestmark = pytest.mark.anyio

# The SDKs' document, verbatim but for its operation name.
SUBSCRIPTION = """
subscription IngestionUpdated($input: ProjectModelIngestionSubscriptionInput!) {
  data: projectModelIngestionUpdated(input: $input) {
    modelIngestion {
      id
      createdAt
      updatedAt
      modelId
      projectId
      userId
      cancellationRequested
      statusData {
        ... on HasModelIngestionStatus {
          status
        }
        ... on HasProgressMessage {
          progressMessage
        }
        ... on ModelIngestionSuccessStatus
        {
          versionId
        }
      }
    }
    type
  }
}
"""
HISTORY = """
query($p: String!, $m: String!, $limit: Int!, $cursor: String) {
  project(id: $p) { model(id: $m) {
    latestIngestion { id }
    ingestionHistory(limit: $limit, cursor: $cursor) {
      totalCount cursor
      items { id modelId statusData { ... on HasModelIngestionStatus { status } } }
    }
  } }
}
"""
LIVE = SpeckleSandboxConfig(step_delay=0.02)
TERMINAL = {"success", "failed", "cancelled", "timeout", "invalidInput"}


@asynccontextmanager
async def socket(
    client: Client, token: str | None = TOKEN, protocols: tuple[str, ...] = ("graphql-ws",)
) -> AsyncIterator[aiohttp.ClientWebSocketResponse]:
    """A subscription socket; with ``token``, initialised (``connection_ack`` and a ``ka`` read)."""
    async with client.http.ws_connect(client.endpoint, protocols=protocols) as ws:
        if token is not None:
            await ws.send_json(
                {"type": "connection_init", "payload": {"Authorization": f"Bearer {token}"}}
            )
            assert await receive(ws, keep_alives=True) == {"type": "connection_ack"}
            assert await receive(ws, keep_alives=True) == {"type": "ka"}
        yield ws


async def receive(
    ws: aiohttp.ClientWebSocketResponse, *, keep_alives: bool = False, within: float = 5.0
) -> Any:
    """The next message (``ka`` skipped unless ``keep_alives``)."""
    with anyio.fail_after(within):
        while True:
            message = await ws.receive()
            if message.type != aiohttp.WSMsgType.TEXT:
                return message
            data = message.json()
            if keep_alives or data.get("type") != "ka":
                return data


def subscribe(op_id: str, reference: Mapping[str, str], **extra: str) -> dict[str, Any]:
    variables = {"input": {"projectId": PROJECT, "ingestionReference": dict(reference), **extra}}
    return {
        "type": "start",
        "id": op_id,
        "payload": {"query": SUBSCRIPTION, "variables": variables},
    }


async def start_ingestion(client: Client, model_id: str, file_name: str, body: bytes) -> str:
    file_id, etag = await client.upload(file_name, body)
    status, response, _ = await client.start(file_id, etag, model_id)
    assert status == 200 and "errors" not in response, response
    return str(response["data"]["fileUploadMutations"]["startFileIngestion"]["id"])


async def collect_until_terminal(
    ws: aiohttp.ClientWebSocketResponse, op_id: str, ingestions: int
) -> list[dict[str, Any]]:
    """The events of ``op_id`` until ``ingestions`` of them are terminal."""
    events: list[dict[str, Any]] = []
    done: set[str] = set()
    while len(done) < ingestions:
        message = await receive(ws)
        assert message["type"] == "data" and message["id"] == op_id, message
        event = message["payload"]["data"]["data"]
        events.append(event)
        if event["modelIngestion"]["statusData"]["status"] in TERMINAL:
            done.add(event["modelIngestion"]["id"])
    return events


# ---- the subscription ----------------------------------------------------------------------------


async def test_one_subscription_follows_every_ingestion_of_a_model(tmp_path: Path) -> None:
    async with sandbox(tmp_path, LIVE) as (client, plane, sb):
        model_id = await client.create_model("tower")
        other_model = await client.create_model("elsewhere")
        async with socket(client) as ws:
            await ws.send_json(subscribe("1", {"modelId": model_id}))
            await anyio.sleep(0.05)
            first = await start_ingestion(client, model_id, "a.ifc", ifc_bytes(tmp_path, seed=1))
            await start_ingestion(client, other_model, "x.ifc", ifc_bytes(tmp_path, seed=3))
            second = await start_ingestion(client, model_id, "b.ifc", ifc_bytes(tmp_path, seed=2))
            events = await collect_until_terminal(ws, "1", ingestions=2)
            await ws.send_json({"type": "stop", "id": "1"})
            assert await receive(ws) == {"type": "complete", "id": "1", "payload": None}
        by_ingestion: dict[str, list[tuple[str, str]]] = {first: [], second: []}
        for event in events:
            ingestion = event["modelIngestion"]
            assert ingestion["modelId"] == model_id and ingestion["projectId"] == PROJECT
            assert ingestion["cancellationRequested"] is False and ingestion["userId"]
            by_ingestion[ingestion["id"]].append((event["type"], ingestion["statusData"]["status"]))
        for seen in by_ingestion.values():
            assert seen[0] == ("created", "queued"), seen
            assert all(kind == "updated" for kind, _ in seen[1:])
            assert [status for _, status in seen[1:-1]] == ["processing"] * 3
            assert seen[-1] == ("updated", "success")
        success = [e for e in events if e["modelIngestion"]["statusData"]["status"] == "success"]
        assert {e["modelIngestion"]["statusData"]["versionId"] for e in success} <= set(
            plane.versions
        )
        assert sb.stats()["planes"]["speckle"]["subscriptions"] == 1


async def test_a_subscription_by_ingestion_and_by_message_type(tmp_path: Path) -> None:
    async with sandbox(tmp_path, LIVE) as (client, _, _):
        model_id = await client.create_model("tower")
        async with socket(client) as ws:
            await ws.send_json(subscribe("created", {"modelId": model_id}, messageType="created"))
            await anyio.sleep(0.05)
            ingestion_id = await start_ingestion(client, model_id, "a.ifc", ifc_bytes(tmp_path))
            await ws.send_json(subscribe("one", {"ingestionId": ingestion_id}))
            created = await receive(ws)
            assert created["id"] == "created"
            assert created["payload"]["data"]["data"]["type"] == "created"
            events = await collect_until_terminal(ws, "one", ingestions=1)
            assert {e["type"] for e in events} == {"updated"}  # it existed before: no "created"
            assert {e["modelIngestion"]["id"] for e in events} == {ingestion_id}
            # The messageType filter kept the other subscription quiet.
            await ws.send_json({"type": "stop", "id": "created"})
            assert await receive(ws) == {"type": "complete", "id": "created", "payload": None}


async def test_the_socket_speaks_subscriptions_transport_ws(tmp_path: Path) -> None:
    config = SpeckleSandboxConfig(step_delay=0.02, ws_keepalive=0.05)
    async with sandbox(tmp_path, config) as (client, _, _):
        # Another subprotocol: accepted, then closed with 1002.
        async with socket(client, token=None, protocols=("graphql-transport-ws",)) as ws:
            message = await receive(ws)
            assert message.type == aiohttp.WSMsgType.CLOSE and ws.close_code == 1002
        # No token in connection_init: connection_error, then 1011.
        async with socket(client, token=None) as ws:
            await ws.send_json({"type": "connection_init", "payload": {}})
            assert await receive(ws) == {
                "type": "connection_error",
                "payload": {"message": "You need a token to subscribe"},
            }
            assert (await receive(ws)).type == aiohttp.WSMsgType.CLOSE and ws.close_code == 1011
        async with socket(client) as ws:
            # Keep-alives keep coming.
            for _ in range(2):
                assert await receive(ws, keep_alives=True) == {"type": "ka"}
            await ws.send_json({"type": "nonsense", "id": "7"})
            assert await receive(ws) == {
                "type": "error",
                "id": "7",
                "payload": {"message": "Invalid message type!"},
            }
            await ws.send_str("not json")
            message = await receive(ws)
            assert message["type"] == "connection_error" and message["payload"]["message"]
            await ws.send_json({"type": "start", "id": "s", "payload": {"query": "subscription {"}})
            message = await receive(ws)
            assert message["type"] == "error" and "Syntax Error" in message["payload"]["message"]
            await ws.send_json(
                {"type": "start", "id": "v", "payload": {"query": "subscription { nope }"}}
            )
            message = await receive(ws)
            assert message["type"] == "data" and message["payload"]["errors"]
            assert await receive(ws) == {"type": "complete", "id": "v", "payload": None}
            # ingestionReference is one-of: both keys is an error result, then complete.
            await ws.send_json(subscribe("both", {"modelId": "m", "ingestionId": "i"}))
            message = await receive(ws)
            assert message["payload"]["data"] is None
            assert "exactly one key" in message["payload"]["errors"][0]["message"]
            assert await receive(ws) == {"type": "complete", "id": "both", "payload": None}
            # A query runs too, and completes.
            query = '{ project(id: "sandbox-project") { id } }'
            await ws.send_json({"type": "start", "id": "q", "payload": {"query": query}})
            assert (await receive(ws))["payload"] == {"data": {"project": {"id": PROJECT}}}
            assert await receive(ws) == {"type": "complete", "id": "q", "payload": None}
        # A GET that is no upgrade is Apollo's 400.
        async with client.http.get(client.endpoint) as response:
            assert response.status == 400
            body = await response.json()
            assert body["errors"][0]["extensions"]["code"] == "BAD_REQUEST"


async def test_a_subscription_checks_access(tmp_path: Path) -> None:
    config = SpeckleSandboxConfig(
        step_delay=0.02, projects={PROJECT, "private"}, tokens={TOKEN: {PROJECT}}
    )
    async with sandbox(tmp_path, config) as (client, _, _):
        # A token the server does not know is let in, as an anonymous caller.
        async with socket(client, token="not-a-token-at-all") as ws:
            await ws.send_json(subscribe("1", {"modelId": "m"}))
            message = await receive(ws)
            error = message["payload"]["errors"][0]
            assert error["extensions"]["code"] == "FORBIDDEN"
            assert error["message"] == "You are not logged in to this server"
            assert "not-a-token-at-all" not in str(message)
            assert await receive(ws) == {"type": "complete", "id": "1", "payload": None}
        async with socket(client) as ws:
            variables = {"input": {"projectId": "private", "ingestionReference": {"modelId": "m"}}}
            payload = {"query": SUBSCRIPTION, "variables": variables}
            await ws.send_json({"type": "start", "id": "2", "payload": payload})
            message = await receive(ws)
            assert message["payload"]["errors"][0]["extensions"]["code"] == "FORBIDDEN"


# ---- the ingestion history -----------------------------------------------------------------------


async def test_the_history_recovers_a_lost_start_answer(tmp_path: Path) -> None:
    async with sandbox(tmp_path, LIVE) as (client, plane, _):
        model_id = await client.create_model("tower")
        file_id, etag = await client.upload("a.ifc", ifc_bytes(tmp_path))
        variables = {
            "input": {"etag": etag, "fileId": file_id, "modelId": model_id, "projectId": PROJECT}
        }
        # The answer to startFileIngestion is lost on the way back (the request did run) ...
        async with client.http.post(
            client.endpoint,
            json={"query": START_PORTABLE, "variables": variables},
            headers={"Authorization": f"Bearer {TOKEN}"},
        ):
            pass
        # ... and a retry cannot tell: completion is not idempotent.
        assert (await client.error(START_PORTABLE, variables))[0] == "ALREADY_REGISTERED_BLOB_ERROR"
        data = await client.data(HISTORY, {"p": PROJECT, "m": model_id, "limit": 10})
        history = data["project"]["model"]["ingestionHistory"]
        assert history["totalCount"] == 1 and history["cursor"] is None
        [found] = history["items"]
        assert found["modelId"] == model_id
        assert data["project"]["model"]["latestIngestion"] == {"id": found["id"]}
        assert plane.ingestions[found["id"]].file_id == file_id


async def test_the_history_pages_newest_first(tmp_path: Path) -> None:
    async with sandbox(tmp_path, LIVE) as (client, _, _):
        model_id = await client.create_model("tower")
        started = [
            await start_ingestion(client, model_id, f"{n}.ifc", ifc_bytes(tmp_path, seed=n))
            for n in range(3)
        ]
        pages, cursor = [], None
        while True:
            variables = {"p": PROJECT, "m": model_id, "limit": 2, "cursor": cursor}
            history = (await client.data(HISTORY, variables))["project"]["model"]
            history = history["ingestionHistory"]
            assert history["totalCount"] == 3
            pages.append([item["id"] for item in history["items"]])
            cursor = history["cursor"]
            if cursor is None:
                break
        assert pages == [started[::-1][:2], started[::-1][2:]]
