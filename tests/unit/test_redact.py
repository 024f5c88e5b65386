from __future__ import annotations

from engine.redact import redact, redact_url


def test_presigned_query_strings_and_tokens_are_masked() -> None:
    url = "http://127.0.0.1:9/blob/k?uploadId=1&partNumber=2&X-Signature=deadbeef&X-Expires=9"
    text = redact(f"PUT {url} failed; Authorization: Bearer s3cr3t-token")
    assert "deadbeef" not in text and "s3cr3t-token" not in text
    assert "http://127.0.0.1:9/blob/k?[redacted]" in text
    assert redact("X-Amz-Signature=abc&x=1") == "X-Amz-Signature=[redacted]&x=1"
    assert redact("Basic dXNlcjpwYXNz") == "Basic [redacted]"
    assert redact_url(url) == "http://127.0.0.1:9/blob/k?[redacted]"
    assert redact_url("http://h/p") == "http://h/p"


def test_text_after_a_url_survives() -> None:
    text = redact("reset (write body for http://h/blob/k?X-Signature=abc); retrying")
    assert text == "reset (write body for http://h/blob/k?[redacted]); retrying"
