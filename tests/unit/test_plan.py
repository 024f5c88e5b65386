"""Part planning: properties that hold for every size and every set of limits."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine import ConfigError, PartLimits, TooLargeError, plan_parts
from engine.plan import FILL_FLOOR, S3_LIMITS, choose_part_size

MiB = 1024**2
GiB = 1024**3
TiB = 1024**4


def check_plan(size: int, limits: PartLimits, preferred: int) -> None:
    parts = plan_parts(size, part_size=preferred, limits=limits)
    assert [p.number for p in parts] == list(range(1, len(parts) + 1))
    assert parts[0].offset == 0
    for a, b in itertools.pairwise(parts):
        assert a.end == b.offset
    assert parts[-1].end == size
    assert len(parts) <= limits.max_parts
    assert all(p.size <= limits.max_size for p in parts)
    assert all(p.size >= limits.min_size for p in parts[:-1])
    assert len({p.size for p in parts[:-1]}) <= 1
    if limits.single:
        assert len(parts) == 1


@settings(max_examples=400, deadline=None)
@given(
    size=st.integers(0, 60 * TiB),
    preferred=st.integers(1, 6 * GiB),
)
def test_s3_plans_cover_the_file(size: int, preferred: int) -> None:
    if size > S3_LIMITS.max_size * S3_LIMITS.max_parts:
        with pytest.raises(TooLargeError):
            plan_parts(size, part_size=preferred)
    else:
        check_plan(size, S3_LIMITS, preferred)


@settings(max_examples=400, deadline=None)
@given(
    size=st.integers(0, 4 * GiB),
    min_size=st.integers(0, 200 * MiB),
    span=st.integers(1, 2 * GiB),
    max_parts=st.integers(1, 10_000),
    preferred=st.integers(1, 1 * GiB),
    single=st.booleans(),
)
def test_server_limits_are_respected(
    size: int, min_size: int, span: int, max_parts: int, preferred: int, single: bool
) -> None:
    limits = PartLimits(
        min_size=min_size, max_size=min_size + span, max_parts=max_parts, single=single
    )
    too_big = size > limits.max_size if single else size > limits.max_size * max_parts
    if too_big and size > 0:
        with pytest.raises(TooLargeError):
            plan_parts(size, part_size=preferred, limits=limits)
    else:
        check_plan(size, limits, preferred)


def test_zero_byte_file_is_one_empty_part() -> None:
    [part] = plan_parts(0, part_size=8 * MiB)
    assert (part.number, part.offset, part.size) == (1, 0, 0)


def test_parts_and_remainder() -> None:
    parts = plan_parts(20 * MiB + 3, part_size=8 * MiB)
    assert [p.size for p in parts] == [8 * MiB, 8 * MiB, 4 * MiB + 3]


def test_preferred_size_grows_past_ten_thousand_parts() -> None:
    size = 10_000 * 8 * MiB + 1
    part = choose_part_size(size, 8 * MiB)
    assert part == 9 * MiB  # grown to the next whole MiB
    assert len(plan_parts(size, part_size=8 * MiB)) <= 10_000


def test_small_preferred_size_is_raised_to_the_s3_minimum() -> None:
    assert plan_parts(12 * MiB, part_size=1)[0].size == 5 * MiB


def test_matterport_style_minimum_and_single_part() -> None:
    limits = PartLimits(min_size=100 * MiB, max_size=5 * GiB)
    assert [p.size for p in plan_parts(250 * MiB, part_size=8 * MiB, limits=limits)] == [
        100 * MiB,
        100 * MiB,
        50 * MiB,
    ]
    whole = PartLimits(min_size=2090321920, max_size=2090321920, single=True)
    assert len(plan_parts(2090321920, part_size=8 * MiB, limits=whole)) == 1


def test_single_put_above_the_limit_is_refused() -> None:
    with pytest.raises(TooLargeError, match="single upload"):
        plan_parts(5 * GiB + 1, part_size=MiB, limits=PartLimits(single=True))


def test_invalid_limits_are_a_config_error() -> None:
    with pytest.raises(ConfigError):
        plan_parts(10, part_size=1, limits=PartLimits(min_size=10, max_size=5))
    with pytest.raises(ConfigError):
        plan_parts(-1, part_size=1)


@pytest.mark.parametrize(
    ("size", "preferred", "fill", "min_size", "want"),
    [
        (1024 * MiB, 64 * MiB, 64, 5 * MiB, 16 * MiB),  # a 1 GiB file fills 64 connections
        (1024 * MiB, 64 * MiB, 32, 5 * MiB, 32 * MiB),
        (128 * MiB, 64 * MiB, 32, 5 * MiB, FILL_FLOOR),  # not below the floor: 16 parts
        (128 * MiB, 64 * MiB, 32, 12 * MiB, 12 * MiB),  # nor below the target's minimum
        (100 * MiB, 5 * MiB, 4, 5 * MiB, 5 * MiB),  # filling never grows a part
        (1000 * MiB, 64 * MiB, 3, 5 * MiB, 64 * MiB),  # a third would be larger: preferred
    ],
)
def test_parts_shrink_to_fill_the_connections(
    size: int, preferred: int, fill: int, min_size: int, want: int
) -> None:
    limits = PartLimits(min_size=min_size)
    plan = plan_parts(size, part_size=preferred, limits=limits, fill=fill)
    assert plan[0].size == want
    assert sum(p.size for p in plan) == size
