"""The benchmark endpoint shapes its own side of the wire (these kernels have no netem).

A wide-area path, as the endpoint plays it (``Shape``):

- ``delay_ms`` D: every response (``100 Continue`` included) is written D ms after the request
  was read. The client's bytes arrive at once over loopback, so D is the whole round trip that
  each request pays.
- ``connect_delay_ms`` C: a new connection is not read from for C ms: the TCP handshake's round
  trip. Over TLS the wait is 2C, one round trip for TCP and one for the TLS 1.3 handshake, since
  the handshake itself (read only after the wait) then costs nothing: the first answer on a new
  connection comes after C + D over HTTP and 2C + D over HTTPS, as over a real link.
- ``conn_rate`` (bits/s): each connection's receive rate is capped. When a connection is ahead
  of its rate the endpoint stops reading it (``pause_reading``) until its rate catches up, so
  the kernel's receive queue fills, the TCP window closes and the client's writes block, as a
  real window limit would stop them.
- ``link_rate`` (bits/s): one cap shared by every connection of the process (so shaped
  endpoints run as one process). Fairness: the link is one first-come queue of bookings (a
  virtual clock, ``Pacer``): each read of n bytes books n/rate seconds after the last booking,
  and its connection is not read again until that booking ends. Since one read takes at most
  what waits in one receive queue, connections take turns: each gets the link's rate divided by
  the connections sending, to within one receive queue per turn.
- ``rcvbuf``: with a rate cap, accepted sockets get ``SO_RCVBUF`` = 256 KiB (``RCVBUF``; Linux
  doubles the number for its bookkeeping, and about that much payload may wait in the queue).
  Without it loopback autotunes the queue up to ``net.ipv4.tcp_rmem``'s maximum (32 MiB here),
  and a client could write many MiB beyond what the cap has let through. 256 KiB is 5 ms of data
  at 400 Mbit/s and 21 ms at 100 Mbit/s: less than the round trips shaped here (30 and 80 ms),
  so the cap is what the client feels; smaller queues would mean more reads and wake-ups per
  second for this Python endpoint, which shares 2 cores with the client (4 Gbit/s in 256 KiB
  reads is about 1,900 reads a second).

Not modelled: loss, TCP slow start and congestion control, the client's own send buffer
(autotuned by its kernel, as on a real link).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["RCVBUF", "Pacer", "Shape", "parse_rate", "serve_shaped"]

KiB = 1024
RCVBUF = 256 * KiB
#: a booking may start this much in the past: the event loop's lateness in resuming a
#: connection is not lost from its rate (a burst of at most 5 ms of data)
SLACK = 0.005
#: a connection less than this far ahead of its bookings is not paused
MIN_PAUSE = 0.001


def parse_rate(text: str) -> float:
    """Bits per second from ``400e6``, ``400M``, ``4G`` or ``100k`` (decimal prefixes)."""
    scale = {"k": 1e3, "m": 1e6, "g": 1e9}.get(text[-1:].lower(), 1.0)
    number = text[:-1] if scale != 1.0 else text
    try:
        value = float(number) * scale
    except ValueError:
        raise ValueError(f"not a rate in bits/s: {text!r} (try 400M or 4e9)") from None
    if value <= 0:
        raise ValueError(f"a rate must be positive, got {text!r}")
    return value


@dataclass(frozen=True)
class Shape:
    """The wide-area path the endpoint plays (module docstring). Zero: not shaped."""

    delay_ms: float = 0.0
    connect_delay_ms: float = 0.0
    conn_rate: float = 0.0  # bits/s per connection
    link_rate: float = 0.0  # bits/s, shared by every connection of the process
    rcvbuf: int = RCVBUF  # SO_RCVBUF of accepted sockets when a rate is capped

    @property
    def active(self) -> bool:
        return any((self.delay_ms, self.connect_delay_ms, self.conn_rate, self.link_rate))

    @property
    def capped(self) -> bool:
        return bool(self.conn_rate or self.link_rate)

    def argv(self) -> list[str]:
        """The endpoint's command-line options for this shape."""
        out: list[str] = []
        for flag, value in (
            ("--delay-ms", self.delay_ms),
            ("--connect-delay-ms", self.connect_delay_ms),
            ("--conn-rate", self.conn_rate),
            ("--link-rate", self.link_rate),
        ):
            if value:
                out += [flag, f"{value:g}"]
        if self.capped and self.rcvbuf != RCVBUF:
            out += ["--rcvbuf", str(self.rcvbuf)]
        return out

    def connect_wait(self, tls: bool) -> float:
        """Seconds a new connection is not read from (twice over TLS: module docstring)."""
        return self.connect_delay_ms / 1000 * (2 if tls else 1)


class Pacer:
    """One rate as a first-come queue of bookings (a virtual clock): ``book(n, now)`` books
    ``n`` bytes after the last booking and returns the time the booking ends, before which
    whoever booked should not read again."""

    __slots__ = ("bytes_per_s", "free_at")

    def __init__(self, bits_per_s: float) -> None:
        self.bytes_per_s = bits_per_s / 8
        self.free_at = 0.0

    def book(self, n: int, now: float) -> float:
        start = max(self.free_at, now - SLACK)
        self.free_at = start + n / self.bytes_per_s
        return self.free_at

    def __repr__(self) -> str:
        return f"Pacer({self.bytes_per_s * 8:g} bit/s, free at {self.free_at:.3f})"


class Gate:
    """Paces reads of one connection against its own rate and the shared link: after each
    read, ``after_read`` pauses the transport until both bookings have ended."""

    def __init__(self, transport: asyncio.Transport, conn: Pacer | None, link: Pacer | None):
        self.transport = transport
        self.conn, self.link = conn, link
        self.loop = asyncio.get_running_loop()
        self.ready_at = 0.0
        self.paused = False

    def after_read(self, n: int) -> None:
        now = self.loop.time()
        for pacer in (self.conn, self.link):
            if pacer is not None:
                self.ready_at = max(self.ready_at, pacer.book(n, now))
        if not self.paused and self.ready_at - now > MIN_PAUSE:
            self.paused = True
            self.transport.pause_reading()
            self.loop.call_at(self.ready_at, self._wake)

    def _wake(self) -> None:
        if self.transport.is_closing():
            return
        if self.ready_at - self.loop.time() > MIN_PAUSE:  # booked further while paused
            self.loop.call_at(self.ready_at, self._wake)
            return
        self.paused = False
        self.transport.resume_reading()


async def serve_shaped(
    sock: socket.socket,
    factory: Callable[[], asyncio.BaseProtocol],
    shape: Shape,
    ssl_ctx: ssl.SSLContext | None,
) -> None:
    """Accept on ``sock`` until cancelled; start each connection after the shape's connect
    wait (over TLS, the handshake is read only then)."""
    loop = asyncio.get_running_loop()
    if shape.capped:  # inherited by accepted sockets; set on each of them too
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, shape.rcvbuf)
    wait = shape.connect_wait(ssl_ctx is not None)
    starting: set[asyncio.Task[None]] = set()

    async def start(conn: socket.socket) -> None:
        if wait:
            await asyncio.sleep(wait)
        try:
            await loop.connect_accepted_socket(factory, conn, ssl=ssl_ctx)
        except (OSError, ssl.SSLError):  # the client gave up, or a failed handshake
            conn.close()

    while True:
        conn, _ = await loop.sock_accept(sock)
        conn.setblocking(False)
        with contextlib.suppress(OSError):
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if shape.capped:
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, shape.rcvbuf)
        task = loop.create_task(start(conn))
        starting.add(task)
        task.add_done_callback(starting.discard)
