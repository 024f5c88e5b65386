"""Chaos: seeded fault schedules on the blob store and on both control planes.

Every run that is meant to survive must deliver each file byte-identical (the sandbox's MD5 of
what it stored equals the source's) with no part tried more than ``max_attempts`` times; every
permanent fault (scheduled on every attempt) must end in one clear error naming the part.

Fault kinds on the blob store: 500/502/503/504, ``SlowDown``, 429 with ``Retry-After``,
``RequestTimeout``, connection resets mid-body, stalls past the client's stall timeout, expired
URLs and wrong ETags. On GraphQL: Matterport ``error.internal`` (random rate and named
operations) and Speckle HTTP 429 with ``Retry-After``. The module prints a ledger of faults
injected and survived at the end (``pytest -s tests/functional/test_chaos.py`` shows it).
"""

from __future__ import annotations

import functools
import hashlib
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, ClassVar

import anyio
import orjson
import pytest

from engine import (
    Event,
    KiB,
    MiB,
    PartRetry,
    RetriesExhaustedError,
    ServiceError,
    UploadConfig,
    Uploader,
)
from engine.cli import main
from engine.cli.destinations import sandbox_target
from engine.models import FileInfo
from engine.providers.matterport import Matterport, MatterportCredentials
from engine.providers.speckle import Speckle, SpeckleCredentials
from engine.sandbox import matterport as mp_module
from engine.sandbox import server as server_module
from engine.sandbox import speckle as sp_module
from engine.sandbox.e57 import write_sample_e57
from engine.sandbox.faults import KINDS, FaultPlan
from engine.sandbox.ifc import write_sample_ifc
from engine.sandbox.matterport import MatterportPlane, MatterportSandboxConfig
from engine.sandbox.server import Sandbox, SandboxConfig
from engine.sandbox.speckle import SpecklePlane, SpeckleSandboxConfig

PART = 256 * KiB
MAX_ATTEMPTS = 8
STALL_TIMEOUT = 0.25  # seconds the client waits on a PUT making no progress
SEEDS = [1, 2, 3, 4]
#: every blob fault kind at once: about half of first attempts fail (rates drawn for the first
#: three attempts of each part, so every part succeeds by its fourth)
RATES = {
    "500": 0.04,
    "502": 0.04,
    "503": 0.04,
    "504": 0.04,
    "slowdown": 0.04,
    "throttle": 0.05,
    "request_timeout": 0.04,
    "reset": 0.06,
    "stall": 0.03,
    "expired": 0.06,
    "bad_etag": 0.06,
}
CREDENTIALS = MatterportCredentials("sandbox-token-id", "sandbox-token-secret")

# ---- the ledger ----------------------------------------------------------------------------------

INJECTED: Counter[str] = Counter()  # every fault injected, by kind
SURVIVED: Counter[str] = Counter()  # of those, in runs that delivered every file intact
PERMANENT: Counter[str] = Counter()  # runs with a permanent fault that ended in a clear error


def record(faults: Counter[str], *, survived: bool) -> None:
    INJECTED.update(faults)
    if survived:
        SURVIVED.update(faults)


def blob_faults(sb: Sandbox) -> Counter[str]:
    return Counter({f"blob:{k}": n for k, n in sb.store.stats()["faults"].items()})


def plane_faults(sb: Sandbox) -> Counter[str]:
    out: Counter[str] = Counter()
    for plane in sb.planes:
        if isinstance(plane, MatterportPlane):
            injected = plane.stats()["injected_faults"]
            out["graphql:matterport error.internal"] += sum(injected.values())
        if isinstance(plane, SpecklePlane):
            out["graphql:speckle 429"] += plane.stats()["rate_limited"]
    return +out


@pytest.fixture(scope="module", autouse=True)
def ledger(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    lines = ["", "chaos ledger: fault kind: injected / survived (runs that delivered every file)"]
    for kind in sorted(INJECTED):
        lines.append(f"  {kind:32} {INJECTED[kind]:5} / {SURVIVED[kind]:5}")
    lines.append(
        f"  total                            {sum(INJECTED.values()):5} / "
        f"{sum(SURVIVED.values()):5}"
    )
    lines.append("permanent faults ending in one clear error:")
    for kind in sorted(PERMANENT):
        lines.append(f"  {kind:32} {PERMANENT[kind]:5}")
    capture = request.config.pluginmanager.getplugin("capturemanager")
    text = "\n".join(lines)
    if capture is not None:
        with capture.global_and_fixture_disabled():
            print(text)
    else:
        print(text)


# ---- helpers -------------------------------------------------------------------------------------


def md5_file(path: Path) -> str:
    h = hashlib.md5()
    with path.open("rb") as f:
        while chunk := f.read(MiB):
            h.update(chunk)
    return h.hexdigest()


def config(**kw: Any) -> UploadConfig:
    kw.setdefault("part_size", PART)
    kw.setdefault("concurrency", 4)
    kw.setdefault("max_attempts", MAX_ATTEMPTS)
    kw.setdefault("stall_timeout", STALL_TIMEOUT)
    kw.setdefault("backoff_base", 0.0)
    kw.setdefault("backoff_cap", 0.0)
    return UploadConfig(**kw)


def blob_plan(seed: int, **kw: Any) -> FaultPlan:
    kw.setdefault("rates", RATES)
    return FaultPlan(seed=seed, retry_after=0.01, stall_seconds=1.0, **kw)


def assert_within_budget(sb: Sandbox, events: list[Event], budget: int = MAX_ATTEMPTS) -> None:
    """No part was PUT, or retried, more often than the per-part attempt budget."""
    for key, parts in sb.store.stats()["puts_by_part"].items():
        for number, attempts in parts.items():
            assert attempts <= budget, f"{key} part {number}: {attempts} PUTs"
    retries = Counter((e.path, e.part) for e in events if isinstance(e, PartRetry))
    assert all(n < budget for n in retries.values()), retries


@asynccontextmanager
async def sandbox(faults: FaultPlan, **planes: Any) -> AsyncIterator[Sandbox]:
    async with Sandbox(SandboxConfig(min_part_size=0, faults=faults, **planes)) as sb:
        yield sb


def mport_config(**kw: Any) -> MatterportSandboxConfig:
    kw.setdefault("min_part_size", PART)
    kw.setdefault("model_delay", 0.0)
    return MatterportSandboxConfig(**kw)


def speckle_config(**kw: Any) -> SpeckleSandboxConfig:
    kw.setdefault("step_delay", 0.0)
    kw.setdefault("retry_after", 0.01)
    return SpeckleSandboxConfig(**kw)


# ---- seeded faults that must be survived ---------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("seed", SEEDS)
async def test_multipart_matterport_survives_blob_and_graphql_faults(
    tmp_path: Path, seed: int
) -> None:
    files = [tmp_path / f"scan{i}.e57" for i in range(2)]
    md5s = [
        write_sample_e57(p, 2 * MiB + i * 300 * KiB, seed=seed * 10 + i)
        for i, p in enumerate(files)
    ]
    events: list[Event] = []
    mp_config = mport_config(internal_error_rate=0.12, seed=seed)
    async with (
        sandbox(blob_plan(seed), matterport=mp_config) as sb,
        Uploader(config(), on_event=events.append) as up,
    ):
        plane = next(p for p in sb.planes if isinstance(p, MatterportPlane))
        result = await Matterport(
            CREDENTIALS, endpoint=f"{sb.url}/api/import/graph", poll_interval=0.01
        ).import_files(up, files, organization="sandbox-org")
        faults = blob_faults(sb) + plane_faults(sb)
        session = plane.session(result.session_id)
        assert session.failure is None and session.model_id == result.model_id
        assert [plane.md5_of(result.session_id, c) for c in session.files] == md5s
        assert_within_budget(sb, events)
    assert sum(faults.values()) >= 8, faults  # the schedule really bit
    record(faults, survived=True)


@pytest.mark.anyio
@pytest.mark.parametrize("seed", SEEDS)
async def test_single_put_speckle_survives_blob_faults_and_rate_limits(
    tmp_path: Path, seed: int
) -> None:
    files = [tmp_path / f"tower{i}.ifc" for i in range(4)]
    md5s = [
        write_sample_ifc(p, 300 * KiB + i * 1000, seed=seed * 10 + i) for i, p in enumerate(files)
    ]
    events: list[Event] = []
    async with (
        sandbox(blob_plan(seed), speckle=speckle_config(rate_limit_every=4)) as sb,
        Uploader(config(), on_event=events.append) as up,
    ):
        plane = next(p for p in sb.planes if isinstance(p, SpecklePlane))
        speckle = Speckle(SpeckleCredentials("sandbox-token"), server=sb.url, poll_interval=0.01)
        for path, md5 in zip(files, md5s, strict=True):
            result = await speckle.upload(up, path, project_id="sandbox-project")
            assert plane.ingested_md5[result.file_id] == md5
            assert result.version_id in plane.versions
        assert len(plane.ingestions) == len(files) == len(plane.versions)  # no duplicates
        faults = blob_faults(sb) + plane_faults(sb)
        assert_within_budget(sb, events)
    assert faults["graphql:speckle 429"] > 0 and sum(faults.values()) >= 6, faults
    record(faults, survived=True)


@pytest.mark.anyio
async def test_every_blob_fault_kind_once_and_twice_on_a_plain_multipart_upload(
    tmp_path: Path,
) -> None:
    """A deterministic schedule: part k meets kind k on its first attempt, and parts 12..22
    meet two faults in a row, so every kind is injected and survived at least twice."""
    path = tmp_path / "plain.bin"
    kinds = list(KINDS)
    parts = 2 * len(kinds) + 2
    path.write_bytes(hashlib.sha256(b"x").digest() * (parts * PART // 32))
    key = f"uploads/{path.name}"
    schedule: dict[tuple[str, int, int], str] = {}
    for i, kind in enumerate(kinds):
        schedule[(key, i + 1, 0)] = kind
        schedule[(key, len(kinds) + i + 1, 0)] = kind
        schedule[(key, len(kinds) + i + 1, 1)] = kinds[(i + 3) % len(kinds)]
    events: list[Event] = []
    plan = FaultPlan(schedule=schedule, retry_after=0.01, stall_seconds=1.0)
    async with sandbox(plan) as sb, Uploader(config(), on_event=events.append) as up:
        result = await up.upload(path, sandbox_target(sb, FileInfo.of(path)))
        assert result.remote.ids["md5"] == md5_file(path)
        faults = blob_faults(sb)
        assert_within_budget(sb, events)
    assert set(faults) == {f"blob:{k}" for k in kinds} and all(n >= 2 for n in faults.values())
    assert sum(1 for e in events if isinstance(e, PartRetry)) == len(schedule)
    record(faults, survived=True)


# ---- bulk import through the CLI -----------------------------------------------------------------


class RecordingSandbox(Sandbox):
    """The CLI builds its own sandbox; keep a handle on it to read its counters afterwards."""

    made: ClassVar[list[Sandbox]] = []

    def __init__(self, config: SandboxConfig | None = None) -> None:
        super().__init__(config)
        RecordingSandbox.made.append(self)


@pytest.mark.parametrize("seed", SEEDS[:3])
def test_bulk_import_survives_faults_on_every_path(
    tmp_path: Path, seed: int, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    scans = tmp_path / "scans"
    (scans / "site-a").mkdir(parents=True)
    sources: dict[str, str] = {}
    for i in range(2):
        p = scans / "site-a" / f"room{i}.e57"
        sources[p.name] = write_sample_e57(p, 6 * MiB + i * KiB, seed=seed * 100 + i)
    for i in range(3):
        p = scans / f"tower{i}.ifc"
        sources[p.name] = write_sample_ifc(p, 100 * KiB + i, seed=seed * 100 + 10 + i)
    (scans / "notes.txt").write_text("not a scan")
    # The CLI's sandbox, with this run's faults: blob store, Matterport error.internal and
    # Speckle 429s.
    RecordingSandbox.made.clear()
    monkeypatch.setattr(server_module, "Sandbox", RecordingSandbox)
    monkeypatch.setattr("engine.cli.destinations.fault_plan", lambda spec, seed_=0: blob_plan(seed))
    monkeypatch.setattr(
        mp_module,
        "MatterportSandboxConfig",
        functools.partial(MatterportSandboxConfig, internal_error_rate=0.1, seed=seed),
    )
    monkeypatch.setattr(
        sp_module,
        "SpeckleSandboxConfig",
        functools.partial(
            SpeckleSandboxConfig, step_delay=0.0, rate_limit_every=5, retry_after=0.01
        ),
    )
    report = tmp_path / "report.json"
    state = tmp_path / "state"
    code = main(
        [
            "import",
            str(scans),
            "--to",
            "sandbox",
            "--state-dir",
            str(state),
            "--report",
            str(report),
            "--part-size",
            "5MiB",
            "--concurrency",
            "4",
            "--stall-timeout",
            str(STALL_TIMEOUT),
            "--max-attempts",
            str(MAX_ATTEMPTS),
        ]
    )
    out, err = capsys.readouterr()
    assert code == 0, out + err
    assert "Traceback" not in out + err
    files = orjson.loads(report.read_bytes())["files"]
    assert sorted(f["status"] for f in files) == ["ok"] * 5 + ["skipped"]
    (sb,) = RecordingSandbox.made
    # Every file delivered once, byte-identical: what the platforms took (models made from
    # committed sessions, ingested Speckle blobs), not every object in storage. Storage may
    # also hold a Speckle blob abandoned for a fresh fileId after an expired URL, as it would
    # on the real platform; it is never registered, so it makes no model version.
    mp = next(p for p in sb.planes if isinstance(p, MatterportPlane))
    sp = next(p for p in sb.planes if isinstance(p, SpecklePlane))
    delivered = [
        mp.md5_of(sid, cid) for sid, s in mp.sessions.items() if s.model_id for cid in s.files
    ]
    delivered += list(sp.ingested_md5.values())
    assert sorted(md5 or "" for md5 in delivered) == sorted(sources.values())
    stored = [md5_file(p) for p in sorted((state / "sandbox" / "objects").iterdir())]
    assert set(stored) == set(sources.values())  # nothing else was stored
    assert_within_budget(sb, [])
    faults = blob_faults(sb) + plane_faults(sb)
    assert sum(faults.values()) >= 3, faults
    record(faults, survived=True)


# ---- permanent faults: a clear error naming the part ---------------------------------------------

PERMANENT_KINDS = [
    "500",
    "503",
    "throttle",
    "request_timeout",
    "reset",
    "stall",
    "expired",
    "bad_etag",
]


@pytest.mark.anyio
@pytest.mark.parametrize("kind", PERMANENT_KINDS)
async def test_a_permanent_blob_fault_exhausts_the_budget_and_names_the_part(
    tmp_path: Path, kind: str
) -> None:
    path = tmp_path / "scan.e57"
    write_sample_e57(path, 3 * PART, seed=1)
    budget = 3
    # Part 2 fails on every attempt; the others are fine.
    plan = FaultPlan(seed=0, retry_after=0.01, stall_seconds=1.0)
    async with sandbox(plan, matterport=mport_config()) as sb:
        plane = next(p for p in sb.planes if isinstance(p, MatterportPlane))

        def poison(event: Event) -> None:
            events.append(event)
            if sb.store.faults.schedule or not plane.sessions:
                return
            (session,) = plane.sessions.values()
            for record_ in session.files.values():
                slots = {(record_.key, 2, a): kind for a in range(budget + 2)}
                sb.store.faults = FaultPlan(schedule=slots, retry_after=0.01, stall_seconds=1.0)

        events: list[Event] = []
        async with Uploader(config(max_attempts=budget, concurrency=1), on_event=poison) as up:
            with pytest.raises(RetriesExhaustedError) as failed:
                await Matterport(
                    CREDENTIALS, endpoint=f"{sb.url}/api/import/graph", poll_interval=0.01
                ).import_files(up, [path], organization="sandbox-org")
        error = failed.value
        assert error.part_number == 2
        assert f"part 2 failed {budget} times" in str(error) and "\n" not in str(error)
        puts = sb.store.stats()["puts_by_part"]
        (by_part,) = puts.values()
        assert by_part["2"] == budget  # exactly the budget, never more
        faults = blob_faults(sb)
    assert faults == Counter({f"blob:{kind}": budget})
    record(faults, survived=False)
    PERMANENT[f"blob:{kind}"] += 1


@pytest.mark.parametrize(
    ("to", "spec", "expect"),
    [
        ("sandbox-matterport", "503=1", "part 1 failed 3 times; last: HTTP 503"),
        ("sandbox-speckle", "reset=1", "part 1 failed 3 times; last:"),
    ],
)
def test_a_permanent_fault_through_the_cli_is_exit_1_and_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], to: str, spec: str, expect: str
) -> None:
    path = tmp_path / ("scan.e57" if to.endswith("matterport") else "tower.ifc")
    if path.suffix == ".e57":
        write_sample_e57(path, 64 * KiB, seed=2)
    else:
        write_sample_ifc(path, 64 * KiB, seed=2)
    # The spec's rates apply to the first three attempts: a budget of 3 makes them permanent.
    code = main(
        [
            "upload",
            str(path),
            "--to",
            to,
            "--sandbox-faults",
            spec,
            "--max-attempts",
            "3",
            "--state-dir",
            str(tmp_path / "state"),
        ]
    )
    out, err = capsys.readouterr()
    assert code == 1
    lines = err.strip().splitlines()
    assert lines[-1].startswith("upload-engine: failed: ") and expect in lines[-1], err
    assert "Traceback" not in out + err
    PERMANENT[f"cli:{spec}"] += 1


@pytest.mark.anyio
async def test_permanent_graphql_faults_give_up_with_a_service_error(tmp_path: Path) -> None:
    path = tmp_path / "scan.e57"
    write_sample_e57(path, 64 * KiB, seed=3)
    async with (
        sandbox(FaultPlan(), matterport=mport_config(internal_error_rate=1.0)) as sb,
        Uploader(config(max_attempts=3)) as up,
    ):
        with pytest.raises(ServiceError, match=r"^addImportSession: .*gave up after 3 attempts"):
            await Matterport(
                CREDENTIALS, endpoint=f"{sb.url}/api/import/graph", poll_interval=0.01
            ).import_files(up, [path], organization="sandbox-org")
        record(plane_faults(sb), survived=False)
    PERMANENT["graphql:matterport error.internal"] += 1

    ifc = tmp_path / "tower.ifc"
    write_sample_ifc(ifc, 64 * KiB, seed=3)
    async with (
        sandbox(FaultPlan(), speckle=speckle_config(rate_limit_every=1)) as sb,
        Uploader(config(max_attempts=3)) as up,
    ):
        with pytest.raises(
            ServiceError,
            match=r"^ProjectModelByName: You have sent too many .*gave up after \d+ attempts",
        ):
            await Speckle(SpeckleCredentials("sandbox-token"), server=sb.url).upload(
                up, ifc, project_id="sandbox-project"
            )
        record(plane_faults(sb), survived=False)
    PERMANENT["graphql:speckle 429"] += 1
    await anyio.sleep(0)
