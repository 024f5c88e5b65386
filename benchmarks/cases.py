"""The matrix of ``make bench``: which contenders race in which case (``build_cases``).

``benchmarks.run`` runs it. A case names its file, mode, scheme, the part size and concurrency
that matched contenders take (``None``: every contender at its own defaults), and, for the WAN
cases, the shape of the endpoint's side (``benchmarks.shape``) and timing by process wall.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, replace
from pathlib import Path

from benchmarks.cluster import cases as cluster_cases
from benchmarks.shape import Shape

__all__ = ["WAN30", "WAN80", "Case", "Contender", "build_cases"]

MiB = 1024 * 1024
GiB = 1024 * MiB


@dataclass(frozen=True)
class Contender:
    """One way of uploading: a Python contender (``benchmarks.contenders``) or a command."""

    name: str
    kind: str  # "py" or "cmd"
    args: tuple[str, ...] = ()  # extra args for a py contender, or the tool name for cmd
    group: str = "peer"  # "engine", "peer", "ceiling"
    default_config: bool = True  # a peer as users run it (no tuning)
    hashing: bool = True  # the contender hashes/checks its payload
    case_knobs: bool = True  # gets the case's part size and concurrency (False: its defaults)


@dataclass(frozen=True)
class Case:
    id: str
    label: str
    mode: str  # multipart | single | bulk
    scheme: str  # http | https
    path: str  # file or directory
    part_mib: int | None  # None: each contender's default part size
    concurrency: int | None  # None: each contender's default (the engine's: adaptive)
    contenders: tuple[Contender, ...]
    faults: bool = False
    reps: int | None = None  # caps the global repetition count
    size: int = 0  # bytes per run
    shape: Shape | None = None  # the endpoint's WAN shape (benchmarks.shape)
    wall: bool = False  # throughput from each process's wall time, start-up included
    md5_etags: bool = False  # the endpoint answers real MD5 ETags (``--hash``): checks check

    @property
    def link_gbps(self) -> float | None:
        """The shaped link's capacity in GB/s (10^9 bytes/s), if the case has one."""
        return self.shape.link_rate / 8e9 if self.shape and self.shape.link_rate else None


# ------------------------------------------------------------------------------------------
# the matrix
def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


#: the WAN shapes (benchmarks.shape): a round trip per response and per new connection, a
#: rate cap per connection and one for the link. wan-30 is the issue's path.
WAN30 = Shape(delay_ms=30, connect_delay_ms=30, conn_rate=400e6, link_rate=4e9)
#: 80 ms and 100 Mbit/s per connection. A 1 Gbit/s link needs 10 such connections (the old
#: default of 8 fills 80% of it, and an adaptive engine must go past it), and with 512 MiB the
#: case stays under 2 minutes: s5cmd's defaults (5 connections) take about 12 s a run, the
#: others 4-6 s, 3 repetitions. A 4 Gbit/s link would need 40 connections and 1 GiB about
#: 25 s a run from the peers that stop at 5-10.
WAN80 = Shape(delay_ms=80, connect_delay_ms=80, conn_rate=100e6, link_rate=1e9)


def _engine(name: str, *extra: str, knobs: bool = False) -> Contender:
    """The engine at its defaults (adaptive concurrency, default part size) plus ``extra``;
    ``knobs``: it takes the case's part size and concurrency instead."""
    return Contender(name, "py", ("engine", *extra), group="engine", case_knobs=knobs)


def _size_label(n: int) -> str:
    return f"{n // GiB} GiB" if n >= GiB and n % GiB == 0 else f"{n // MiB} MiB"


def _tuned(name: str, kind: str, args: tuple[str, ...]) -> Contender:
    """A peer tuned for the race: the case's part size and concurrency, no hashing."""
    return Contender(name, kind, args, default_config=False, hashing=False)


def _peers() -> dict[str, Contender]:
    """Every contender of the matrix, by a short key."""
    c = Contender
    return {
        "eng": _engine("engine", "--verify", "on"),
        "eng_off": _engine("engine (ETag check off)", "--verify", "off"),
        "eng_s3": _engine("engine via S3Target", "--target", "s3", "--verify", "on"),
        "eng_uv": _engine("engine (uvloop)", "--verify", "on", "--loop", "uvloop"),
        "eng_8": _engine("engine --concurrency 8 (the old default)", "--concurrency", "8"),
        "eng_1": _engine("engine --data-loops 1 (one event loop)", "--data-loops", "1"),
        "eng_2": _engine("engine --data-loops 2 (two event loops)", "--data-loops", "2"),
        "eng_64": _engine("engine --concurrency 64", "--concurrency", "64"),
        "ceiling": c("sendfile ceiling", "py", ("sendfile",), group="ceiling", hashing=False),
        "req": c("requests, part by part (Matterport example)", "py", ("requests",), hashing=False),
        "b3": c(
            "boto3 upload_file (defaults)",
            "py",
            ("boto3", "--variant", "default"),
            case_knobs=False,
        ),
        "b3t": _tuned(
            "boto3 tuned (matched, signing+checksums off)", "py", ("boto3", "--variant", "tuned")
        ),
        "crt": c("AWS CRT (defaults)", "py", ("crt", "--variant", "default"), case_knobs=False),
        "crtn": _tuned("AWS CRT (matched, checksums off)", "py", ("crt", "--variant", "nocheck")),
        "s5": c("s5cmd (defaults)", "cmd", ("s5cmd",)),
        "curl": c("curl -T", "cmd", ("curl",), hashing=False),
    }


def _loopback_cases(data: dict[str, Path], k: dict[str, Contender]) -> list[Case]:
    """The ceiling checks: an unshaped loopback endpoint, HTTP and HTTPS."""
    big, bulk = str(data["big"]), str(data["bulk"])
    size = _size_label(data["big"].stat().st_size)
    n_bulk = len(list(data["bulk"].iterdir()))
    # uvloop is an extra (in `bench`): without it the engine runs on the stock loop only
    uv = [k["eng_uv"]] if _has("uvloop") else []
    # s5cmd matched and unsigned measured as its defaults (0.68 and 0.71 GB/s both, multipart
    # and bulk, 2026-11-23): left out, like CRT's and s5cmd's matched variants over HTTPS
    # (0.70 vs 0.79, 0.55 vs 0.55 GB/s), to keep the full run under 20 minutes
    mp = ("eng", "eng_off", "eng_s3", "ceiling", "req", "b3", "b3t", "crt", "crtn", "s5")

    def pick(*keys: str) -> tuple[Contender, ...]:
        return tuple(k[x] for x in keys)

    return [
        Case("mp-http", f"{size} multipart, HTTP", "multipart", "http", big, 16, 8, pick(*mp)),
        Case(
            "mp-http-md5",
            f"{size} multipart, HTTP, MD5 ETags",
            "multipart",
            "http",
            big,
            16,
            8,
            # the endpoint hashes too: the engine's ETag check really compares every part
            # (against "bench-N" ETags it sees nothing to check and stops hashing, as it does
            # against any store whose ETags are not MD5s)
            pick("eng", "eng_off", "b3t", "crt", "s5"),
            md5_etags=True,
        ),
        Case(
            "single-http",
            f"{size} single PUT, HTTP",
            "single",
            "http",
            big,
            16,
            1,
            pick("eng", "eng_off", "ceiling", "curl", "b3t"),
        ),
        Case(
            "bulk-http",
            f"{n_bulk} x 8 MiB, HTTP",
            "bulk",
            "http",
            bulk,
            8,
            8,
            (k["eng"], *uv, *pick("eng_off", "ceiling", "b3t", "crtn", "s5")),
        ),
        Case(
            "faults-http",
            f"{size} multipart, 5% 503s, HTTP",
            "multipart",
            "http",
            big,
            16,
            8,
            pick("eng", "eng_off", "b3t", "crt", "s5"),
            faults=True,
        ),
        Case(
            "mp-https",
            f"{size} multipart, HTTPS",
            "multipart",
            "https",
            big,
            16,
            8,
            pick("eng", "eng_1", "eng_2", "eng_off", "req", "b3", "b3t", "crt", "s5"),
        ),
        Case(
            "single-https",
            f"{size} single PUT, HTTPS",
            "single",
            "https",
            big,
            16,
            1,
            pick("eng", "eng_1", "eng_2", "eng_off", "curl"),
        ),
    ]


def _wan_cases(data: dict[str, Path], k: dict[str, Contender]) -> list[Case]:
    """Every tool at its defaults over a shaped path, timed by process wall; beside them
    what the shaped endpoint lets through on this machine (sendfile, 32 connections)."""
    ceiling = Contender(
        "sendfile ceiling (32 connections)",
        "py",
        ("sendfile", "--part-size", "16", "--concurrency", "32"),
        group="ceiling",
        hashing=False,
        case_knobs=False,
    )
    who = (*(k[x] for x in ("eng", "eng_8", "crt", "b3", "s5")), ceiling)
    out = []
    for cid, shape, path in (("wan-30", WAN30, data["wan30"]), ("wan-80", WAN80, data["wan80"])):
        label = (
            f"{_size_label(path.stat().st_size)} multipart, WAN: {shape.delay_ms:g} ms round "
            f"trip, {shape.conn_rate / 1e6:g} Mbit/s per connection, "
            f"{shape.link_rate / 1e9:g} Gbit/s link"
        )
        out.append(
            Case(
                cid, label, "multipart", "http", str(path), None, None, who, shape=shape, wall=True
            )
        )
    return out


def _memory_cases(data: dict[str, Path], k: dict[str, Contender], quick: bool) -> list[Case]:
    """Peak RSS at concurrency 64, HTTP and HTTPS; 20 GiB (a sparse file) in the full run."""
    files = [("2g", data["big"])] + ([] if quick else [("20g", data["sparse"])])
    out = []
    for tag, path in files:
        for scheme in ("http", "https"):
            size = 20 * GiB if tag == "20g" else path.stat().st_size
            out.append(
                Case(
                    f"rss-{tag}-{scheme}",
                    f"{_size_label(size)} multipart, concurrency 64, {scheme.upper()} (peak RSS)",
                    "multipart",
                    scheme,
                    str(path),
                    None,
                    64,
                    (k["eng_64"],),
                    reps=1 if tag == "20g" else None,
                )
            )
    return out


def _sweep_cases(data: dict[str, Path], quick: bool) -> list[Case]:
    """The engine with fixed part sizes and concurrency (one repetition: context, no target)."""
    eng = _engine("engine", "--verify", "on", knobs=True)
    return [
        Case(
            f"sweep-p{part}-c{conc}",
            f"engine sweep: part {part} MiB, concurrency {conc}",
            "multipart",
            "http",
            str(data["big"]),
            part,
            conc,
            (eng,),
            reps=1,
        )
        for part in (16, 64)
        for conc in (4, 16, 64)
    ]


def _path_size(path: str) -> int:
    p = Path(path)
    return sum(f.stat().st_size for f in p.iterdir()) if p.is_dir() else p.stat().st_size


def build_cases(data: dict[str, Path], quick: bool) -> list[Case]:
    k = _peers()
    cases = _loopback_cases(data, k) + _wan_cases(data, k)
    cases += _memory_cases(data, k, quick) + _sweep_cases(data, quick)
    # benchmarks/cluster.py, at most 2 repetitions: 3 took 6 of the full run's minutes
    cases += [replace(c, reps=2) for c in cluster_cases(Contender, Case, str(data["big"]))]
    # Issue 13 (the lead): the case groups of benchmarks/flows.py and benchmarks/startup.py go
    # here, each a function like cluster_cases that returns Case values; their targets go
    # into benchmarks/report.py (TARGET_GROUPS) and their plots into benchmarks/run.py (PLOTS).
    return [replace(c, size=_path_size(c.path)) for c in cases]
