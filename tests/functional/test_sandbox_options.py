"""The sandbox's serve options: one definition for ``python -m engine.sandbox`` and the CLI.

No engine client code is used here: these are the sandbox's own options, as ``add_serve_options``
defines them and ``config_from_args`` reads them.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from engine.sandbox import server
from engine.sandbox.faults import FaultPlan
from engine.sandbox.options import DEFAULT_PORT, add_serve_options, config_from_args, parse_size

MiB = 1024 * 1024


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_serve_options(parser)
    return parser.parse_args(argv)


def test_defaults() -> None:
    args = parse()
    assert DEFAULT_PORT == 8700
    assert vars(args) == {
        "host": "127.0.0.1",
        "port": 8700,
        "data_dir": None,
        "discard": False,
        "storage": None,
        "storage_mode": "s3",
        "faults": "",
        "seed": 0,
        "latency": 0.0,
        "control_latency": 0.0,
        "min_part_size": 5 * MiB,
    }
    config = config_from_args(args)
    assert (config.host, config.port, config.data_dir, config.storage_url) == (
        "127.0.0.1",
        8700,
        None,
        None,
    )
    assert config.faults == FaultPlan()
    assert config.control_latency == 0.0
    assert config.min_part_size == config.matterport.min_part_size == 5 * MiB


def test_every_option_reaches_the_config(tmp_path: Path) -> None:
    args = parse(
        "--host=::1",
        "--port=0",
        f"--data-dir={tmp_path}",
        "--discard",
        "--faults=503=0.25,reset=0.5",
        "--seed=7",
        "--latency=0.5",
        "--control-latency=0.05",
        "--min-part-size=256KiB",
    )
    config = config_from_args(args)
    # Control-plane latency is its own knob, apart from the blob store's fault plan.
    assert config.control_latency == 0.05
    assert (config.host, config.port, config.data_dir, config.discard) == ("::1", 0, tmp_path, True)
    assert config.faults == FaultPlan(seed=7, rates={"503": 0.25, "reset": 0.5}, latency=0.5)
    # The blob store and the Matterport plane agree on the smallest part.
    assert config.min_part_size == config.matterport.min_part_size == 256 * 1024
    storage = config_from_args(parse("--storage=s3://scans/p?endpoint_url=http://127.0.0.1:9"))
    assert storage.storage_url == "s3://scans/p?endpoint_url=http://127.0.0.1:9"


@pytest.mark.parametrize(
    ("text", "size"),
    [("1048576", MiB), ("64MiB", 64 * MiB), ("8M", 8 * MiB), ("1GiB", 1024 * MiB), ("2kb", 2048)],
)
def test_sizes(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["0", "-5", "abc", "", "inf", "MiB"])
def test_bad_sizes_are_usage_errors(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        parse_size(text)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--storage=s3://scans", "--faults=503=0.1"], "--faults apply"),
        (["--storage=s3://x"], "--storage: not a valid S3 bucket name"),
        (["--storage=s3://scans", "--latency=1"], "fault injection applies"),
        (["--faults=nope"], "bad fault spec 'nope'"),
        (["--faults=503=2"], "bad fault spec '503=2'"),
        (["--latency=-1"], "--latency: latency must be"),
        (["--port=70000"], "port must be in 0..65535"),
    ],
)
def test_options_that_do_not_fit_are_one_line_value_errors(argv: list[str], message: str) -> None:
    with pytest.raises(ValueError, match="^" + message.replace(".", r"\.")) as refused:
        config_from_args(parse(*argv))
    assert "\n" not in str(refused.value)


@pytest.mark.parametrize("text", ["-0.05", "nan", "inf", "50ms"])
def test_bad_control_latency_is_a_usage_error(
    text: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as refused:
        parse(f"--control-latency={text}")
    assert refused.value.code == 2
    err = capsys.readouterr().err
    assert "argument --control-latency" in err and "seconds" in err
    assert "Traceback" not in err


def test_the_server_entry_point_uses_them(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        server.main(["--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    for option in ("--host", "--port", "--data-dir", "--discard", "--storage", "--faults"):
        assert option in out
    for option in ("--seed", "--latency", "--min-part-size", "default 8700"):
        assert option in out
    words = " ".join(out.split())  # argparse wraps the help to the terminal's width
    assert "--control-latency S" in words and "simulation knob, not a service behaviour" in words
    with pytest.raises(SystemExit) as refused:
        server.main(["--storage=s3://scans", "--faults=503=0.1"])
    assert refused.value.code == 2
    assert "error: --faults apply to the sandbox's own blob store" in capsys.readouterr().err
