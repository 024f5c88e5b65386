"""Live ingestion status: ``projectModelIngestionUpdated`` over one WebSocket per project.

The server speaks subscriptions-transport-ws (subprotocol ``graphql-ws``; speckle-server
``app.ts``, ``SubscriptionServer``): the client sends ``connection_init`` with the token in its
payload (``connectionParams.Authorization``, the first of the paths ``onConnect`` reads), the
server answers ``connection_ack`` (or ``connection_error``) and ``ka`` every 30 s; each
subscription is a ``start`` with an id, answered by ``data`` frames, ``error`` or ``complete``,
and ended by the client's ``stop``. The subscription's input names one ingestion (a ``@oneOf``
reference: specklepy ``ModelIngestionReference``), so the files of one project share one
connection, each with its own ``start``.

Rules:
- one ``LiveHub`` per project per uploader (``LivePool``), opened by the first file that waits
  and kept ``_LINGER`` seconds after the last one left, for the next (a bulk import keeps one
  socket per project); an idle one is closed by the next file that asks for a connection, the
  last ones when the uploader closes its control-plane pool (a caller's own session: when the
  caller closes it); a connection that cannot be opened (no WebSocket route,
  another subprotocol, ``connection_error``, a timeout) is not tried again for
  ``_RETRY_OPEN`` seconds: its files poll instead;
- no background task: whichever waiter finds no message for itself and nobody reading reads
  the socket and hands each frame to the subscription it is for; a waiter that is cancelled
  (its pause ran out) gives the socket to the next one. Frames are whole messages, so a read
  that is cancelled loses nothing;
- a subscription that ends (``error``, ``complete``, errors in ``data``) or a connection that
  drops raises ``LiveLost`` in its waiters: they go back to polling;
- the token is sent in the ``connection_init`` payload only, never in the URL.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import aiohttp
import anyio
import orjson

from engine.graphql import dig
from engine.providers.speckle.documents import WS_PROTOCOL
from engine.redact import redact

if TYPE_CHECKING:
    from engine.target import Services

__all__ = ["LiveFeed", "LiveHub", "LiveLost", "LivePool"]

_OPEN_TIMEOUT: Final = 10.0  # seconds to connect and be acknowledged
_CLOSE_TIMEOUT: Final = 2.0
_RETRY_OPEN: Final = 60.0  # seconds before a project's failed connection is tried again
_LINGER: Final = 10.0  # seconds an unused connection is kept for the project's next file
_ENDED: Final = frozenset({aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING})
_GONE: Final = _ENDED | {aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR}


class LiveLost(Exception):
    """The live status cannot be had (any more): poll instead. ``str`` says why."""


@dataclass(slots=True)
class _Sub:
    items: deque[dict[str, Any]] = field(default_factory=deque)
    ended: str = ""


def _frame(kind: str, sub: str | None = None, payload: Any = None) -> str:
    frame: dict[str, Any] = {"type": kind}
    if sub is not None:
        frame["id"] = sub
    if payload is not None:
        frame["payload"] = payload
    return orjson.dumps(frame).decode()


def _read(msg: aiohttp.WSMessage) -> dict[str, Any] | None:
    if msg.type is not aiohttp.WSMsgType.TEXT:
        return None
    try:
        frame = orjson.loads(msg.data)
    except orjson.JSONDecodeError:
        return None
    return frame if isinstance(frame, dict) else None


class LiveHub:
    """One ``graphql-ws`` connection; subscriptions on it by id (see the module rules)."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws
        self._subs: dict[str, _Sub] = {}
        self._next_id = 0
        self._reading = False
        self._changed = anyio.Event()
        self.broken = ""
        self.users = 0

    def __repr__(self) -> str:
        state = self.broken or "open"
        return f"<LiveHub {state} subscriptions={len(self._subs)} users={self.users}>"

    @classmethod
    async def connect(cls, http: aiohttp.ClientSession, url: str, token: str) -> LiveHub:
        """Open and initialise the connection; ``LiveLost`` when that cannot be done."""
        ws: aiohttp.ClientWebSocketResponse | None = None
        try:
            with anyio.fail_after(_OPEN_TIMEOUT):
                ws = await http.ws_connect(url, protocols=(WS_PROTOCOL,), heartbeat=None)
                hub = cls(ws)
                await hub._init(token)
                return hub
        except (LiveLost, aiohttp.ClientError, OSError, TimeoutError) as exc:
            if ws is not None:
                with anyio.CancelScope(shield=True), anyio.move_on_after(_CLOSE_TIMEOUT):
                    await ws.close()
            if isinstance(exc, LiveLost):
                raise
            reason = getattr(exc, "status", None) or type(exc).__name__
            raise LiveLost(redact(f"cannot open {url}: {reason}")) from None

    async def _init(self, token: str) -> None:
        if self._ws.protocol != WS_PROTOCOL:
            raise LiveLost(f"the server does not speak {WS_PROTOCOL}")
        payload = {"Authorization": f"Bearer {token}"}
        await self._ws.send_str(_frame("connection_init", payload=payload))
        while True:
            msg = await self._ws.receive()
            frame = _read(msg)
            kind = dig(frame, "type")
            if kind == "connection_ack":
                return
            if msg.type in _GONE or kind == "connection_error":
                why = dig(frame, "payload", "message") or "connection refused"
                raise LiveLost(redact(f"live status refused: {why}"))

    async def subscribe(self, document: str, variables: dict[str, Any], name: str) -> str:
        """Start a subscription; its id for ``next`` and ``unsubscribe``."""
        if self.broken:
            raise LiveLost(self.broken)
        self._next_id += 1
        sub = str(self._next_id)
        self._subs[sub] = _Sub()
        start = {"query": document, "variables": variables, "operationName": name}
        try:
            await self._ws.send_str(_frame("start", sub, start))
        except (aiohttp.ClientError, OSError) as exc:
            self._break(f"the live-status connection failed ({type(exc).__name__})")
            raise LiveLost(self.broken) from None
        return sub

    async def next(self, sub: str) -> dict[str, Any]:
        """The next ``data`` of subscription ``sub``, reading the socket if nobody is."""
        while True:
            state = self._subs.get(sub)
            if state is None:
                raise LiveLost("not subscribed")
            if state.items:
                return state.items.popleft()
            if state.ended or self.broken:
                raise LiveLost(state.ended or self.broken)
            if self._reading:
                await self._changed.wait()
                continue
            self._reading = True
            try:
                msg = await self._ws.receive()
            finally:
                self._reading = False
                self._notify()
            self._dispatch(msg)
            self._notify()

    async def unsubscribe(self, sub: str) -> None:
        if self._subs.pop(sub, None) is not None and not self.broken:
            try:
                await self._ws.send_str(_frame("stop", sub))
            except (aiohttp.ClientError, OSError):
                self._break("the live-status connection failed")

    async def close(self) -> None:
        with anyio.CancelScope(shield=True), anyio.move_on_after(_CLOSE_TIMEOUT):
            if not self.broken and not self._ws.closed:
                with suppress(aiohttp.ClientError, OSError):
                    await self._ws.send_str(_frame("connection_terminate"))
            await self._ws.close()
        self._break("closed")

    def _notify(self) -> None:
        changed, self._changed = self._changed, anyio.Event()
        changed.set()

    def _break(self, why: str) -> None:
        self.broken = self.broken or why

    def _dispatch(self, msg: aiohttp.WSMessage) -> None:
        if msg.type in _GONE:
            self._break("the live-status connection closed")
            return
        frame = _read(msg)
        kind, sub = dig(frame, "type"), dig(frame, "id")
        if kind == "connection_error":
            self._break("the server closed the live status")
        state = self._subs.get(str(sub)) if sub is not None else None
        if state is None:
            return  # ka, acks, frames of subscriptions already stopped
        errors = dig(frame, "payload", "errors")
        if kind == "data" and not errors:
            data = dig(frame, "payload", "data")
            if isinstance(data, dict):
                state.items.append(data)
        elif kind in ("data", "error", "complete"):
            first = errors[0] if isinstance(errors, list) and errors else dig(frame, "payload")
            state.ended = redact(str(dig(first, "message") or f"subscription {kind}"))


class LiveFeed:
    """One subscription on a hub: its next data, or nothing when the caller's pause ends."""

    def __init__(self, hub: LiveHub, sub: str) -> None:
        self._hub = hub
        self._sub = sub
        self.lost = ""  # why the subscription ended ("" while it lives)

    def __repr__(self) -> str:
        return f"<LiveFeed {self._sub} {self.lost or 'live'}>"

    @classmethod
    async def open(
        cls, hub: LiveHub, document: str, variables: dict[str, Any], name: str
    ) -> LiveFeed | None:
        try:
            return cls(hub, await hub.subscribe(document, variables, name))
        except LiveLost:
            return None

    async def wait(self, pause: Callable[[], Awaitable[None]]) -> dict[str, Any] | None:
        """The next ``data``, or ``None`` once ``pause`` returned or the subscription ended
        (``lost`` says why)."""
        got: list[dict[str, Any]] = []
        async with anyio.create_task_group() as tg:

            async def listen() -> None:
                try:
                    got.append(await self._hub.next(self._sub))
                except LiveLost as exc:
                    self.lost = str(exc)
                tg.cancel_scope.cancel()

            async def time_out() -> None:
                await pause()
                tg.cancel_scope.cancel()

            tg.start_soon(listen)
            tg.start_soon(time_out)
        return got[0] if got else None

    async def close(self) -> None:
        with anyio.CancelScope(shield=True):
            await self._hub.unsubscribe(self._sub)


class LivePool:
    """The live-status connections of one uploader, one per project (module rules)."""

    def __init__(self, services: Services, url: str, token: str) -> None:
        self._services = services
        self._url = url
        self._token = token
        self._hubs: dict[str, LiveHub] = {}
        self._idle: dict[str, float] = {}  # project -> since when its hub has no user
        self._failed: dict[str, float] = {}  # project -> when its connection failed
        self._lock = anyio.Lock()
        self.opened = 0  # connections opened (for reports and tests)
        self.why = ""  # why the last connection could not be opened

    def __repr__(self) -> str:
        return f"<LivePool hubs={len(self._hubs)} opened={self.opened}>"

    async def _get(self, project_id: str) -> LiveHub | None:
        clock = self._services.clock
        async with self._lock:
            await self._close_idle(clock.monotonic())
            hub = self._hubs.get(project_id)
            if hub is not None and not hub.broken:
                self._idle.pop(project_id, None)
                return hub
            failed = self._failed.get(project_id)
            if failed is not None and clock.monotonic() - failed < _RETRY_OPEN:
                return None
            try:
                hub = await LiveHub.connect(self._services.http, self._url, self._token)
            except LiveLost as exc:
                self._failed[project_id], self.why = clock.monotonic(), str(exc)
                return None
            self.opened += 1
            self._hubs[project_id] = hub
            return hub

    async def _close_idle(self, now: float) -> None:
        """Close the hubs nobody used for ``_LINGER`` seconds, and broken ones nobody uses."""
        for project_id, hub in list(self._hubs.items()):
            idle = self._idle.get(project_id)
            if hub.users == 0 and (hub.broken or (idle is not None and now - idle >= _LINGER)):
                del self._hubs[project_id]
                self._idle.pop(project_id, None)
                await hub.close()

    @asynccontextmanager
    async def hub(self, project_id: str) -> AsyncIterator[LiveHub | None]:
        """The project's connection (``None``: poll), held open while the block runs and
        ``_LINGER`` seconds after its last user left (the next file of the project reuses it;
        the uploader's own pool closes it at the end)."""
        hub = await self._get(project_id)
        if hub is None:
            yield None
            return
        hub.users += 1
        try:
            yield hub
        finally:
            hub.users -= 1
            if hub.users == 0:
                if self._hubs.get(project_id) is not hub:
                    await hub.close()  # replaced by a newer one after it broke
                elif hub.broken:
                    del self._hubs[project_id]
                    await hub.close()
                else:
                    self._idle[project_id] = self._services.clock.monotonic()
