"""Smoke test of ``make bench``: the harness, the endpoint and two contenders, at quick size.

Only checks that it runs and writes its outputs; timings live in the benchmark itself."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import run


@pytest.mark.slow
def test_quick_bench_runs_and_writes_results(tmp_path: Path) -> None:
    code = run.main(
        [
            "--quick",
            "--cases",
            "single-http",
            "--contenders",
            "engine,sendfile",
            "--out",
            str(tmp_path),
            "--no-plot",
        ]
    )
    assert code == 0
    result = json.loads((tmp_path / "latest.json").read_text())
    names = {r["contender"] for r in result["summary"]}
    assert {"engine", "engine (ETag check off)", "sendfile ceiling"} <= names
    assert all(s["ok"] and s["gbps"] > 0 and s["rss_mib"] > 0 for s in result["samples"])


@pytest.mark.slow
def test_a_wan_case_is_shaped_and_timed_by_process_wall(tmp_path: Path) -> None:
    code = run.main(
        [
            "--quick",
            "--cases",
            "wan-30",
            "--contenders",
            "engine --concurrency 8",
            "--out",
            str(tmp_path),
            "--no-plot",
        ]
    )
    assert code == 0
    result = json.loads((tmp_path / "latest.json").read_text())
    (row,) = result["summary"]
    assert row["link_gbps"] == 0.5 and row["wall"]
    (s,) = result["samples"]
    assert s["ok"] and s["seconds"] == s["wall"] > s["extra"]["own_seconds"]
    # 8 connections of 400 Mbit/s move at most 0.4 GB/s, start-up and round trips included
    assert 0.05 < s["gbps"] < 0.4
