"""Smoke test of ``make bench``: the harness, the endpoint and a few contenders, at quick size.

Checks that it runs and writes its outputs, and that a WAN case is shaped and timed by wall;
timings live in the benchmark itself."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from benchmarks import run


def _quick(tmp_path: Path, cases: str, contenders: str) -> dict[str, Any]:
    """``make bench --quick`` on some cases and contenders; the result it wrote."""
    argv = ["--quick", "--cases", cases, "--contenders", contenders, "--out", str(tmp_path)]
    assert run.main([*argv, "--no-plot"]) == 0
    result: dict[str, Any] = json.loads((tmp_path / "latest.json").read_text())
    return result


@pytest.mark.slow
def test_quick_bench_runs_and_writes_results(tmp_path: Path) -> None:
    result = _quick(tmp_path, "single-http", "engine,sendfile")
    names = {r["contender"] for r in result["summary"]}
    assert {"engine", "engine (ETag check off)", "sendfile ceiling"} <= names
    assert all(s["ok"] and s["gbps"] > 0 and s["rss_mib"] > 0 for s in result["samples"])


@pytest.mark.slow
def test_a_wan_case_is_shaped_and_timed_by_process_wall(tmp_path: Path) -> None:
    result = _quick(tmp_path, "wan-30", "engine --concurrency 8")
    (row,) = result["summary"]
    assert row["link_gbps"] == 0.5 and row["wall"]
    (s,) = result["samples"]
    assert s["ok"] and s["seconds"] == s["wall"] > s["extra"]["own_seconds"]
    # 8 connections of 400 Mbit/s move at most 0.4 GB/s, start-up and round trips included
    assert 0.05 < s["gbps"] < 0.4
