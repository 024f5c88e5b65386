"""Peak memory is bounded by concurrency x chunk size, not by part or file size.

A child process uploads a file far larger than the bound (a sparse file, so the test needs no
disk) to a sandbox that discards the bytes; the child's peak RSS (VmHWM) minus its RSS just
before the upload must stay within the engine's stated ceiling plus a fixed allowance for
the interpreter's own buffers.
"""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from engine.sandbox.server import Sandbox, SandboxConfig

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

MiB = 1024 * 1024
ALLOWANCE = 24 * MiB  # aiohttp/asyncio buffers, thread stacks, allocator slack

CHILD = r"""
import json, sys, anyio
from engine import PartLimits, PresignedMultipart, UploadConfig, Uploader
from engine.sandbox.blobstore import BlobStore

def rss(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) * 1024
    raise SystemExit("no " + field)

async def main(url, secret, upload_id, path, concurrency):
    signer = BlobStore(None, secret=bytes.fromhex(secret), discard=True)  # signs URLs only
    signer.base_url = url
    single = upload_id == "-"
    if single:
        presign = lambda n: signer.presign_put("mem/big")
    else:
        presign = lambda n: signer.presign_part("mem/big", upload_id, n)
    config = UploadConfig(concurrency=concurrency, part_size=256 * 1024 * 1024)
    target = PresignedMultipart(presign, lambda parts: None, limits=PartLimits(single=single))
    async with Uploader(config) as up:
        baseline = rss("VmRSS")
        result = await up.upload(path, target)
    print(json.dumps({"baseline": baseline, "peak": rss("VmHWM"),
                      "ceiling": config.memory_ceiling, "size": result.size,
                      "parts": len(result.parts)}))

anyio.run(main, *sys.argv[1:5], int(sys.argv[5]))
"""


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    async with Sandbox(SandboxConfig(discard=True)) as sb:
        yield sb


@pytest.mark.parametrize(
    ("size", "single", "concurrency"),
    [(2048 * MiB, True, 1), (1024 * MiB, False, 4)],
    ids=["2GiB-single-put", "1GiB-multipart-c4"],
)
async def test_peak_rss_is_independent_of_file_and_part_size(
    sandbox: Sandbox, tmp_path: Path, size: int, single: bool, concurrency: int
) -> None:
    big = tmp_path / "big.e57"
    with big.open("wb") as f:
        f.truncate(size)
    upload_id = "-" if single else sandbox.store.create_multipart("mem/big")
    secret = sandbox.config.secret.hex()
    argv = [sys.executable, "-c", CHILD, sandbox.url, secret, upload_id, str(big), str(concurrency)]
    proc = await anyio.run_process(argv, check=False)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    report = json.loads(proc.stdout)
    assert report["size"] == size
    grew = report["peak"] - report["baseline"]
    bound = report["ceiling"] + ALLOWANCE
    assert grew <= bound, f"peak grew {grew / MiB:.1f} MiB > {bound / MiB:.1f} MiB"
    print(f"{size / MiB:.0f} MiB, {report['parts']} parts: peak RSS grew {grew / MiB:.1f} MiB")
    assert bound < size / 20  # the bound is far below the file (and part) size
