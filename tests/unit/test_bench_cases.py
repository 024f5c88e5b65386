"""The benchmark matrix (``benchmarks.cases``) and the command lines it gives each contender."""

from __future__ import annotations

from pathlib import Path

from benchmarks.cases import WAN30, WAN80, Case, build_cases
from benchmarks.run import contender_argv


def _data(tmp_path: Path) -> dict[str, Path]:
    bulk = tmp_path / "bulk"
    bulk.mkdir(exist_ok=True)
    files = {"big": 3000, "wan30": 2000, "wan80": 1000, "sparse": 500}
    out = {name: tmp_path / f"{name}.bin" for name in files}
    for name, size in files.items():
        out[name].write_bytes(bytes(size))
    for i in range(3):
        (bulk / f"scan-{i}.bin").write_bytes(bytes(100))
    return {**out, "bulk": bulk}


def _case(cases: list[Case], cid: str) -> Case:
    return next(c for c in cases if c.id == cid)


def _argv(case: Case, contender: str) -> list[str]:
    who = next(c for c in case.contenders if c.name == contender)
    return contender_argv(who, case, "http://127.0.0.1:1", None)


def test_wan_cases_run_every_tool_at_its_defaults_timed_by_wall(tmp_path: Path) -> None:
    cases = build_cases(_data(tmp_path), quick=False)
    wan30, wan80 = _case(cases, "wan-30"), _case(cases, "wan-80")
    assert (wan30.shape, wan80.shape) == (WAN30, WAN80)
    assert wan30.wall and wan80.wall
    assert wan30.size == 2000 and wan80.size == 1000  # their own files
    assert wan30.link_gbps == 0.5 and wan80.link_gbps == 0.125
    names = {c.name for c in wan30.contenders if c.group != "ceiling"}
    assert {"engine", "AWS CRT (defaults)", "boto3 upload_file (defaults)"} <= names
    assert {"s5cmd (defaults)", "engine --concurrency 8 (the old default)"} <= names
    for name in names - {"s5cmd (defaults)"}:  # py contenders: no case knobs at all
        argv = _argv(wan30, name)
        assert "--part-size" not in argv
        if name.startswith("engine --concurrency 8"):
            assert argv[-2:] == ["--concurrency", "8"]
        else:
            assert "--concurrency" not in argv


def test_matched_contenders_take_the_case_knobs_and_engines_their_defaults(
    tmp_path: Path,
) -> None:
    cases = build_cases(_data(tmp_path), quick=False)
    mp = _case(cases, "mp-https")
    tuned = _argv(mp, "boto3 tuned (matched, signing+checksums off)")
    assert tuned[tuned.index("--part-size") + 1] == "16"
    assert tuned[tuned.index("--concurrency") + 1] == "8"
    engine = _argv(mp, "engine")
    assert "--concurrency" not in engine and "--part-size" not in engine
    one_loop = _argv(mp, "engine --data-loops 1 (one event loop)")
    assert one_loop[-2:] == ["--data-loops", "1"] and "--concurrency" not in one_loop
    sweep = _case(cases, "sweep-p64-c16")
    argv = _argv(sweep, "engine")
    assert argv[argv.index("--part-size") + 1] == "64"
    assert argv[argv.index("--concurrency") + 1] == "16"


def test_memory_cases_run_at_concurrency_64_over_http_and_https(tmp_path: Path) -> None:
    full = build_cases(_data(tmp_path), quick=False)
    rss = {c.id: c for c in full if c.id.startswith("rss-")}
    assert set(rss) == {"rss-2g-http", "rss-2g-https", "rss-20g-http", "rss-20g-https"}
    for case in rss.values():
        (who,) = case.contenders
        assert _argv(case, who.name)[-2:] == ["--concurrency", "64"]
    assert rss["rss-20g-https"].reps == 1 and rss["rss-20g-https"].scheme == "https"
    quick = build_cases(_data(tmp_path), quick=True)  # no 20 GiB file in a quick run
    assert {c.id for c in quick if c.id.startswith("rss-")} == {"rss-2g-http", "rss-2g-https"}
