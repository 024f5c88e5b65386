"""The benchmark endpoint's shaping (``benchmarks.shape``), measured with a plain client.

These check that the harness is shaped, not the product: a few MiB each, bounds generous
enough for a loaded 2-core machine, each test under about 2 s."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.endpoint import make_cert, serve
from benchmarks.shape import RCVBUF, Pacer, Shape, parse_rate

MiB = 1024 * 1024
BODY = bytes(MiB)


class Client:
    """One keep-alive connection speaking just enough HTTP/1.1 for a PUT."""

    def __init__(self, port: int, ctx: ssl.SSLContext | None) -> None:
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as HTTP clients do
        t0 = time.perf_counter()
        self.sock = ctx.wrap_socket(raw, server_hostname="localhost") if ctx else raw
        self.handshake = time.perf_counter() - t0
        self.rfile = self.sock.makefile("rb")

    def put(self, size: int, *, expect: bool = False) -> tuple[int, float]:
        """PUT ``size`` zero bytes; return (status, seconds until the answer was read)."""
        t0 = time.perf_counter()
        head = f"PUT /bench/k?partNumber=1 HTTP/1.1\r\nHost: x\r\nContent-Length: {size}\r\n"
        self.sock.sendall((head + ("Expect: 100-continue\r\n" if expect else "") + "\r\n").encode())
        if expect:
            assert self._answer() == 100
        left = size
        while left:
            n = min(left, len(BODY))
            self.sock.sendall(BODY[:n])
            left -= n
        status = self._answer()
        return status, time.perf_counter() - t0

    def _answer(self) -> int:
        status = int(self.rfile.readline().split()[1])
        length = 0
        while (line := self.rfile.readline()) not in (b"\r\n", b""):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        self.rfile.read(length)
        return status

    def close(self) -> None:
        self.rfile.close()
        self.sock.close()


@contextlib.contextmanager
def endpoint(
    shape: Shape, tmp_path: Path, *, tls: bool = False
) -> Iterator[tuple[int, ssl.SSLContext | None, socket.socket]]:
    """The endpoint on a loopback port, served by its own loop in a thread; yields the port,
    the client's TLS context (or None) and the listening socket."""
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(64)
    lsock.setblocking(False)
    server_ctx = client_ctx = None
    if tls:
        cert, key = make_cert(tmp_path)
        server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server_ctx.load_cert_chain(cert, key)
        client_ctx = ssl.create_default_context(cafile=str(cert))
    loop = asyncio.new_event_loop()
    task = loop.create_task(serve(lsock, ssl_ctx=server_ctx, shape=shape))

    def run() -> None:
        with contextlib.suppress(asyncio.CancelledError):
            loop.run_until_complete(task)
        loop.run_until_complete(asyncio.sleep(0.05))  # let closed connections finish
        loop.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield lsock.getsockname()[1], client_ctx, lsock
    finally:
        time.sleep(0.05)  # the server sees the clients' EOFs before it stops
        loop.call_soon_threadsafe(task.cancel)
        thread.join(10)
        lsock.close()


def test_parse_rate_reads_decimal_prefixes() -> None:
    assert parse_rate("400M") == 400e6
    assert parse_rate("4G") == 4e9
    assert parse_rate("4e9") == 4e9
    assert parse_rate("100k") == 100e3
    with pytest.raises(ValueError, match="bits/s"):
        parse_rate("fast")
    with pytest.raises(ValueError, match="positive"):
        parse_rate("0")


def test_pacer_books_first_come_after_the_last_booking() -> None:
    link = Pacer(8e6)  # 1 MB/s
    assert link.book(500_000, now=10.0) == pytest.approx(10.5 - 0.005)
    assert link.book(500_000, now=10.0) == pytest.approx(11.0 - 0.005)  # queued behind
    assert link.book(100_000, now=20.0) == pytest.approx(20.1 - 0.005)  # idle: from now


def test_every_response_pays_the_round_trip(tmp_path: Path) -> None:
    with endpoint(Shape(delay_ms=60), tmp_path) as (port, ctx, _):
        c = Client(port, ctx)
        times = [c.put(1024)[1] for _ in range(4)]
        t0 = time.perf_counter()
        c.sock.sendall(b"PUT /bench/k HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n")
        c.sock.sendall(b"Expect: 100-continue\r\n\r\n")
        assert c._answer() == 100  # the interim answer is an answer too
        continue_after = time.perf_counter() - t0
        c.sock.sendall(b"abc")
        assert c._answer() == 200
        c.close()
    assert all(0.055 <= t <= 0.4 for t in times), times
    assert 0.055 <= continue_after <= 0.4


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
def test_a_new_connection_pays_the_connect_round_trip(tmp_path: Path, tls: bool) -> None:
    with endpoint(Shape(connect_delay_ms=100), tmp_path, tls=tls) as (port, ctx, _):
        t0 = time.perf_counter()
        c = Client(port, ctx)
        status, _ = c.put(1024)
        first = time.perf_counter() - t0
        status2, second = c.put(1024)  # the same connection: no more connect delay
        c.close()
    assert status == status2 == 200
    if tls:  # one round trip for TCP, one for the TLS handshake (read only after the wait)
        assert c.handshake >= 0.19, c.handshake
        assert 0.19 <= first <= 0.6, first
    else:
        assert 0.095 <= first <= 0.5, first
    assert second < 0.09, second


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
def test_each_connection_is_capped(tmp_path: Path, tls: bool) -> None:
    cap = 80e6  # bits/s: 10 MB/s
    size = 6 * MiB
    with endpoint(Shape(conn_rate=cap), tmp_path, tls=tls) as (port, ctx, lsock):
        c = Client(port, ctx)
        status, seconds = c.put(size)
        c.close()
        # accepted sockets inherit the small receive queue (Linux reports it doubled)
        assert lsock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) == 2 * RCVBUF
    assert status == 200
    rate = size * 8 / seconds
    assert 0.6 * cap <= rate <= 1.2 * cap, f"{rate / 1e6:.1f} Mbit/s against {cap / 1e6:g}"


def test_the_link_cap_is_shared_fairly(tmp_path: Path) -> None:
    cap = 80e6  # bits/s over every connection: 10 MB/s
    size, conns = 2 * MiB, 4
    done: list[float] = []
    with endpoint(Shape(link_rate=cap), tmp_path) as (port, ctx, _):
        clients = [Client(port, ctx) for _ in range(conns)]
        start = threading.Barrier(conns + 1)
        t0 = 0.0

        def send(c: Client) -> None:
            start.wait()
            assert c.put(size)[0] == 200
            done.append(time.perf_counter() - t0)

        threads = [threading.Thread(target=send, args=(c,)) for c in clients]
        for t in threads:
            t.start()
        t0 = time.perf_counter()
        start.wait()
        for t in threads:
            t.join(10)
        for c in clients:
            c.close()
    assert len(done) == conns
    rate = conns * size * 8 / max(done)
    assert 0.6 * cap <= rate <= 1.2 * cap, f"{rate / 1e6:.1f} Mbit/s against {cap / 1e6:g}"
    # fair: every connection moves at about cap / conns, so none ends far ahead of the others
    assert min(done) >= 0.6 * max(done), done
