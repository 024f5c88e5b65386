"""Smoke test of ``benchmarks.flows``: every case end to end at a tiny size (an 8 MiB E57, three
IFC files), against served sandboxes with their control-plane latency, writing its results.

Timings are the benchmark's; this checks that each contender did the whole flow, that the
served sandbox's ``--control-latency`` reached every GraphQL call, and the rows' shape."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks import flows

ROW_KEYS = {
    "case",
    "label",
    "contender",
    "group",
    "default_config",
    "hashing",
    "part_mib",
    "concurrency",
    "runs",
    "failures",
    "error",
    "median_gbps",
    "min_gbps",
    "max_gbps",
    "median_rss_mib",
    "max_rss_mib",
    "median_seconds",
    "median_wall_seconds",
    "control_latency_ms",
}


def test_every_flow_runs_end_to_end_and_writes_results(tmp_path: Path) -> None:
    argv = ["--reps", "1", "--mp-mib", "8", "--ifc-files", "3", "--timeout", "60"]
    code = flows.main([*argv, "--data", str(tmp_path / "data"), "--out", str(tmp_path / "out")])
    result = json.loads((tmp_path / "out" / "flows-latest.json").read_text())
    failed = [(s["case"], s["contender"], s["error"]) for s in result["samples"] if not s["ok"]]
    assert not failed
    assert code == 0
    assert all(s["gbps"] > 0 and s["rss_mib"] > 0 for s in result["samples"])
    rows = {(r["case"], r["contender"]): r for r in result["summary"]}
    assert set(rows) == {
        (case, who)
        for case, contenders in (
            ("mp-flow-0ms", (flows.ENGINE, flows.GUIDE)),
            ("mp-flow-50ms", (flows.ENGINE, flows.GUIDE)),
            ("speckle-500", (flows.ENGINE, flows.ONE_AT_A_TIME)),
        )
        for who in (c.name for c in contenders)
    }
    for row in rows.values():
        assert set(row) >= ROW_KEYS and row["runs"] == 1 and row["failures"] == 0, row

    guide = rows[("mp-flow-50ms", flows.GUIDE.name)]
    # the guide's steps: session, file, begin, one part URL per part, complete, commit
    assert guide["median_operations"] == 5 + guide["median_parts"] == 6
    # one after the other, each answered 50 ms later by the served sandbox (--control-latency)
    assert guide["median_control_seconds"] >= guide["median_operations"] * 0.05
    assert guide["median_seconds"] > guide["median_control_seconds"]
    assert guide["vs_no_latency"] > 0  # a ratio of two runs, whatever the machine's noise
    engine = rows[("mp-flow-50ms", flows.ENGINE.name)]
    assert engine["median_parts"] >= 1 and engine["median_operations"] >= 6
    assert engine["median_wall_seconds"] > engine["median_seconds"]  # the model wait on top
    (target,) = result["targets"]
    assert target["value"] == engine["vs_no_latency"] and target["goal"] == 0.8

    for who in (flows.ENGINE, flows.ONE_AT_A_TIME):
        speckle = rows[("speckle-500", who.name)]
        assert speckle["files"] == 3 and speckle["control_latency_ms"] == 50
        assert speckle["median_requests"] >= 3 * 4  # model, URL, ingestion, status per file
        assert speckle["median_rate_limited"] == 0  # three files stay within the burst
    table = flows.markdown(result["summary"])
    assert "8 MiB E57, control plane +50 ms" in table and "3 IFC files through Speckle" in table
