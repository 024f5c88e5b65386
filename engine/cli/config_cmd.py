"""``upload-engine config show``: every setting's effective value and where it came from (flag,
environment, config file profile, default), the credentials (present or not, never their
values) and the paths the engine uses."""

from __future__ import annotations

import argparse
import os

from engine.cli.credentials import CREDENTIAL_KEYS, credentials_env, credentials_path
from engine.cli.options import state_dir_default
from engine.cli.output import Outcome, escape
from engine.cli.settings import SETTINGS, Resolved, config_path, resolve
from engine.providers.matterport.documents import ENDPOINT
from engine.providers.speckle import DEFAULT_SERVER

__all__ = ["register", "run_show"]

DEFAULTS = {  # what "default" means where the engine leaves a setting to the platform
    "matterport_endpoint": ENDPOINT,
    "speckle_server": DEFAULT_SERVER,
    "s3_region": "the AWS profile's, else us-east-1",
    "s3_endpoint_url": "AWS",
    "s3_profile": "$AWS_PROFILE, else the AWS default",
    "concurrency": "adaptive, up to max_concurrency",
}


def register(cfg: argparse.ArgumentParser) -> None:
    """The ``config`` actions (its name and line in ``--help``: ``app.COMMANDS``)."""
    actions = cfg.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    show = actions.add_parser(
        "show",
        help="every setting's value and where it came from (flag > env > profile > default)",
    )
    for s in SETTINGS:
        if s.flag != "--log-level":  # a global option, on every command
            show.add_argument(s.flag, dest=s.dest, default=None, help=argparse.SUPPRESS)
    show.add_argument("--json", action="store_true", help="one JSON Result record on stdout")
    show.set_defaults(runner=run_show, final_to_stderr=False)


def _value(r: Resolved) -> str:
    if r.value is None:
        return f"({DEFAULTS.get(r.setting.key, 'not set')})"
    return escape(str(r.value))


async def run_show(args: argparse.Namespace) -> Outcome:
    flags = {s.dest: getattr(args, s.dest, None) for s in SETTINGS}
    # the command's own flags only: apply_settings already filled them from env and profile
    given = {d: v for d, v in flags.items() if d in _given(args)}
    resolved, where = resolve(given, profile=getattr(args, "config_profile", None))
    env = credentials_env()
    creds_file = credentials_path(env)
    rows = [(r.setting.key, _value(r), r.source) for r in resolved.values()]
    for key in CREDENTIAL_KEYS:
        if key in os.environ:
            rows.append((key, "[redacted]", f"env {key}"))
        elif key in env:
            rows.append((key, "[redacted]", f"credentials file {creds_file}"))
        else:
            rows.append((key, "(not set)", "-"))
    width = max(len(k) for k, _, _ in rows)
    vwidth = max(len(v) for _, v, _ in rows)
    lines = [where, f"credentials file {creds_file}"]
    lines += [f"state directory {state_dir_default()} (upload); DIR/.upload-engine (import)"]
    lines += [f"{k:<{width}}  {v:<{vwidth}}  {src}" for k, v, src in rows]
    record = {
        "profile": where,
        "config_file": str(config_path(os.environ)),
        "credentials_file": str(creds_file),
        "state_dir": str(state_dir_default()),
        "settings": {k: {"value": v, "source": src} for k, v, src in rows},
    }
    return Outcome("\n".join(lines), record)


def _given(args: argparse.Namespace) -> set[str]:
    """The settings' destinations given on this command line (``_explicit`` is set by
    ``apply_settings`` before it fills the others)."""
    explicit: set[str] = getattr(args, "_explicit", set())
    return explicit
