"""Where the platforms' tokens come from: never from arguments.

MATTERPORT_TOKEN_ID / MATTERPORT_TOKEN_SECRET and SPECKLE_TOKEN come from the environment or,
for what the environment lacks, from the credentials file (``credentials_env``); AWS
credentials from the standard AWS chain (botocore's, not read here).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar

from engine.errors import AuthenticationError, ConfigError

__all__ = [
    "CREDENTIALS_FILE_VAR",
    "CREDENTIAL_KEYS",
    "credentials_env",
    "credentials_path",
    "read_credentials",
]

T = TypeVar("T")

CREDENTIAL_KEYS = ("MATTERPORT_TOKEN_ID", "MATTERPORT_TOKEN_SECRET", "SPECKLE_TOKEN")
CREDENTIALS_FILE_VAR = "UPLOAD_ENGINE_CREDENTIALS_FILE"


def credentials_path(environ: Mapping[str, str]) -> Path:
    """``$UPLOAD_ENGINE_CREDENTIALS_FILE``, else ``$XDG_CONFIG_HOME/upload-engine/credentials``
    (``~/.config/upload-engine/credentials``)."""
    explicit = environ.get(CREDENTIALS_FILE_VAR)
    if explicit:
        return Path(explicit)
    base = environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "upload-engine" / "credentials"


def credentials_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment, completed from the credentials file (the environment wins).

    The file holds ``KEY=VALUE`` lines (``export`` and quotes allowed, ``#`` comments) for the
    keys in ``CREDENTIAL_KEYS``. It must be a regular file owned by the current user and not
    readable by group or others (``chmod 600``), else ``ConfigError``. A missing file is fine
    unless ``$UPLOAD_ENGINE_CREDENTIALS_FILE`` names it. No value is ever put in a message.
    """
    env = dict(os.environ if environ is None else environ)
    path = credentials_path(env)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        if env.get(CREDENTIALS_FILE_VAR):
            raise ConfigError(f"{CREDENTIALS_FILE_VAR}: {path}: no such file") from None
        return env
    except OSError as exc:
        raise ConfigError(f"credentials file {path}: {exc.strerror or exc}") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"credentials file {path}: not a regular file")
        if st.st_mode & 0o077:
            raise ConfigError(
                f"credentials file {path} is open to group or others (mode "
                f"{stat.S_IMODE(st.st_mode):04o}): run chmod 600 {path}"
            )
        if hasattr(os, "geteuid") and st.st_uid != os.geteuid():
            raise ConfigError(f"credentials file {path} belongs to another user")
        raw = f.read(64 * 1024)
    for key, value in _parse_credentials(raw, path).items():
        env.setdefault(key, value)
    return env


def _parse_credentials(raw: bytes, path: Path) -> dict[str, str]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"credentials file {path}: not UTF-8 text") from None
    found: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.removeprefix("export ").partition("=")
        key, value = key.strip(), value.strip()
        if not sep or key not in CREDENTIAL_KEYS:
            raise ConfigError(
                f"credentials file {path}, line {number}: expected KEY=VALUE with KEY one of "
                f"{', '.join(CREDENTIAL_KEYS)}"
            )
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        found[key] = value
    return found


def read_credentials(read: Callable[[Mapping[str, str]], T]) -> T:
    """Credentials from the environment or the credentials file (``credentials_env``); missing
    ones are an ``AuthenticationError`` (exit 3, as credentials the platform refuses), found
    before anything is sent. A credentials file that cannot be used is a ``ConfigError``."""
    env = credentials_env()
    try:
        return read(env)
    except AuthenticationError as exc:
        raise AuthenticationError(f"{exc} (or in {credentials_path(env)}, mode 600)") from None
