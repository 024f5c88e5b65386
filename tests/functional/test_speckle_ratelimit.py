"""Rate limits as the server applies them (core/rest/ratelimiter.ts, core/utils/ratelimiter.ts):
HTTP 429 ``RATE_LIMIT_ERROR`` with ``Retry-After`` (seconds, fractional) is waited out as asked,
up to ``retry_after_cap`` (120 s by default), not cut to the backoff cap; and the client spaces
its requests out from ``X-RateLimit-Remaining`` so that it is not refused at all.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from engine import Uploader, UploadResult
from engine.clock import SystemClock
from tests.functional.test_speckle import (
    CONFIG,
    PROJECT,
    BeforeWaiting,
    assert_ingested_once,
    client,
    fake_clock,
    ifc,
    plane,
    sandbox,
    upload,
)

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(
    ("retry_after", "cap", "waited"),
    [(90.0, None, 90.0), (300.0, None, 120.0), (90.0, 5.0, 5.0)],
)
async def test_retry_after_is_honoured_up_to_its_cap(
    tmp_path: Path, retry_after: float, cap: float | None, waited: float
) -> None:
    path, digest = ifc(tmp_path)
    clock = fake_clock()
    before = BeforeWaiting(clock)
    # CONFIG's backoff cap is 0: a Retry-After cut to it would not be waited at all.
    async with sandbox(rate_limit_every=3, retry_after=retry_after) as sb:
        kw = {} if cap is None else {"retry_after_cap": cap}
        target = client(sb, **kw).target(project_id=PROJECT)
        result, _ = await upload(sb, path, target=target, clock=clock, on_event=before)
        assert plane(sb).stats()["rate_limited"] >= 1
        assert before.slept[0] == pytest.approx(waited)
        assert_ingested_once(sb, result, digest)


async def test_requests_are_paced_from_the_remaining_points(tmp_path: Path) -> None:
    """10 requests a second and a burst of 1 a minute: three files at once send about 20
    requests, more than the limit lets through without pacing; spaced out from
    ``X-RateLimit-Remaining``, none is refused."""
    files = [ifc(tmp_path, f"f{n}.ifc", 20_000) for n in range(3)]
    async with sandbox(rate_limit_per_second=10, rate_limit_burst=1) as sb:
        speckle = client(sb, poll_interval=0.05)
        targets = [speckle.target(project_id=PROJECT) for _ in files]
        async with Uploader(CONFIG, clock=SystemClock()) as up:
            work = [(path, t) for (path, _), t in zip(files, targets, strict=True)]
            results = await up.upload_many(work, files_at_once=3)
            pacer = speckle.session(up.services).pacer
        stats = plane(sb).stats()
        assert all(isinstance(r, UploadResult) for r in results), results
        assert stats["requests"] > 10  # more than one window's worth
        assert stats["rate_limited"] == 0
        assert pacer.paused > 0  # the pacing is what kept it so
