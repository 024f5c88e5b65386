"""Attempts and polls: the one waiting helper, driven by a fake clock (no real waiting)."""

from __future__ import annotations

import anyio
import pytest

from engine.clock import FakeClock
from engine.retry import RetryPolicy
from engine.wait import Attempts, Polls


def run(fn):  # type: ignore[no-untyped-def]
    return anyio.run(fn)


def test_attempts_wait_between_tries_and_stop_at_the_limit() -> None:
    clock = FakeClock()
    policy = RetryPolicy(max_attempts=4, base=1.0, cap=2.0)

    async def main() -> list[tuple[int, bool]]:
        seen = []
        async for attempt in Attempts(policy, clock):
            seen.append((attempt.number, attempt.last))
        return seen

    assert run(main) == [(1, False), (2, False), (3, False), (4, True)]
    assert len(clock.slept) == 3  # no wait before the first attempt, none after the last
    assert all(0 <= s <= 2.0 for s in clock.slept)


def test_a_server_hint_replaces_the_backoff() -> None:
    clock = FakeClock()

    async def main() -> None:
        async for attempt in Attempts(RetryPolicy(max_attempts=2, base=1.0, cap=9.0), clock):
            attempt.retry_after = 7.5

    run(main)
    assert clock.slept == [7.5]


def test_returning_inside_the_loop_leaves_nothing_to_finalize() -> None:
    clock = FakeClock()

    async def main() -> int:
        async for attempt in Attempts(RetryPolicy(max_attempts=5), clock):
            if attempt.number == 2:
                return attempt.number
        raise AssertionError("not reached")

    assert run(main) == 2 and len(clock.slept) == 1


def test_polls_grow_to_the_ceiling_and_end_at_the_deadline() -> None:
    clock = FakeClock()

    async def main() -> int:
        n = 0
        async for _poll in Polls(clock, interval=1.0, ceiling=2.0, deadline=6.0, growth=2.0):
            n += 1
        return n

    polls = run(main)
    assert clock.slept == [1.0, 2.0, 2.0, 1.0]  # the last wait is cut to the deadline
    assert polls == 5 and clock.monotonic() == pytest.approx(6.0)
