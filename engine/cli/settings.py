"""Defaults without flags: the config file, its profiles and the environment.

Every setting is looked up in this order, the first that has it wins:

1. the command-line flag;
2. the environment variable ``UPLOAD_ENGINE_<KEY>`` (``UPLOAD_ENGINE_SPECKLE_PROJECT``);
3. the selected profile of the config file;
4. the built-in default.

The config file is ``$UPLOAD_ENGINE_CONFIG_FILE``, else ``$XDG_CONFIG_HOME/upload-engine/
config.toml`` (``~/.config/upload-engine/config.toml``), read with ``tomllib``. Like aws-cli's,
it holds a ``[default]`` profile and named ones (``[profiles.qa]``); ``--config-profile NAME``
or ``$UPLOAD_ENGINE_PROFILE`` selects one, which stands alone (it does not inherit from
``[default]``). Keys are the setting names below (``speckle_project = "abc"``); an unknown key,
a value of the wrong type or a profile that is not there is a usage error naming the file.
Tokens never live here: they stay in the environment or the 0600 credentials file
(``engine.cli.credentials``).
"""

from __future__ import annotations

import argparse
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import ConfigError

__all__ = [
    "CONFIG_FILE_VAR",
    "PROFILE_VAR",
    "SETTINGS",
    "Resolved",
    "Setting",
    "apply_settings",
    "config_path",
    "resolve",
]

CONFIG_FILE_VAR = "UPLOAD_ENGINE_CONFIG_FILE"
PROFILE_VAR = "UPLOAD_ENGINE_PROFILE"
ENV_PREFIX = "UPLOAD_ENGINE_"


def _text(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError("expected a non-empty string")
    return value


def _count(value: object) -> int:
    number = int(value) if isinstance(value, str) and value.strip().isdigit() else value
    if not isinstance(number, int) or isinstance(number, bool) or number < 1:
        raise ValueError("expected a whole number of at least 1")
    return number


def _size(value: object) -> int:
    from engine.cli.options import size

    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    if not isinstance(value, str):
        raise ValueError("expected a size such as 64MiB")
    try:
        return size(value)
    except argparse.ArgumentTypeError as exc:
        raise ValueError(str(exc)) from None


def _level(value: object) -> str:
    from engine.cli.verbosity import LEVELS

    text = _text(value).upper()
    if text not in LEVELS:
        raise ValueError(f"expected one of {', '.join(LEVELS)}")
    return text


@dataclass(frozen=True)
class Setting:
    """One setting: its key (config file, ``UPLOAD_ENGINE_<KEY>``), the attribute of the
    parsed arguments it fills, its flag, its parser and its default (``None``: the
    platform's own)."""

    key: str
    dest: str
    flag: str
    parse: Callable[[object], Any]
    default: object = None
    help: str = ""

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.key.upper()


SETTINGS: tuple[Setting, ...] = (
    Setting("matterport_endpoint", "endpoint", "--endpoint", _text, None, "Import API URL"),
    Setting("matterport_organization", "organization", "--organization", _text),
    Setting("speckle_server", "server", "--server", _text, None, "Speckle server URL"),
    Setting("speckle_project", "project", "--project", _text),
    Setting("s3_endpoint_url", "endpoint_url", "--endpoint-url", _text),
    Setting("s3_region", "region", "--region", _text),
    Setting("s3_profile", "profile", "--profile", _text, None, "AWS profile"),
    Setting(
        "concurrency", "concurrency", "--concurrency", _count, None, "fixed PUTs (default adaptive)"
    ),
    Setting("max_concurrency", "max_concurrency", "--max-concurrency", _count, 64),
    Setting("part_size", "part_size", "--part-size", _size, 64 * 1024 * 1024),
    Setting("files_at_once", "files_at_once", "--files-at-once", _count, 4),
    Setting("log_level", "log_level", "--log-level", _level, "NOTICE"),
)
_BY_KEY = {s.key: s for s in SETTINGS}


@dataclass(frozen=True)
class Resolved:
    """A setting's effective value and where it came from (``flag``, ``env NAME``,
    ``config FILE [PROFILE]`` or ``default``)."""

    setting: Setting
    value: object
    source: str


def config_path(environ: Mapping[str, str]) -> Path:
    explicit = environ.get(CONFIG_FILE_VAR)
    if explicit:
        return Path(explicit)
    base = environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "upload-engine" / "config.toml"


def _profile(environ: Mapping[str, str], chosen: str | None) -> tuple[str, str]:
    """The profile's name and what chose it."""
    if chosen:
        return chosen, "flag"
    if environ.get(PROFILE_VAR):
        return environ[PROFILE_VAR], f"env {PROFILE_VAR}"
    return "default", "default"


def _read_profile(path: Path, name: str, explicit: bool) -> dict[str, object]:
    """The profile ``name`` of the config file at ``path`` (``{}`` when there is no file and
    nothing asked for one)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        if explicit:
            raise ConfigError(f"config file {path}: no such file") from None
        return {}
    except OSError as exc:
        raise ConfigError(f"config file {path}: {exc.strerror or exc}") from None
    try:
        doc = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"config file {path}: not valid TOML ({exc})") from None
    unknown_tables = set(doc) - {"default", "profiles"}
    if unknown_tables:
        raise ConfigError(
            f"config file {path}: unknown table [{sorted(unknown_tables)[0]}] "
            "(use [default] and [profiles.NAME])"
        )
    table = doc.get("default") if name == "default" else doc.get("profiles", {}).get(name)
    if table is None:
        if name == "default":
            return {}
        raise ConfigError(f"config file {path}: no profile [profiles.{name}]")
    if not isinstance(table, dict):
        raise ConfigError(f"config file {path}: profile {name} is not a table")
    return table


def _parsed(setting: Setting, value: object, where: str) -> object:
    try:
        return setting.parse(value)
    except ValueError as exc:
        raise ConfigError(f"{where}: {setting.key} = {value!r}: {exc}") from None


def resolve(
    flags: Mapping[str, object],
    environ: Mapping[str, str] | None = None,
    *,
    profile: str | None = None,
) -> tuple[dict[str, Resolved], str]:
    """Every setting's effective value and source, and a line naming the profile and the
    file. ``flags`` maps a setting's ``dest`` to what the command line gave (``None``:
    not given)."""
    env = os.environ if environ is None else environ
    path = config_path(env)
    name, chosen_by = _profile(env, profile)
    table = _read_profile(path, name, explicit=bool(env.get(CONFIG_FILE_VAR)) or name != "default")
    for key in table:
        if key not in _BY_KEY:
            raise ConfigError(
                f"config file {path}, profile {name}: unknown setting {key!r} "
                f"(known: {', '.join(_BY_KEY)})"
            )
    out: dict[str, Resolved] = {}
    for s in SETTINGS:
        given = flags.get(s.dest)
        if given is not None:
            out[s.key] = Resolved(s, given, "flag")
        elif env.get(s.env):
            out[s.key] = Resolved(s, _parsed(s, env[s.env], s.env), f"env {s.env}")
        elif s.key in table:
            value = _parsed(s, table[s.key], f"config file {path}, profile {name}")
            out[s.key] = Resolved(s, value, f"config {path} [{name}]")
        else:
            out[s.key] = Resolved(s, s.default, "default")
    found = "found" if path.is_file() else "not found"
    return out, f"profile {name} ({chosen_by}); config file {path} ({found})"


def apply_settings(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> None:
    """Fill the settings the command takes but its command line left out (env > profile >
    default). Attributes the command does not have are left alone."""
    dests = {s.dest for s in SETTINGS if hasattr(args, s.dest)}
    if not dests:
        return
    flags = {d: getattr(args, d) for d in dests}
    args._explicit = {d for d, v in flags.items() if v is not None}
    resolved, _ = resolve(flags, environ, profile=getattr(args, "config_profile", None))
    for r in resolved.values():
        if r.setting.dest in dests and getattr(args, r.setting.dest) is None:
            setattr(args, r.setting.dest, r.value)
