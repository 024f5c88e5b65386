"""Retry classification and backoff are pure: tested without a loop or a network."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest

from engine.errors import ConfigError
from engine.retry import (
    Decision,
    RetryPolicy,
    Verdict,
    backoff_delay,
    classify_response,
    decide,
    is_md5_etag,
    parse_retry_after,
)

EXPIRED = (
    b"<?xml version='1.0'?><Error><Code>AccessDenied</Code>"
    b"<Message>Request has expired</Message></Error>"
)


@pytest.mark.parametrize("status", [500, 502, 503, 504, 429, 408])
def test_server_errors_and_throttling_are_transient(status: int) -> None:
    assert classify_response(status, b"").kind == "transient"


def test_slowdown_and_request_timeout_codes_are_transient() -> None:
    slow = classify_response(503, b"<Error><Code>SlowDown</Code></Error>")
    assert slow.kind == "transient" and "SlowDown" in slow.reason
    timeout = classify_response(400, b"<Error><Code>RequestTimeout</Code></Error>")
    assert timeout.kind == "transient"


def test_expired_url_asks_for_a_fresh_one() -> None:
    verdict = classify_response(403, EXPIRED)
    assert verdict.kind == "expired"
    assert "Request has expired" in verdict.reason


@pytest.mark.parametrize(
    ("status", "body", "text"),
    [
        (
            403,
            b"<Error><Code>SignatureDoesNotMatch</Code><Message>bad sig</Message></Error>",
            "bad sig",
        ),
        (400, b"<Error><Code>EntityTooLarge</Code></Error>", "EntityTooLarge"),
        (404, b"<Error><Code>NoSuchUpload</Code></Error>", "NoSuchUpload"),
        (411, b"Length Required", "Length Required"),
    ],
)
def test_other_client_errors_are_fatal_with_the_server_message(
    status: int, body: bytes, text: str
) -> None:
    verdict = classify_response(status, body)
    assert verdict.kind == "fatal"
    assert text in verdict.reason and str(status) in verdict.reason


def test_retry_after_seconds_fractions_and_dates() -> None:
    assert parse_retry_after("2") == 2.0
    assert parse_retry_after("0.25") == 0.25
    now = datetime(2026, 1, 1, 0, 0, 0, tzinfo=UTC)
    assert parse_retry_after("Thu, 01 Jan 2026 00:00:05 GMT", now) == 5.0
    assert parse_retry_after("garbage") is None
    assert parse_retry_after(None) is None
    assert parse_retry_after("-3") == 0.0
    assert classify_response(429, b"", "1.5").retry_after == 1.5


def test_full_jitter_backoff_is_bounded_and_grows() -> None:
    rng = random.Random(7)
    for attempt in range(1, 30):
        delay = backoff_delay(attempt, base=0.5, cap=10.0, rng=rng)
        assert 0.0 <= delay <= min(10.0, 0.5 * 2 ** (attempt - 1))
    late = [backoff_delay(8, base=0.5, cap=10.0, rng=rng) for _ in range(200)]
    assert max(late) > 5.0  # reaches toward the cap, not stuck at the base


def test_md5_etags_are_recognised() -> None:
    assert is_md5_etag('"d41d8cd98f00b204e9800998ecf8427e"')
    assert is_md5_etag("d41d8cd98f00b204e9800998ecf8427e")
    assert not is_md5_etag('"d41d8cd98f00b204e9800998ecf8427e-3"')
    assert not is_md5_etag("")


# ---- RetryPolicy and decide: the part loop's step, pure ----------------------------------------

POLICY = RetryPolicy(max_attempts=3, base=1.0, cap=4.0)


def test_decide_rejects_fatal_answers_before_anything_else() -> None:
    fatal = Verdict("fatal", "HTTP 400")
    assert decide(fatal, 1, POLICY, stopping=True, jitter=0.5).action == "reject"


def test_decide_stops_when_the_run_is_stopping() -> None:
    step = decide(Verdict("transient", "503"), 1, POLICY, stopping=True, jitter=0.5)
    assert step.action == "stop"


def test_decide_gives_up_after_max_attempts() -> None:
    step = decide(Verdict("transient", "503"), 3, POLICY, stopping=False, jitter=0.5)
    assert step.action == "give_up"


def test_decide_refreshes_an_expired_url_without_waiting() -> None:
    step = decide(Verdict("expired", "403"), 1, POLICY, stopping=False, jitter=0.9)
    assert step == Decision("retry", 0.0, refresh=True)


def test_decide_waits_full_jitter_doubling_up_to_the_cap() -> None:
    waits = [
        decide(
            Verdict("transient", "x"),
            n,
            RetryPolicy(max_attempts=9, base=1.0, cap=4.0),
            stopping=False,
            jitter=0.5,
        ).delay
        for n in (1, 2, 3, 4)
    ]
    assert waits == [0.5, 1.0, 2.0, 2.0]


def test_retry_after_replaces_backoff_and_is_capped() -> None:
    hinted = Verdict("transient", "429", retry_after=3.0)
    assert decide(hinted, 1, POLICY, stopping=False, jitter=0.0).delay == 3.0
    long = Verdict("transient", "429", retry_after=60.0)
    assert decide(long, 1, POLICY, stopping=False, jitter=0.0).delay == 4.0
    generous = RetryPolicy(max_attempts=3, base=1.0, cap=4.0, retry_after_cap=120.0)
    assert decide(long, 1, generous, stopping=False, jitter=0.0).delay == 60.0


def test_a_policy_is_validated() -> None:
    with pytest.raises(ConfigError):
        RetryPolicy(max_attempts=0)
    with pytest.raises(ConfigError):
        RetryPolicy(base=2.0, cap=1.0)
