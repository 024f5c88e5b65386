"""Live status: the ``projectModelIngestionUpdated`` subscription over a WebSocket on ``/graphql``.

Rules this module keeps, each one the real server's unless marked:

* **The protocol** is subscriptions-transport-ws 0.11's (``packages/server/app.ts``,
  ``buildApolloSubscriptionServer``): subprotocol ``graphql-ws`` (or the older
  ``graphql-subscriptions``), else the socket is closed with 1002. ``connection_init`` must carry
  the token in ``payload.Authorization`` (or ``authorization``, ``headers.Authorization``,
  ``headers.authorization``) as ``<scheme> <token>``; without one the server answers
  ``connection_error`` "You need a token to subscribe" and closes with 1011. Then
  ``connection_ack``, a ``ka`` at once and every ``ws_keepalive`` seconds. ``start`` (``id``,
  ``payload: {query, variables, operationName}``) runs an operation: a syntax error is an
  ``error`` message (and nothing more); validation errors a ``data`` message with ``errors``
  and a ``complete``; each event a ``data`` message; ``stop`` ends it with ``complete``; a
  second ``start`` with a live id replaces it. A message that is not JSON is a
  ``connection_error``, an unknown type an ``error`` "Invalid message type!";
  ``connection_terminate`` closes the socket.
* **Who may subscribe.** A token that names no configured token is let in (the server's
  ``buildContext`` does not refuse it) as an anonymous caller; the subscription then checks
  access at ``start`` (sandbox rule: the server's filters check it at the first event), so a
  refused subscription is a ``data`` message with the access error and a ``complete``.
* **projectModelIngestionUpdated(input)** (the SDKs' ``CreateProjectModelIngestionUpdated
  Subscription``): ``input.ingestionReference`` names exactly one of ``ingestionId`` (that
  ingestion) or ``modelId`` (every ingestion of the model, so one subscription follows a model's
  ingestions as they come); ``messageType`` keeps only that type. Each message carries the
  ingestion and ``type``: ``created`` (status queued) when it starts, ``updated`` for every
  status it goes through after (each processing step, the terminal status; a step that passed
  between two looks is reported too). Ingestions that exist when
  the subscription starts are not replayed: events only, like a pubsub.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any, Final

import anyio
import anyio.abc
import orjson
from aiohttp import WSMsgType, web
from graphql import (
    ExecutionResult,
    GraphQLError,
    OperationType,
    execute,
    get_operation_ast,
    parse,
    subscribe,
    validate,
)

from engine.sandbox.responses import json_response
from engine.sandbox.speckle.errors import BAD_REQUEST, BAD_USER_INPUT, INTERNAL_SERVER_ERROR
from engine.sandbox.speckle.http import format_error
from engine.sandbox.speckle.ingestion import ingestion_view, snapshot_for_phase
from engine.sandbox.speckle.records import Caller, Info, IngestionRecord, StatusSnapshot

__all__ = ["PROTOCOLS", "handle_socket", "ingestion_updates"]

if TYPE_CHECKING:  # the plane imports this module
    from engine.sandbox.speckle.plane import SpecklePlane

PROTOCOLS: Final = ("graphql-ws", "graphql-subscriptions")
_TOKEN_PATHS: Final = (("Authorization",), ("authorization",), ("headers", "Authorization"),
                       ("headers", "authorization"))  # fmt: skip
_NO_TOKEN: Final = "You need a token to subscribe"  # noqa: S105 - a message, not a secret
_ONE_OF: Final = 'OneOf Input Object "ModelIngestionReference" must specify exactly one key.'


async def handle_socket(plane: SpecklePlane, request: web.Request) -> web.StreamResponse:
    """``GET /graphql``: a subscription socket (a GET that is no upgrade gets Apollo's 400)."""
    ws = web.WebSocketResponse(protocols=PROTOCOLS, autoping=True)
    if not ws.can_prepare(request).ok:
        message = (
            "GraphQL operations must contain a non-empty `query` or a `persistedQuery` extension."
        )
        body = {"errors": [{"message": message, "extensions": {"code": BAD_REQUEST}}]}
        return json_response(body, status=400)
    await ws.prepare(request)
    plane.count("websockets")
    if ws.ws_protocol not in PROTOCOLS:
        await ws.close(code=1002)
        return ws
    await _Session(plane, ws).run()
    return ws


async def ingestion_updates(
    plane: SpecklePlane, info: Info, input: Mapping[str, Any]
) -> AsyncIterator[dict[str, Any]]:
    """The event stream of ``projectModelIngestionUpdated`` (checks first: errors become the
    operation's result, before any event)."""
    project_id = str(input["projectId"])
    plane._authorize(info, project_id)
    reference = input["ingestionReference"]
    named = {k: v for k, v in reference.items() if v is not None}
    if len(named) != 1:
        raise GraphQLError(_ONE_OF, extensions={"code": BAD_USER_INPUT})
    plane.count("subscriptions")
    return _watch(plane, project_id, named, input.get("messageType"))


async def _watch(
    plane: SpecklePlane, project_id: str, reference: Mapping[str, str], wanted: str | None
) -> AsyncIterator[dict[str, Any]]:
    def matching() -> list[IngestionRecord]:
        return [
            r
            for r in plane._ingestions.values()
            if r.kind == "ingestion"
            and r.project_id == project_id
            and (r.id == reference.get("ingestionId") or r.model_id == reference.get("modelId"))
        ]

    seen: dict[str, StatusSnapshot] = {r.id: plane._known_status(r) for r in matching()}
    while True:
        since = plane.changes
        for record in matching():
            snapshot = await plane._status(record)
            for kind, shown in _changes(plane, record, seen.get(record.id), snapshot):
                if wanted is None or wanted == kind:
                    view = {**ingestion_view(record), "statusData": shown.to_graphql()}
                    yield {"modelIngestion": view, "type": kind}
            seen[record.id] = snapshot
        wait = plane.seconds_to_next_phase(matching())
        await plane.wait_for_change(since, None if wait is None else max(wait, 0.005))


def _changes(
    plane: SpecklePlane, record: IngestionRecord, before: StatusSnapshot | None, now: StatusSnapshot
) -> list[tuple[str, StatusSnapshot]]:
    """The messages between two looks at an ingestion (``before`` None: it is new): every status
    it went through, so a step that passed between two looks is reported too."""
    steps = plane.config.processing_steps
    name = record.file_name
    changes: list[tuple[str, StatusSnapshot]] = []
    if before is None:
        before = snapshot_for_phase(0, steps=steps, file_name=name)
        changes.append(("created", before))
    if before == now:
        return changes
    last = steps if now.terminal else _phase_of(now, steps)
    for phase in range(_phase_of(before, steps) + 1, last + 1):
        changes.append(("updated", snapshot_for_phase(phase, steps=steps, file_name=name)))
    if now.terminal:
        changes.append(("updated", now))
    return changes


def _phase_of(snapshot: StatusSnapshot, steps: int) -> int:
    """The phase a non-terminal status shows (queued 0, processing k of ``steps``)."""
    if snapshot.status == "processing" and snapshot.progress is not None:
        return round(snapshot.progress * (steps + 1))
    return 0 if snapshot.status == "queued" else steps + 1


class _Session:
    """One socket: its caller, its live operations (each a task with its own cancel scope)."""

    def __init__(self, plane: SpecklePlane, ws: web.WebSocketResponse) -> None:
        self.plane = plane
        self.ws = ws
        self.caller = Caller(frozenset())
        self._operations: dict[str, anyio.CancelScope] = {}
        self._lock = anyio.Lock()
        self._task_group: anyio.abc.TaskGroup | None = None

    async def run(self) -> None:
        async with anyio.create_task_group() as tg:
            self._task_group = tg
            async for message in self.ws:
                if message.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                    data = message.data
                    await self._on_message(data if isinstance(data, str) else bytes(data))
                if self.ws.closed:
                    break
            tg.cancel_scope.cancel()

    async def send(self, message: Mapping[str, Any]) -> None:
        async with self._lock:
            if not self.ws.closed:
                await self.ws.send_str(orjson.dumps(message).decode())

    async def _on_message(self, text: str | bytes) -> None:
        try:
            message = orjson.loads(text)
            if not isinstance(message, dict):
                raise ValueError("a message must be a JSON object")
        except ValueError as exc:
            payload = {"message": str(exc)}
            await self.send({"type": "connection_error", "id": None, "payload": payload})
            return
        kind, op_id = message.get("type"), message.get("id")
        if kind == "connection_init":
            await self._connect(message.get("payload"), op_id)
        elif kind == "connection_terminate":
            await self.ws.close()
        elif kind == "start" and isinstance(op_id, str):
            self._stop(op_id)
            assert self._task_group is not None
            self._task_group.start_soon(self._operate, op_id, message.get("payload") or {})
        elif kind == "stop" and isinstance(op_id, str):
            self._stop(op_id)
        else:
            await self.send(
                {"type": "error", "id": op_id, "payload": {"message": "Invalid message type!"}}
            )

    async def _connect(self, payload: Any, op_id: Any) -> None:
        header = _token_header(payload)
        token = header.split(" ")[1] if header and len(header.split(" ")) > 1 else ""
        if not token:
            error = {"type": "connection_error", "payload": {"message": _NO_TOKEN}}
            await self.send(error if op_id is None else {**error, "id": op_id})
            await anyio.sleep(0.01)  # the server flushes the message, then closes
            await self.ws.close(code=1011)
            return
        self.caller = self.plane.authenticate(f"Bearer {token}") or Caller(frozenset())
        await self.send({"type": "connection_ack"})
        assert self._task_group is not None
        self._task_group.start_soon(self._keep_alive)

    async def _keep_alive(self) -> None:
        while not self.ws.closed:
            await self.send({"type": "ka"})
            await anyio.sleep(self.plane.config.ws_keepalive)

    def _stop(self, op_id: str) -> None:
        scope = self._operations.pop(op_id, None)
        if scope is not None:
            scope.cancel()

    async def _operate(self, op_id: str, payload: Mapping[str, Any]) -> None:
        scope = anyio.CancelScope()
        self._operations[op_id] = scope
        completes = True
        with scope:
            completes = await self._execute(op_id, payload)
        if self._operations.get(op_id) is scope:
            del self._operations[op_id]
        if completes:
            await self.send({"type": "complete", "id": op_id, "payload": None})

    async def _execute(self, op_id: str, payload: Mapping[str, Any]) -> bool:
        """Run one operation, sending its results; whether a ``complete`` follows (not after a
        document that does not parse: the server unsubscribes before it streams anything)."""
        schema = self.plane.schema
        try:
            document = parse(str(payload.get("query") or ""))
        except GraphQLError as exc:
            await self.send({"type": "error", "id": op_id, "payload": {"message": exc.message}})
            return False
        problems = validate(schema, document)
        if problems:
            errors = [format_error(e, INTERNAL_SERVER_ERROR) for e in problems]
            await self.send({"type": "data", "id": op_id, "payload": {"errors": errors}})
            return True
        name, variables = payload.get("operationName"), payload.get("variables") or {}
        operation = get_operation_ast(document, name)
        run = (
            subscribe
            if operation and operation.operation == OperationType.SUBSCRIPTION
            else execute
        )
        outcome: Any = run(
            schema,
            document,
            variable_values=variables,
            operation_name=name,
            context_value=self.caller,
        )
        if inspect.isawaitable(outcome):
            outcome = await outcome
        if isinstance(outcome, ExecutionResult):
            await self._send_result(op_id, outcome)
            return True
        try:
            async for result in outcome:
                await self._send_result(op_id, result)
        finally:
            with anyio.CancelScope(shield=True):
                await outcome.aclose()
        return True

    async def _send_result(self, op_id: str, result: ExecutionResult) -> None:
        body: dict[str, Any] = {"data": result.data}
        if result.errors:
            body["errors"] = [format_error(e, INTERNAL_SERVER_ERROR) for e in result.errors]
        await self.send({"type": "data", "id": op_id, "payload": body})


def _token_header(payload: Any) -> str | None:
    """The first non-empty ``Authorization`` among the places the server looks."""
    for path in _TOKEN_PATHS:
        value: Any = payload
        for step in path:
            value = value.get(step) if isinstance(value, Mapping) else None
        if isinstance(value, str) and value:
            return value
    return None
