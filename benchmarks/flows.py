"""``python -m benchmarks.flows [--quick]``: the platforms' whole flows, control plane included.

Every run is a child process against a served sandbox (``python -m engine.sandbox --discard
--control-latency S``: each GraphQL or REST request answered ``S`` seconds later, as a round trip
to the platform would be), interleaved and repeated like ``benchmarks.run``, with each child's
peak RSS (``benchmarks.run._PeakRSS``):

- ``mp-flow-0ms`` / ``mp-flow-50ms``: one generated E57 (512 MiB; 128 MiB quick) through
  Matterport's whole flow, with no and with 50 ms of control-plane latency: the engine at its
  defaults (``upload-engine import DIR --to matterport --json``) and the guide's part-by-part
  approach (``benchmarks.mp_guide``, 64 MiB parts). ``seconds`` runs from the child's spawn to
  the commit's answer (start-up included; the engine's ``committed`` event, the guide's own
  clock); GB/s is the file over that; ``wall`` adds the engine's wait for the model.
  ``vs_no_latency`` (50 ms rows): the contender's median GB/s at 50 ms over 0 ms (the issue's
  target: >= 0.8 for the engine).
- ``speckle-500``: 500 generated IFC files (4 to 100 KiB; 100 quick) through Speckle with 50 ms
  of control-plane latency and the public rate limit on (the sandbox's default, the real
  server's): the engine at its defaults against ``--files-at-once 1``, a fresh sandbox each (a
  full limiter), one repetition. ``seconds`` is the process wall (every ingestion awaited);
  the rows add the requests the sandbox answered and its 429s.

Rows: ``benchmarks.run.summarize``'s shape plus ``median_seconds``, ``median_wall_seconds``,
``control_latency_ms`` and the cases' counters; :func:`run` returns them, :func:`targets` gives
the issue's verdict in ``benchmarks.report``'s form.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import random
import select
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks.run import (
    Case,
    Contender,
    Sample,
    _PeakRSS,
    _warm,
    machine,
    precompile,
    summarize,
)

ROOT = Path(__file__).resolve().parent
DATA = ROOT / ".data"
RESULTS = ROOT / "results"
KiB = 1024
MiB = 1024 * KiB
PY = sys.executable
LATENCY = 0.05  # seconds: the issue's control-plane round trip
GUIDE_PART_MIB = 64  # the guide's parts: the engine's default part size, for a like start
ORG, PROJECT = "sandbox-org", "sandbox-project"
TOKENS = {
    "MATTERPORT_TOKEN_ID": "sandbox-token-id",
    "MATTERPORT_TOKEN_SECRET": "sandbox-token-secret",
    "SPECKLE_TOKEN": "sandbox-token",
}

ENGINE = Contender("engine", "flow", ("engine",), group="engine")
GUIDE = Contender("guide, part by part (requests)", "flow", ("guide",), group="peer", hashing=False)
ONE_AT_A_TIME = Contender(
    "engine, one file at a time (--files-at-once 1)",
    "flow",
    ("engine", "--files-at-once", "1"),
    group="engine",
    default_config=False,
)


@dataclass(frozen=True)
class Flow:
    """A case of this module: ``benchmarks.run``'s ``Case`` and what the sandbox adds."""

    case: Case
    platform: str  # matterport | speckle
    latency: float  # seconds per control-plane request
    files: int


# ------------------------------------------------------------------------------------------
# data
def make_data(root: Path, mp_size: int, ifc_files: int) -> dict[str, Path]:
    """One E57 of ``mp_size`` bytes and ``ifc_files`` IFC files, reused while they fit."""
    from engine.sandbox.e57 import write_sample_e57
    from engine.sandbox.ifc import write_sample_ifc

    e57_dir = root / f"flows-e57-{mp_size}"
    e57 = e57_dir / "scan.e57"
    if not (e57.exists() and e57.stat().st_size == mp_size):
        e57_dir.mkdir(parents=True, exist_ok=True)
        write_sample_e57(e57, mp_size, seed=13)
    ifc_dir = root / f"flows-ifc-{ifc_files}"
    ifc_dir.mkdir(parents=True, exist_ok=True)
    sizes = random.Random(7)
    wanted = set()
    for i in range(ifc_files):
        path = ifc_dir / f"model-{i:04d}.ifc"
        wanted.add(path.name)
        size = sizes.randint(4 * KiB, 100 * KiB)
        if not (path.exists() and path.stat().st_size == size):
            write_sample_ifc(path, size, seed=i)
    for extra in ifc_dir.iterdir():
        if extra.name not in wanted:
            extra.unlink()
    _warm([e57, *sorted(ifc_dir.iterdir())])
    return {"e57": e57_dir, "ifc": ifc_dir}


def build_flows(data: dict[str, Path]) -> list[Flow]:
    e57_size = sum(p.stat().st_size for p in data["e57"].iterdir())
    ifc = sorted(data["ifc"].iterdir())
    ifc_size = sum(p.stat().st_size for p in ifc)
    flows = []
    for ms in (0, round(LATENCY * 1000)):
        case = Case(
            id=f"mp-flow-{ms}ms",
            label=f"Matterport flow, {e57_size // MiB} MiB E57, control plane +{ms} ms",
            mode="flow",
            scheme="http",
            path=str(data["e57"]),
            part_mib=GUIDE_PART_MIB,
            concurrency=0,
            contenders=(ENGINE, GUIDE),
            size=e57_size,
        )
        flows.append(Flow(case, "matterport", ms / 1000, 1))
    case = Case(
        id="speckle-500",
        label=f"{len(ifc)} IFC files through Speckle, control plane +{round(LATENCY * 1000)} ms, "
        "rate limit on",
        mode="flow",
        scheme="http",
        path=str(data["ifc"]),
        part_mib=0,
        concurrency=0,
        contenders=(ENGINE, ONE_AT_A_TIME),
        reps=1,  # one repetition: 500 files one at a time take minutes
        size=ifc_size,
    )
    flows.append(Flow(case, "speckle", LATENCY, len(ifc)))
    return flows


# ------------------------------------------------------------------------------------------
# one run
def stats(url: str) -> dict[str, Any]:
    """A served sandbox's counters."""
    with urllib.request.urlopen(f"{url}/_sandbox/stats", timeout=10) as r:
        counters: dict[str, Any] = json.loads(r.read())
    return counters


@contextmanager
def served(latency: float, env: dict[str, str]) -> Iterator[str]:
    """``python -m engine.sandbox --port 0 --discard --control-latency S``: its URL."""
    argv = [PY, "-m", "engine.sandbox", "--port", "0", "--discard"]
    argv += ["--control-latency", str(latency)]
    out = subprocess.PIPE
    with subprocess.Popen(argv, stdout=out, stderr=subprocess.DEVNULL, env=env, text=True) as proc:
        assert proc.stdout is not None
        try:
            ready, _, _ = select.select([proc.stdout], [], [], 30)
            line = proc.stdout.readline() if ready else ""
            if " listening on " not in line:
                raise RuntimeError(f"the sandbox did not start: {line!r}")
            yield line.split(" listening on ", 1)[1].split()[0]
        finally:  # SIGTERM stops the sandbox cleanly; leaving the Popen block waits for it
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
            proc.kill()  # a no-op once it has exited


def contender_argv(flow: Flow, who: Contender, url: str, state: Path) -> list[str]:
    path = flow.case.path
    if who.args[0] == "guide":
        scan = str(next(Path(path).iterdir()))
        endpoint = f"{url}/api/import/graph"
        guide = [PY, "-m", "benchmarks.mp_guide", "--endpoint", endpoint, "--organization", ORG]
        return [*guide, "--file", scan, "--part-size", str(GUIDE_PART_MIB)]
    if flow.platform == "matterport":
        to = ["--to", "matterport", "--organization", ORG, "--endpoint", f"{url}/api/import/graph"]
    else:
        to = ["--to", "speckle", "--project", PROJECT, "--server", url]
    engine = [PY, "-m", "engine", "import", path, *to, "--state-dir", str(state), "--json"]
    return [*engine, *who.args[1:]]


def _spawn(argv: list[str], env: dict[str, str], timeout: float) -> tuple[int, str, str, float]:
    """Run ``argv`` to its end (killed after ``timeout``): exit code, stdout, stderr, peak RSS
    in MiB."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(argv, stdout=out, stderr=err, env=env, cwd=ROOT.parent)
        peak = _PeakRSS(proc.pid)
        killer = threading.Timer(timeout, proc.kill)
        killer.start()
        try:
            code = proc.wait()
        finally:
            killer.cancel()
            peak.stop()
        out.seek(0)
        err.seek(0)
        text = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    return code, text[0], text[1], peak.kib / 1024


def sandboxes(flow: Flow, env: dict[str, str]) -> Iterator[tuple[Contender, str]]:
    """Each contender of ``flow`` with its served sandbox: a fresh one each for Speckle (the
    rate limiter starts full for everyone), one for both for Matterport (no limiter)."""
    if flow.platform == "speckle":
        for who in flow.case.contenders:
            with served(flow.latency, env) as url:
                yield who, url
        return
    with served(flow.latency, env) as url:
        for who in flow.case.contenders:
            yield who, url


def run_one(flow: Flow, who: Contender, url: str, env: dict[str, str], timeout: float) -> Sample:
    s = Sample(flow.case.id, who.name, 0, ok=False)
    with tempfile.TemporaryDirectory(prefix="flows-") as state:
        before = stats(url)
        spawned = time.time()
        code, out, err, s.rss_mib = _spawn(
            contender_argv(flow, who, url, Path(state)), env, timeout
        )
        s.wall = time.time() - spawned
        after = stats(url)
    if code != 0:
        lines = err.strip().splitlines() or out.strip().splitlines() or [f"exit {code}"]
        s.error = f"killed after {timeout:g} s" if s.wall >= timeout else lines[-1][:300]
        return s
    try:
        s.extra = _measure(flow, who, out, spawned, s.wall, before, after)
    except (ValueError, KeyError, IndexError) as exc:
        s.error = f"{type(exc).__name__}: {exc}"[:300]
        return s
    s.seconds, s.bytes = s.extra.pop("seconds"), flow.case.size
    s.seen_bytes = after["bytes_received"] - before["bytes_received"]
    if s.seen_bytes < s.bytes:
        s.error = f"the sandbox saw {s.seen_bytes} body bytes, expected >= {s.bytes}"
        return s
    s.gbps = s.bytes / s.seconds / 1e9 if s.seconds > 0 else 0.0
    s.ok = True
    return s


def _records(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def _measure(
    flow: Flow,
    who: Contender,
    out: str,
    spawned: float,
    wall: float,
    before: dict[str, Any],
    after: dict[str, Any],
) -> dict[str, Any]:
    """What the run measured, ``seconds`` first; ``ValueError`` if it did not do the job."""
    plane = flow.platform
    was, now = before["planes"][plane], after["planes"][plane]
    records = _records(out)
    if who.args[0] == "guide":
        (done,) = records
        m = {"seconds": done["committed_at"] - spawned, "parts": done["parts"]}
        m["control_seconds"] = done["control_seconds"]
    else:
        result = records[-1]
        if result.get("type") != "Result" or result["summary"]["ok"] != flow.files:
            raise ValueError(f"the import did not deliver every file: {result.get('summary')}")
        if plane == "speckle":
            return _speckle(flow, wall, was, now)
        (commit,) = (r for r in records if r.get("message", "").endswith(" committed"))
        (parts,) = {r["parts"] for r in records if r["type"] == "FileStarted"}
        committed = datetime.datetime.fromisoformat(commit["ts"]).timestamp()
        m = {"seconds": committed - spawned, "parts": parts}
        m["model_wait_seconds"] = wall - m["seconds"]
    if now["committed"] - was["committed"] != 1:
        raise ValueError("the sandbox holds no new committed import session")
    m["operations"] = sum(now["calls"].values()) - sum(was["calls"].values())
    return m


def _speckle(flow: Flow, wall: float, was: dict[str, Any], now: dict[str, Any]) -> dict[str, Any]:
    done = now["ingestions"].get("success", 0) - was["ingestions"].get("success", 0)
    if done != flow.files:
        raise ValueError(f"{done} of {flow.files} ingestions succeeded on the sandbox")
    return {
        "seconds": wall,
        "files_per_second": flow.files / wall,
        "requests": now["requests"] - was["requests"],
        "rate_limited": now["rate_limited"] - was["rate_limited"],
    }


# ------------------------------------------------------------------------------------------
# the whole run
def child_env(home: Path) -> dict[str, str]:
    """The children's environment: this checkout first, the sandbox's tokens, no user config."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("UPLOAD_ENGINE_", "MATTERPORT_", "SPECKLE_"))
    }
    env.update(TOKENS, PYTHONPATH=str(ROOT.parent))
    env.update(XDG_CONFIG_HOME=str(home / "config"), XDG_STATE_HOME=str(home / "state"))
    precompile(env, home)  # compiled modules kept, as an installed package has them
    return env


def run(quick: bool, reps: int, **options: Any) -> list[dict[str, Any]]:
    """Every case, ``reps`` times, interleaved; rows as :func:`benchmarks.run.summarize`'s plus
    this module's keys (``options``: :func:`measure`'s)."""
    return rows_of(*measure(quick, reps, **options))


def measure(
    quick: bool,
    reps: int,
    *,
    data: Path = DATA,
    mp_size: int | None = None,
    ifc_files: int | None = None,
    timeout: float = 900.0,
    log: bool = True,
) -> tuple[list[Sample], list[Flow]]:
    """The samples of every case and the cases. ``mp_size`` / ``ifc_files`` override the
    sizes (the smoke test's); each platform's cases are interleaved rep by rep."""
    mp_size = mp_size or (128 if quick else 512) * MiB
    flows = build_flows(make_data(data, mp_size, ifc_files or (100 if quick else 500)))
    samples: list[Sample] = []
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="flows-home-") as home:
        env = child_env(Path(home))
        for group in ([f for f in flows if f.platform == p] for p in ("matterport", "speckle")):
            for rep in range(reps):
                for flow in (f for f in group if rep < (f.case.reps or reps)):
                    for who, url in sandboxes(flow, env):
                        s = run_one(flow, who, url, env, timeout)
                        s.rep = rep
                        samples.append(s)
                        if log:
                            _log(s, time.time() - started)
    return samples, flows


def _log(s: Sample, at: float) -> None:
    state = f"{s.gbps:7.3f} GB/s {s.seconds:7.2f} s {s.rss_mib:6.1f} MiB" if s.ok else s.error
    print(f"[{at:6.0f}s] {s.case:13} #{s.rep} {s.contender:48} {state}", flush=True)


def _median(samples: Sequence[Sample], key: str) -> float | None:
    values = [s.extra[key] for s in samples if s.ok and key in s.extra]
    return statistics.median(values) if values else None


def rows_of(samples: Sequence[Sample], flows: Sequence[Flow]) -> list[dict[str, Any]]:
    rows = summarize(samples, [f.case for f in flows])
    by_case = {f.case.id: f for f in flows}
    for row in rows:
        flow = by_case[row["case"]]
        mine = [s for s in samples if s.case == row["case"] and s.contender == row["contender"]]
        ok = [s for s in mine if s.ok]
        guide = row["contender"] == GUIDE.name
        row["part_mib"] = GUIDE_PART_MIB if guide else None  # None: the engine's own choice
        row["concurrency"] = 1 if guide else None  # None: the engine's default
        row["control_latency_ms"] = round(flow.latency * 1000)
        row["files"] = flow.files
        row["median_seconds"] = statistics.median(s.seconds for s in ok) if ok else None
        row["median_wall_seconds"] = statistics.median(s.wall for s in ok) if ok else None
        keys = ("parts", "operations", "control_seconds", "model_wait_seconds", "requests")
        for key in (*keys, "rate_limited", "files_per_second"):
            if any(key in s.extra for s in ok):
                row[f"median_{key}"] = _median(ok, key)
    no_latency = {r["contender"]: r for r in rows if r["case"] == "mp-flow-0ms"}
    for row in (r for r in rows if r["case"].startswith("mp-flow-") and r["control_latency_ms"]):
        base = no_latency.get(row["contender"])
        if base and base["median_gbps"] and row["median_gbps"]:
            row["vs_no_latency"] = row["median_gbps"] / base["median_gbps"]
    return rows


def targets(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's target, in ``benchmarks.report``'s form: the engine's Matterport flow at
    50 ms of control-plane latency keeps >= 0.8 of its throughput with none."""
    ms = round(LATENCY * 1000)
    row = next(
        (r for r in rows if r["case"] == f"mp-flow-{ms}ms" and r["contender"] == ENGINE.name), None
    )
    if row is None:
        return []
    value = row.get("vs_no_latency")
    return [
        {
            "target": f"Matterport flow, +{ms} ms control plane: engine / engine with none",
            "value": value,
            "goal": 0.8,
            "met": value is not None and value >= 0.8,
            "detail": f"{row['label']}: {row['median_gbps'] or 0:.3f} GB/s, "
            f"{row['median_seconds'] or 0:.2f} s to the commit",
        }
    ]


_COLUMNS = {  # the extra columns of each case's table: header, row key, format
    "mp": (
        ("parts", "median_parts", ".0f"),
        ("GraphQL calls", "median_operations", ".0f"),
        ("vs 0 ms", "vs_no_latency", ".2f"),
    ),
    "speckle": (
        ("requests", "median_requests", ".0f"),
        ("429s", "median_rate_limited", ".0f"),
        ("files/s", "median_files_per_second", ".1f"),
    ),
}


def markdown(rows: Sequence[dict[str, Any]]) -> str:
    """One table per case, with this module's columns, then the target."""

    def f(v: Any, spec: str = ".2f") -> str:
        return "—" if v is None else format(v, spec)

    lines: list[str] = []
    for case in dict.fromkeys(r["case"] for r in rows):
        mine = [r for r in rows if r["case"] == case]
        columns = _COLUMNS[case.split("-")[0]]
        head = " | ".join(c[0] for c in columns)
        lines += [f"#### {mine[0]['label']}", ""]
        lines.append(f"| contender | median GB/s | seconds | wall s | peak RSS MiB | {head} |")
        lines.append("| --- " + "| ---: " * (4 + len(columns)) + "|")
        for r in mine:
            if r["median_gbps"] is None:
                lines.append(f"| {r['contender']} | failed: {r['error'][:80]} |")
                continue
            tail = " | ".join(f(r.get(key), spec) for _, key, spec in columns)
            lines.append(
                f"| {r['contender']} | {f(r['median_gbps'], '.3f')} | {f(r['median_seconds'])} | "
                f"{f(r['median_wall_seconds'])} | {f(r['max_rss_mib'], '.0f')} | {tail} |"
            )
        lines.append("")
    for t in targets(rows):
        met = "met" if t["met"] else "NOT met"
        lines.append(f"Target: {t['target']} = {f(t['value'])} (goal {t['goal']:g}, {met}).")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="The platforms' flows with control-plane latency")
    p.add_argument("--quick", action="store_true", help="128 MiB E57, 100 IFC files, 1 rep")
    p.add_argument("--reps", type=int, default=None, help="repetitions (default 3; quick 1)")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds per run")
    p.add_argument("--mp-mib", type=int, default=None, help="E57 size (default 512; quick 128)")
    p.add_argument("--ifc-files", type=int, default=None, help="IFC files (default 500; quick 100)")
    p.add_argument("--data", type=Path, default=DATA, help="where the generated files are kept")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    reps = args.reps or (1 if args.quick else 3)
    started = time.time()
    mp_size = args.mp_mib * MiB if args.mp_mib else None
    options = {"data": args.data, "mp_size": mp_size, "ifc_files": args.ifc_files}
    samples, flows = measure(args.quick, reps, timeout=args.timeout, **options)
    rows = rows_of(samples, flows)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    result = {"timestamp": stamp, "machine": machine(), "quick": args.quick, "reps": reps}
    result.update(seconds=time.time() - started, summary=rows, targets=targets(rows))
    result["samples"] = [asdict(s) for s in samples]  # run.py's result file, its own cases
    args.out.mkdir(parents=True, exist_ok=True)
    for name in (f"flows-{stamp}.json", "flows-latest.json"):
        (args.out / name).write_text(json.dumps(result, indent=1))
    print(f"\n{markdown(rows)}")
    return 0 if all(r["failures"] == 0 for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
