"""The Python contenders, one per process: ``python -m benchmarks.contenders NAME [options]``.

Each run uploads the given file (or directory, for ``bulk``) to the benchmark endpoint and
prints one JSON line ``{"seconds": ..., "bytes": ...}``: the time from the first byte of
work (clients already constructed, interpreter and imports excluded) to the last answer.
The harness measures peak RSS of the whole process from outside (``VmHWM``); in the WAN
cases it also times the whole process (start-up included) and keeps this line's time aside.

``--part-size`` and ``--concurrency`` are optional: without them each tool runs at its own
defaults (the engine: adaptive concurrency, its default part size); the ceiling, the
part-by-part script and the ``tuned``/``matched`` variants need both.

Contenders:
- ``engine``    this project, via ``PresignedMultipart`` (``--target presigned``) or
                ``S3Target`` (``--target s3``); ``--verify on|off``; ``--loop asyncio|uvloop``;
                ``--max-concurrency N`` and ``--data-loops N`` as on the command line;
- ``sendfile``  the ceiling: raw sockets, one thread per connection, ``os.sendfile`` of each
                part after a hand-written request head; no hashing, no TLS;
- ``requests``  Matterport's example: read a part into memory, ``requests.put`` it, next part;
- ``boto3``     ``upload_file`` (s3transfer); ``--variant default`` or ``tuned`` (part size and
                concurrency as the case says, payload signing and checksums off);
- ``crt``       the AWS CRT S3 client; ``--variant default`` (its checksums) or ``nocheck``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

MiB = 1024 * 1024
ACCESS_KEY = "AKIABENCHMARK0000000"
SECRET_KEY = "bench/secret/key/0000000000000000000000"
REGION = "us-east-1"


def _files(args: argparse.Namespace) -> list[Path]:
    if args.mode == "bulk":
        return sorted(p for p in Path(args.path).iterdir() if p.is_file())
    return [Path(args.path)]


def _key(path: Path, i: int) -> str:
    return f"bench/{i:04d}-{path.name}"


# --- engine -------------------------------------------------------------------------------
def run_engine(args: argparse.Namespace) -> float:
    import anyio

    from engine import MiB as EMiB
    from engine import PartLimits, PresignedMultipart, UploadConfig, Uploader
    from engine.target import Target

    files = _files(args)
    knobs: dict[str, Any] = {}
    if args.part_size is not None:
        knobs["part_size"] = args.part_size * EMiB
    if args.max_concurrency is not None:
        knobs["max_concurrency"] = args.max_concurrency
    cfg = UploadConfig(
        concurrency=args.concurrency,
        data_loops=args.data_loops,
        verify_etag=args.verify == "on",
        verify_tls=True,
        **knobs,
    )
    base = args.url.rstrip("/")

    def presigned(i: int, path: Path) -> Target:
        key = _key(path, i)

        def part_url(n: int) -> str:
            if args.mode == "multipart":
                return (
                    f"{base}/{args.bucket}/{key}?partNumber={n}&uploadId=bench"
                    "&X-Amz-Signature=0123456789abcdef"
                )
            return f"{base}/{args.bucket}/{key}?X-Amz-Signature=0123456789abcdef"

        limits = PartLimits(single=args.mode != "multipart")
        return PresignedMultipart(part_url, lambda parts: None, limits=limits)

    def s3(i: int, path: Path) -> Target:
        from engine.providers.s3 import S3Target

        return S3Target(args.bucket, _key(path, i), endpoint_url=base, region=REGION)

    make = s3 if args.target == "s3" else presigned
    targets = [(p, make(i, p)) for i, p in enumerate(files)]
    elapsed = 0.0

    async def main() -> None:
        nonlocal elapsed
        async with Uploader(cfg) as up:
            t0 = time.perf_counter()
            if len(targets) == 1:
                await up.upload(*targets[0])
            else:
                # files at once: the fixed concurrency, else the command line's default (4)
                at_once = args.concurrency or 4
                results = await up.upload_many(targets, files_at_once=at_once)
                for r in results:
                    if isinstance(r, Exception):
                        raise r
            elapsed = time.perf_counter() - t0

    backend_options: dict[str, Any] = {}
    if args.loop == "uvloop":
        backend_options["use_uvloop"] = True
    anyio.run(main, backend="asyncio", backend_options=backend_options)
    return elapsed


def _matched(args: argparse.Namespace) -> tuple[int, int]:
    """(part size in MiB, concurrency) of a contender that needs both."""
    if args.part_size is None or args.concurrency is None:
        raise SystemExit(f"{args.name} {args.variant}: needs --part-size and --concurrency")
    return int(args.part_size), int(args.concurrency)


# --- sendfile ceiling ---------------------------------------------------------------------
def run_sendfile(args: argparse.Namespace) -> float:
    part_mib, concurrency = _matched(args)
    files = _files(args)
    u = urlsplit(args.url)
    host, port = u.hostname or "127.0.0.1", u.port or 80
    jobs: list[tuple[Path, int, int, str]] = []
    for i, path in enumerate(files):
        size = path.stat().st_size
        if args.mode == "multipart":
            ps = part_mib * MiB
            for n, off in enumerate(range(0, size, ps), start=1):
                q = f"?partNumber={n}&uploadId=bench"
                jobs.append((path, off, min(ps, size - off), f"/{args.bucket}/{_key(path, i)}{q}"))
        else:
            jobs.append((path, 0, size, f"/{args.bucket}/{_key(path, i)}"))
    lock = threading.Lock()
    errors: list[BaseException] = []

    def worker() -> None:
        sock = socket.create_connection((host, port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        fds: dict[Path, int] = {}
        rfile = sock.makefile("rb")
        try:
            while True:
                with lock:
                    if not jobs or errors:
                        return
                    path, off, size, target = jobs.pop(0)
                fd = fds.get(path)
                if fd is None:
                    fd = fds[path] = os.open(path, os.O_RDONLY)
                head = (
                    f"PUT {target} HTTP/1.1\r\nHost: {host}:{port}\r\n"
                    f"Content-Length: {size}\r\n\r\n"
                ).encode()
                sock.sendall(head)
                sent = 0
                while sent < size:
                    sent += os.sendfile(sock.fileno(), fd, off + sent, size - sent)
                status = rfile.readline()
                length = 0
                while True:
                    line = rfile.readline()
                    if line in (b"\r\n", b""):
                        break
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                if length:
                    rfile.read(length)
                if b" 200 " not in status:
                    raise RuntimeError(f"PUT answered {status!r}")
        except BaseException as exc:
            errors.append(exc)
        finally:
            for fd in fds.values():
                os.close(fd)
            sock.close()

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return time.perf_counter() - t0


# --- Matterport's example: requests, one part after another -------------------------------
def run_requests(args: argparse.Namespace) -> float:
    import requests

    files = _files(args)
    base = args.url.rstrip("/")
    verify: str | bool = args.ca or True
    part_mib = _matched(args)[0] if args.mode == "multipart" else 0
    t0 = time.perf_counter()
    for i, path in enumerate(files):
        key = _key(path, i)
        size = path.stat().st_size
        ps = part_mib * MiB if args.mode == "multipart" else size
        with path.open("rb") as f:
            for n in range(1, max(1, -(-size // ps)) + 1):
                data = f.read(ps)
                url = f"{base}/{args.bucket}/{key}?partNumber={n}&uploadId=bench"
                r = requests.put(url, data=data, verify=verify, timeout=300)
                r.raise_for_status()
                _ = r.headers["ETag"]
    return time.perf_counter() - t0


# --- boto3 / s3transfer -------------------------------------------------------------------
def _boto_client(args: argparse.Namespace, tuned: bool) -> Any:
    import boto3
    from botocore.config import Config

    s3cfg: dict[str, Any] = {"addressing_style": "path"}
    kw: dict[str, Any] = {}
    if args.concurrency is not None:  # botocore's default pool holds 10
        kw["max_pool_connections"] = max(10, args.concurrency)
    if tuned:
        s3cfg["payload_signing_enabled"] = False
        kw["request_checksum_calculation"] = "when_required"
        kw["response_checksum_validation"] = "when_required"
    return boto3.client(
        "s3",
        endpoint_url=args.url,
        region_name=REGION,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        verify=args.ca or True,
        config=Config(s3=s3cfg, **kw),
    )


def run_boto3(args: argparse.Namespace) -> float:
    from boto3.s3.transfer import TransferConfig
    from s3transfer.manager import TransferManager  # type: ignore[import-untyped]

    tuned = args.variant == "tuned"
    client = _boto_client(args, tuned)
    files = _files(args)
    if tuned:
        part_mib, concurrency = _matched(args)
        tc = TransferConfig(
            multipart_chunksize=part_mib * MiB,
            multipart_threshold=(part_mib * MiB if args.mode != "single" else 5 * 1024**3),
            max_concurrency=concurrency,
            use_threads=True,
        )
    else:
        tc = TransferConfig()
        if args.mode == "single":
            tc = TransferConfig(multipart_threshold=5 * 1024**3)
    t0 = time.perf_counter()
    if len(files) == 1:
        client.upload_file(str(files[0]), args.bucket, _key(files[0], 0), Config=tc)
    else:
        with TransferManager(client, tc) as tm:
            futs = [tm.upload(str(p), args.bucket, _key(p, i)) for i, p in enumerate(files)]
            for f in futs:
                f.result()
    return time.perf_counter() - t0


# --- AWS CRT ------------------------------------------------------------------------------
def run_crt(args: argparse.Namespace) -> float:
    from awscrt import auth, http, io, s3  # type: ignore[import-untyped]

    u = urlsplit(args.url)
    https = u.scheme == "https"
    bootstrap = io.ClientBootstrap(io.EventLoopGroup(), io.DefaultHostResolver(io.EventLoopGroup()))
    creds = auth.AwsCredentialsProvider.new_static(ACCESS_KEY, SECRET_KEY)
    tls_opts = None
    if https:
        ctx_opts = io.TlsContextOptions()
        if args.ca:
            ctx_opts.override_default_trust_store_from_path(ca_filepath=args.ca)
        tls_opts = io.ClientTlsContext(ctx_opts).new_connection_options()
        tls_opts.set_server_name(u.hostname or "127.0.0.1")
    kw: dict[str, Any] = {}
    if args.variant in ("matched", "nocheck") or (args.mode == "single" and args.part_size):
        part_mib, concurrency = _matched(args)
        kw["part_size"] = part_mib * MiB
        kw["max_active_connections_override"] = concurrency
    if args.mode == "single":
        kw["multipart_upload_threshold"] = 5 * 1024**3
    client = s3.S3Client(
        bootstrap=bootstrap,
        region=REGION,
        credential_provider=creds,
        tls_mode=s3.S3RequestTlsMode.ENABLED if https else s3.S3RequestTlsMode.DISABLED,
        tls_connection_options=tls_opts,
        throughput_target_gbps=10.0,
        **kw,
    )
    checksum = None
    if args.variant == "nocheck":
        checksum = s3.S3ChecksumConfig(algorithm=None, location=None)
    files = _files(args)
    host = u.netloc
    t0 = time.perf_counter()
    reqs = []
    for i, path in enumerate(files):
        headers = http.HttpHeaders(
            [
                ("Host", host),
                ("Content-Length", str(path.stat().st_size)),
                ("Content-Type", "application/octet-stream"),
            ]
        )
        msg = http.HttpRequest("PUT", f"/{args.bucket}/{_key(path, i)}", headers)
        reqs.append(
            client.make_request(
                type=s3.S3RequestType.PUT_OBJECT,
                request=msg,
                send_filepath=str(path),
                checksum_config=checksum,
            )
        )
    for r in reqs:
        r.finished_future.result(600)
    return time.perf_counter() - t0


def run_cluster(args: argparse.Namespace) -> float:
    from benchmarks.cluster import run_cluster as run

    return run(args)


RUNNERS: dict[str, Callable[[argparse.Namespace], float]] = {
    "engine": run_engine,
    "cluster": run_cluster,
    "sendfile": run_sendfile,
    "requests": run_requests,
    "boto3": run_boto3,
    "crt": run_crt,
}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("name", choices=sorted(RUNNERS))
    p.add_argument("--url", required=True)
    p.add_argument("--path", required=True, help="the file, or the directory for bulk")
    p.add_argument("--mode", choices=("multipart", "single", "bulk"), default="multipart")
    p.add_argument("--bucket", default="bench")
    p.add_argument("--part-size", type=int, default=None, help="MiB (default: the tool's)")
    p.add_argument("--concurrency", type=int, default=None, help="default: the tool's")
    p.add_argument("--max-concurrency", type=int, default=None, help="engine: adaptive ceiling")
    p.add_argument("--data-loops", type=int, default=None, help="engine: HTTPS event loops")
    p.add_argument("--variant", default="default")
    p.add_argument("--verify", choices=("on", "off"), default="on")
    p.add_argument("--target", choices=("presigned", "s3"), default="presigned")
    p.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    p.add_argument("--ca", default=None)
    p.add_argument("--workers", type=int, default=0, help="cluster: Dask workers (0: in-process)")
    p.add_argument("--bwlimit", type=float, default=0.0, help="cluster: bytes/s per process")
    args = p.parse_args(argv)
    if args.ca:
        ssl.create_default_context(cafile=args.ca)  # fail early on a bad bundle
    files = _files(args)
    seconds = RUNNERS[args.name](args)
    total = sum(f.stat().st_size for f in files)
    sys.stdout.write(json.dumps({"seconds": seconds, "bytes": total}) + "\n")


if __name__ == "__main__":
    main()
