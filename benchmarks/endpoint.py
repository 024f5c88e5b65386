"""A minimal-CPU HTTP/1.1 endpoint that speaks presigned PUT and just enough S3 for the peers.

It exists so the benchmark measures the clients, not the server: request bodies land in one
reused buffer per connection (``asyncio.BufferedProtocol`` + ``recv_into``) and are discarded,
never copied into Python objects.

Rules:
- any auth and any query string is accepted; ``x-amz-*`` headers are ignored;
- ``PUT`` (PutObject, UploadPart, presigned URLs) answers 200 with an ETag;
  ``POST ?uploads`` answers an ``InitiateMultipartUploadResult``; ``POST ?uploadId=``
  (CompleteMultipartUpload) answers a ``CompleteMultipartUploadResult``; ``HEAD`` answers 200;
  ``GET`` answers an empty listing; ``DELETE`` answers 204;
- ETags: with ``--hash`` the real quoted MD5 of the payload (aws-chunked framing decoded), so
  ETag checks really check; without it a fixed-format ETag that is *not* an MD5 digest
  (``"bench-<n>"``), so clients that compare ETags skip the comparison. The engine still
  hashes every byte it sends with ``verify_etag=True``: the cost of integrity stays on the
  client, where it is measured;
- ``Expect: 100-continue`` is answered with ``100 Continue``; ``Transfer-Encoding: chunked``
  bodies are decoded; ``aws-chunked`` bodies (Content-Length framed) are decoded when hashing;
- ``--fail-rate p`` answers a seeded fraction ``p`` of data PUTs with ``503 SlowDown`` (after
  reading the body, as S3 does);
- ``GET /__stats`` answers JSON counters (body bytes, requests, injected faults) so the harness
  can check that every contender really sent its bytes;
- ``--tls`` serves HTTPS with a certificate made at run time (``make_cert``);
- ``--delay-ms``, ``--connect-delay-ms``, ``--conn-rate``, ``--link-rate`` shape the endpoint's
  side as a wide-area path (a round trip per response and per new connection, a rate cap per
  connection and one for the link): ``benchmarks.shape`` says how.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import hashlib
import ipaddress
import json
import os
import random
import signal
import socket
import ssl
import sys
from pathlib import Path
from typing import Any, cast

from benchmarks.shape import RCVBUF, Gate, Pacer, Shape, parse_rate, serve_shaped

__all__ = ["Stats", "main", "make_cert", "serve"]

_BUF = 1024 * 1024
_MAX_HEAD = 64 * 1024


class Stats:
    """Counters of one server process."""

    def __init__(self) -> None:
        self.body_bytes = 0
        self.requests = 0
        self.faults = 0
        self.uploads = 0

    def as_dict(self) -> dict[str, int]:
        return {
            "body_bytes": self.body_bytes,
            "requests": self.requests,
            "faults": self.faults,
            "uploads": self.uploads,
            "pid": os.getpid(),
        }


_HEAD, _BODY, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_CRLF, _TRAILER = range(6)


class _Conn(asyncio.BufferedProtocol):
    """One client connection: a small state machine over a reused receive buffer."""

    def __init__(self, server: _Server) -> None:
        self.srv = server
        self.buf = bytearray(_BUF)
        self.view = memoryview(self.buf)
        self.transport: asyncio.Transport | None = None
        self.gate: Gate | None = None
        self._reset()

    def _reset(self) -> None:
        self.state = _HEAD
        self.head = bytearray()
        self.method = ""
        self.target = ""
        self.remaining = 0
        self.md5: Any = None
        self.aws_chunked = False
        self.line = bytearray()  # a chunk-size or trailer line being assembled
        self.body_small = bytearray()  # bodies of control requests (Complete XML)
        self.keep_alive = True
        self.aws_state = _CHUNK_SIZE  # the nested aws-chunked decoder (only with --hash)
        self.aws_remaining = 0
        self.aws_line = bytearray()

    # asyncio.BufferedProtocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        srv = self.srv
        if srv.shape.capped:
            conn = Pacer(srv.shape.conn_rate) if srv.shape.conn_rate else None
            self.gate = Gate(self.transport, conn, srv.link)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.view

    def buffer_updated(self, nbytes: int) -> None:
        try:
            self._feed(self.view[:nbytes])
        except _BadRequest as exc:
            self._respond(400, f"<Error><Code>BadRequest</Code><Message>{exc}</Message></Error>")
            self._send(None)
            return
        if self.gate is not None:
            self.gate.after_read(nbytes)

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    # parsing
    def _feed(self, data: memoryview) -> None:
        while data:
            st = self.state
            if st == _HEAD:
                data = self._feed_head(data)
            elif st == _BODY:
                n = min(len(data), self.remaining)
                self._take(data[:n], framed=False)
                self.remaining -= n
                data = data[n:]
                if self.remaining == 0:
                    self._finish()
            elif st == _CHUNK_DATA:
                n = min(len(data), self.remaining)
                self._take(data[:n], framed=True)
                self.remaining -= n
                data = data[n:]
                if self.remaining == 0:
                    self.state = _CHUNK_CRLF
                    self.line.clear()
            else:  # a line-oriented state: chunk size, CRLF after data, trailers
                i = bytes(data[:4096]).find(b"\n")
                if i < 0:
                    self.line += data
                    if len(self.line) > _MAX_HEAD:
                        raise _BadRequest("chunk line too long")
                    return
                self.line += data[: i + 1]
                data = data[i + 1 :]
                line = bytes(self.line).strip()
                self.line.clear()
                self._on_line(line)

    def _on_line(self, line: bytes) -> None:
        if self.state == _CHUNK_CRLF:
            self.state = _CHUNK_SIZE
            if line:
                raise _BadRequest("missing CRLF after chunk")
            return
        if self.state == _CHUNK_SIZE:
            size_text = line.split(b";", 1)[0]
            try:
                size = int(size_text, 16)
            except ValueError:
                raise _BadRequest("bad chunk size") from None
            if size == 0:
                self.state = _TRAILER
            else:
                self.remaining = size
                self.state = _CHUNK_DATA
            return
        # _TRAILER: lines until an empty one
        if not line:
            self._finish()

    def _take(self, chunk: memoryview, *, framed: bool) -> None:
        srv = self.srv
        srv.stats.body_bytes += len(chunk)
        if self.method != "PUT":
            if len(self.body_small) < _MAX_HEAD:
                self.body_small += chunk
            return
        if self.md5 is None:
            return
        if self.aws_chunked and not framed:
            # decode aws-chunked framing inside a Content-Length body
            self._aws_feed(chunk)
        else:
            self.md5.update(chunk)

    def _aws_feed(self, data: memoryview) -> None:
        # A nested decoder for aws-chunked payloads (only used with --hash).
        while data:
            if self.aws_state == _CHUNK_DATA:
                n = min(len(data), self.aws_remaining)
                self.md5.update(data[:n])
                self.aws_remaining -= n
                data = data[n:]
                if self.aws_remaining == 0:
                    self.aws_state = _CHUNK_CRLF
                continue
            i = bytes(data[:4096]).find(b"\n")
            if i < 0:
                self.aws_line += data
                return
            self.aws_line += data[: i + 1]
            data = data[i + 1 :]
            line = bytes(self.aws_line).strip()
            self.aws_line.clear()
            if self.aws_state == _CHUNK_CRLF:
                self.aws_state = _CHUNK_SIZE
            elif self.aws_state == _CHUNK_SIZE:
                size = int(line.split(b";", 1)[0] or b"0", 16)
                if size == 0:
                    self.aws_state = _TRAILER
                else:
                    self.aws_remaining = size
                    self.aws_state = _CHUNK_DATA
            # _TRAILER lines are ignored until the Content-Length runs out

    def _feed_head(self, data: memoryview) -> memoryview:
        start = max(0, len(self.head) - 3)
        self.head += data
        end = self.head.find(b"\r\n\r\n", start)
        if end < 0:
            if len(self.head) > _MAX_HEAD:
                raise _BadRequest("header block too large")
            return data[len(data) :]
        rest = len(self.head) - (end + 4)
        head = bytes(self.head[:end])
        self.head.clear()
        self._on_head(head)
        return data[len(data) - rest :]

    def _on_head(self, head: bytes) -> None:
        lines = head.decode("latin-1").split("\r\n")
        try:
            self.method, self.target, version = lines[0].split(" ", 2)
        except ValueError:
            raise _BadRequest("bad request line") from None
        headers: dict[str, str] = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        self.srv.stats.requests += 1
        self.keep_alive = headers.get("connection", "").lower() != "close" and version.endswith(
            "1.1"
        )
        if self.method == "PUT" and self.srv.hash:
            self.md5 = hashlib.md5(usedforsecurity=False)
        self.aws_chunked = "aws-chunked" in headers.get("content-encoding", "") or headers.get(
            "x-amz-content-sha256", ""
        ).startswith("STREAMING-")
        self.aws_state = _CHUNK_SIZE
        self.aws_remaining = 0
        self.aws_line = bytearray()
        if headers.get("expect", "").lower() == "100-continue":
            self._send(b"HTTP/1.1 100 Continue\r\n\r\n")  # an answer: it pays the round trip
        if "chunked" in headers.get("transfer-encoding", "").lower():
            self.state = _CHUNK_SIZE
            self.line.clear()
            return
        length = int(headers.get("content-length", "0") or 0)
        if length > 0:
            self.remaining = length
            self.state = _BODY
        else:
            self._finish()

    # answers
    def _finish(self) -> None:
        srv = self.srv
        method, target = self.method, self.target
        path, _, query = target.partition("?")
        params = _params(query)
        if path == "/__stats":
            self._respond(200, json.dumps(srv.stats.as_dict()), "application/json")
        elif method == "PUT":
            if srv.fail_rate and srv.rng.random() < srv.fail_rate:
                srv.stats.faults += 1
                self._respond(
                    503,
                    "<?xml version='1.0' encoding='UTF-8'?>\n<Error><Code>SlowDown</Code>"
                    "<Message>Please reduce your request rate.</Message></Error>",
                )
            else:
                if self.md5 is not None:
                    etag = f'"{self.md5.hexdigest()}"'
                else:
                    srv.counter += 1
                    etag = f'"bench-{srv.counter}"'
                self._respond(200, "", extra=(("ETag", etag),))
        elif method == "POST" and "uploads" in params:
            srv.stats.uploads += 1
            bucket, key = _bucket_key(path)
            upload_id = f"bench{os.getpid()}x{srv.stats.uploads}"
            self._respond(
                200,
                "<?xml version='1.0' encoding='UTF-8'?>\n<InitiateMultipartUploadResult>"
                f"<Bucket>{bucket}</Bucket><Key>{key}</Key><UploadId>{upload_id}</UploadId>"
                "</InitiateMultipartUploadResult>",
            )
        elif method == "POST" and "uploadId" in params:
            bucket, key = _bucket_key(path)
            parts = self.body_small.count(b"<Part>")
            etag = f'"{hashlib.md5(bytes(self.body_small), usedforsecurity=False).hexdigest()}'
            etag += f'-{parts}"'
            self._respond(
                200,
                "<?xml version='1.0' encoding='UTF-8'?>\n<CompleteMultipartUploadResult>"
                f"<Location>/{bucket}/{key}</Location><Bucket>{bucket}</Bucket><Key>{key}</Key>"
                f"<ETag>{_xml_escape(etag)}</ETag></CompleteMultipartUploadResult>",
            )
        elif method == "HEAD":
            self._respond(
                200, "", extra=(("ETag", '"bench-head"'), ("Last-Modified", _http_date()))
            )
        elif method == "DELETE":
            self._respond(204, "")
        elif method == "GET":
            bucket, _ = _bucket_key(path)
            if "uploadId" in params:
                body = (
                    "<?xml version='1.0' encoding='UTF-8'?>\n<ListPartsResult>"
                    f"<Bucket>{bucket}</Bucket><IsTruncated>false</IsTruncated></ListPartsResult>"
                )
            else:
                body = (
                    "<?xml version='1.0' encoding='UTF-8'?>\n<ListBucketResult>"
                    f"<Name>{bucket}</Name><KeyCount>0</KeyCount><IsTruncated>false</IsTruncated>"
                    "</ListBucketResult>"
                )
            self._respond(200, body)
        else:
            self._respond(200, "")
        if not self.keep_alive:
            self._send(None)  # before the reset: the close follows its answer's delay
        self._reset()

    def _respond(
        self,
        status: int,
        body: str,
        ctype: str = "application/xml",
        extra: tuple[tuple[str, str], ...] = (),
    ) -> None:
        if self.transport is None:
            return
        data = body.encode()
        reason = _REASONS.get(status, "OK")
        head = [f"HTTP/1.1 {status} {reason}", f"Content-Length: {len(data)}"]
        if data:
            head.append(f"Content-Type: {ctype}")
        head.append("x-amz-request-id: bench")
        head.extend(f"{k}: {v}" for k, v in extra)
        if not self.keep_alive:
            head.append("Connection: close")
        self._send(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + data)

    def _send(self, data: bytes | None) -> None:
        """Write ``data`` (``None``: close), after the shape's round trip; the harness's
        ``/__stats`` is answered at once. Answers keep their order (one delay for all)."""
        delay = self.srv.delay
        if delay and not self.target.startswith("/__stats"):
            asyncio.get_running_loop().call_later(delay, self._write, data)
        else:
            self._write(data)

    def _write(self, data: bytes | None) -> None:
        if self.transport is None:
            return
        if data is None:
            self.transport.close()
        else:
            self.transport.write(data)


class _BadRequest(Exception):
    pass


_REASONS = {200: "OK", 204: "No Content", 400: "Bad Request", 503: "Slow Down"}


def _params(query: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in query.split("&"):
        if item:
            k, _, v = item.partition("=")
            out[k] = v
    return out


def _bucket_key(path: str) -> tuple[str, str]:
    bucket, _, key = path.lstrip("/").partition("/")
    return bucket or "bench", key


def _xml_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;")


def _http_date() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%a, %d %b %Y %H:%M:%S GMT")


class _Server:
    def __init__(self, *, hash_: bool, fail_rate: float, seed: int, shape: Shape) -> None:
        self.hash = hash_
        self.fail_rate = fail_rate
        self.rng = random.Random(seed)
        self.stats = Stats()
        self.counter = 0
        self.shape = shape
        self.delay = shape.delay_ms / 1000
        self.link = Pacer(shape.link_rate) if shape.link_rate else None


def make_cert(directory: Path) -> tuple[Path, Path]:
    """Write a self-signed certificate for 127.0.0.1/localhost; return (cert, key) paths."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


async def serve(
    sock: socket.socket,
    *,
    hash_: bool = False,
    fail_rate: float = 0.0,
    seed: int = 0,
    ssl_ctx: ssl.SSLContext | None = None,
    shape: Shape | None = None,
) -> None:
    """Serve on an already bound, listening socket until cancelled."""
    shape = shape or Shape()
    srv = _Server(hash_=hash_, fail_rate=fail_rate, seed=seed, shape=shape)
    if shape.active:
        await serve_shaped(sock, lambda: _Conn(srv), shape, ssl_ctx)
        return
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Conn(srv), sock=sock, ssl=ssl_ctx, backlog=512)
    async with server:
        await server.serve_forever()


def _listen(host: str, port: int, reuse_port: bool) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(512)
    sock.setblocking(False)
    return sock


def _rate(text: str) -> float:
    try:
        return parse_rate(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--workers", type=int, default=1, help="processes sharing the port")
    p.add_argument("--hash", action="store_true", help="answer real MD5 ETags")
    p.add_argument("--fail-rate", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tls", action="store_true")
    p.add_argument("--cert", type=Path)
    p.add_argument("--key", type=Path)
    p.add_argument("--loop", choices=("auto", "uvloop", "asyncio"), default="auto")
    p.add_argument("--delay-ms", type=float, default=0.0, help="round trip per response")
    p.add_argument(
        "--connect-delay-ms", type=float, default=0.0, help="round trip per new connection"
    )
    p.add_argument("--conn-rate", type=_rate, default=0.0, help="bits/s per connection (400M)")
    p.add_argument("--link-rate", type=_rate, default=0.0, help="bits/s, all connections (4G)")
    p.add_argument("--rcvbuf", type=int, default=RCVBUF, help="SO_RCVBUF when a rate is capped")
    args = p.parse_args(argv)
    shape = Shape(
        delay_ms=args.delay_ms,
        connect_delay_ms=args.connect_delay_ms,
        conn_rate=args.conn_rate,
        link_rate=args.link_rate,
        rcvbuf=args.rcvbuf,
    )
    if shape.link_rate and args.workers > 1:
        p.error("--link-rate is one process's cap: use --workers 1")
    if min(args.delay_ms, args.connect_delay_ms) < 0:
        p.error("--delay-ms and --connect-delay-ms must not be negative")
    if args.rcvbuf < 4096:
        p.error(f"--rcvbuf must be at least 4096 bytes, got {args.rcvbuf}")

    sock = _listen(args.host, args.port, reuse_port=args.workers > 1)
    port = sock.getsockname()[1]
    ssl_ctx = None
    if args.tls:
        if args.cert is None or args.key is None:
            raise SystemExit("--tls needs --cert and --key")
        ssl_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ssl_ctx.load_cert_chain(args.cert, args.key)
    # The harness reads this line to learn the port.
    print(json.dumps({"port": port, "pid": os.getpid()}), flush=True)
    children: list[int] = []
    for i in range(1, args.workers):
        pid = os.fork()
        if pid == 0:
            children = []
            args.seed += i
            break
        children.append(pid)

    def run() -> None:
        coro = serve(
            sock,
            hash_=args.hash,
            fail_rate=args.fail_rate,
            seed=args.seed,
            ssl_ctx=ssl_ctx,
            shape=shape,
        )
        import importlib.util

        loop = args.loop
        if loop == "auto":  # uvloop where the bench extra installed it, else the stock loop
            loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
        if loop == "uvloop":
            import uvloop

            uvloop.run(coro)
        else:
            asyncio.run(coro)

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        run()
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        for pid in children:
            try:
                os.kill(pid, signal.SIGTERM)
                os.waitpid(pid, 0)
            except OSError:
                pass


if __name__ == "__main__":
    main()
