"""Target verdicts and tables of ``benchmarks.report``, from summary rows made by hand."""

from __future__ import annotations

from typing import Any

import pytest

from benchmarks.report import evaluate_targets, markdown


def _row(case: str, contender: str, gbps: float | None, **kw: Any) -> dict[str, Any]:
    row = {
        "case": case,
        "label": kw.pop("label", case),
        "contender": contender,
        "group": kw.pop("group", "engine" if contender.startswith("engine") else "peer"),
        "default_config": True,
        "hashing": True,
        "part_mib": None,
        "concurrency": None,
        "link_gbps": kw.pop("link", None),
        "wall": False,
        "runs": 3,
        "failures": 0 if gbps is not None else 3,
        "error": "" if gbps is not None else "exit 1",
        "median_gbps": gbps,
        "min_gbps": gbps and gbps * 0.9,
        "max_gbps": gbps and gbps * 1.1,
        "median_rss_mib": kw.get("rss", 40.0),
        "max_rss_mib": kw.pop("rss", 40.0),
    }
    assert not kw
    return row


ROWS = [
    _row("wan-30", "engine", 0.45, link=0.5),
    _row("wan-30", "AWS CRT (defaults)", 0.42, link=0.5),
    _row("wan-30", "s5cmd (defaults)", None, link=0.5),
    _row("mp-https", "engine", 0.9),
    _row("mp-https", "engine --data-loops 1 (one event loop)", 0.5),
    _row("mp-https", "boto3 tuned (matched, signing+checksums off)", 0.75),
    _row("rss-2g-http", "engine --concurrency 64", 1.0, rss=80.0),
    _row("rss-2g-https", "engine --concurrency 64", 0.5, rss=125.0),
]


def _by_name() -> dict[str, dict[str, Any]]:
    return {t["target"]: t for t in evaluate_targets(ROWS) if t["issue"] == 13}


def test_issue13_targets_are_ratios_of_medians_of_one_run() -> None:
    t = _by_name()
    crt = t["WAN 30 ms, defaults: engine / AWS CRT"]
    assert crt["value"] == pytest.approx(0.45 / 0.42) and crt["goal"] == 1.0 and crt["met"]
    link = t["WAN 30 ms, defaults: engine / link capacity"]
    assert link["value"] == pytest.approx(0.9) and link["met"]
    loops = t["HTTPS multipart: engine / engine on one loop"]
    assert loops["value"] == pytest.approx(1.8) and loops["met"]
    boto = t["HTTPS multipart: engine / boto3, hashing off"]
    assert boto["value"] == pytest.approx(1.2) and boto["goal"] == 1.3 and not boto["met"]
    rss = t["peak RSS, 2 GiB HTTP, concurrency 64: 100 MiB / engine peak"]
    assert rss["value"] == pytest.approx(1.25) and rss["met"]
    rss = t["peak RSS, 2 GiB HTTPS, concurrency 64: 100 MiB / engine peak"]
    assert rss["value"] == pytest.approx(0.8) and not rss["met"]  # a miss stays in the list


def test_a_target_whose_case_did_not_run_is_listed_as_not_measured() -> None:
    t = _by_name()
    for name in (
        "HTTP multipart: engine (MD5 on) / s5cmd",
        "peak RSS, 20 GiB HTTPS, concurrency 64: 100 MiB / engine peak",
    ):
        assert t[name]["value"] is None and not t[name]["met"]
        assert "not measured in this run" in t[name]["detail"]


def test_the_wan_table_gives_each_contenders_share_of_the_link() -> None:
    result = {
        "summary": ROWS,
        "machine": {"cpu": "cpu", "cores": 2, "python": "3.11", "kernel": "k"},
        "reps": 3,
        "targets": evaluate_targets(ROWS),
    }
    text = markdown(result)
    assert "Link capacity 0.500 GB/s (4 Gbit/s)" in text
    assert "| engine | 0.45 | 0.41–0.50 | 90% | 40 | 1.00× |" in text
    assert "| AWS CRT (defaults) | 0.42 | 0.38–0.46 | 84% | 40 | 1.07× |" in text
    assert "| s5cmd (defaults) | failed: exit 1 |" in text
    assert "| 13 | HTTP multipart: engine (MD5 on) / s5cmd | — | 1.5 | — |" in text
