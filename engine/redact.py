"""Secrets never leave the process: redact URL signatures and credentials from any text
before it reaches a log, an error message, a report or a journal."""

from __future__ import annotations

import re

__all__ = ["redact", "redact_url"]

# a query already reading ``?[redacted]`` is left alone: redacting twice must not read
# ``?[redacted]]``
_URL_QUERY = re.compile(r"(https?://[^\s?#\"'<>]+)\?(?!\[redacted\])[^\s\"'<>)\]]*")
_AUTH = re.compile(r"\b(Bearer|Basic)\s+[A-Za-z0-9._~+/=-]+", re.IGNORECASE)
_SIGNATURE_PARAM = re.compile(
    r"((?:X-Amz-Signature|X-Amz-Credential|X-Amz-Security-Token|X-Signature|Signature|"
    r"sig|token)=)[^&\s\"'<>]+",
    re.IGNORECASE,
)


def redact_url(url: str) -> str:
    """The URL without its query string (where presigned signatures live)."""
    base, sep, _ = url.partition("?")
    return base + ("?[redacted]" if sep else "")


def redact(text: str) -> str:
    """``text`` with URL query strings, signature parameters and auth headers masked."""
    text = _URL_QUERY.sub(r"\1?[redacted]", text)
    text = _SIGNATURE_PARAM.sub(r"\1[redacted]", text)
    return _AUTH.sub(r"\1 [redacted]", text)
