"""A kill campaign: SIGKILL `upload-engine import` again and again, then prove exactly once.

    python -m benchmarks.kill_campaign --kills 100 [--seed 1] [--faults 503=0.05,reset=0.02]

A served sandbox (its own process, faults on, a data directory) receives a tree of E57 and IFC
files. For each platform the import is started and killed with SIGKILL at a seeded random
instant, ``--kills`` times in all (split between Matterport and Speckle), then rerun until it
exits 0. Then the sandbox's counters must show every E57 committed once with one model and
every IFC ingested once with one version, every stored object byte-identical to its source,
and the bytes re-sent within the bound (kills x concurrency x part size). Prints one summary
line per check and exits 1 if any fails.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import select
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from engine.sandbox.e57 import write_sample_e57
from engine.sandbox.ifc import write_sample_ifc

KiB, MiB = 1024, 1024 * 1024
BIN = str(Path(sys.executable).with_name("upload-engine"))
PART = 256 * KiB
CONCURRENCY = 4
ENV = {
    **os.environ,
    "MATTERPORT_TOKEN_ID": "sandbox-token-id",
    "MATTERPORT_TOKEN_SECRET": "sandbox-token-secret",
    "SPECKLE_TOKEN": "sandbox-token",
}


def md5_file(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as f:
        while chunk := f.read(MiB):
            h.update(chunk)
    return h.hexdigest()


def write_tree(root: Path, rng: random.Random) -> tuple[dict[str, str], dict[str, str]]:
    """(E57 rel -> MD5, IFC rel -> MD5)."""
    e57, ifc = {}, {}
    for i in range(8):
        rel = f"site-{i % 3}/scan-{i}.e57"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        e57[rel] = write_sample_e57(root / rel, rng.randint(1 * MiB, 3 * MiB), seed=i)
    for i in range(10):
        rel = f"models/m-{i}.ifc"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        ifc[rel] = write_sample_ifc(root / rel, rng.randint(40 * KiB, 240 * KiB), seed=100 + i)
    return e57, ifc


class Sandbox:
    def __init__(self, data: Path, faults: str, log: Path) -> None:
        cmd = [BIN, "sandbox", "serve", "--port", "0", "--data-dir", str(data)]
        cmd += ["--min-part-size", "256KiB", "--faults", faults, "--latency", "0.005"]
        self.data = data
        self._log = log.open("w")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self._log, text=True)
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], 30)
        line = self.proc.stdout.readline() if ready else ""
        found = re.search(r"listening on (http://\S+)", line)
        if not found:
            raise SystemExit(f"the sandbox did not start: {line!r}")
        self.url = found.group(1)

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.url}/_sandbox/stats", timeout=10) as r:
            out: dict[str, Any] = json.loads(r.read())
        return out

    def wait_idle(self) -> None:
        deadline = time.monotonic() + 10
        while self.stats()["puts_in_flight"] and time.monotonic() < deadline:
            time.sleep(0.02)

    def destination(self, to: str) -> list[str]:
        if to == "matterport":
            endpoint = f"{self.url}/api/import/graph"
            return ["--to", "matterport", "--organization", "sandbox-org", "--endpoint", endpoint]
        return ["--to", "speckle", "--project", "sandbox-project", "--server", self.url]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        self._log.close()


def campaign(sb: Sandbox, tree: Path, state: Path, to: str, kills: int, rng: random.Random) -> int:
    """Kill ``kills`` runs at random instants, then run to a clean exit; return the kills."""
    cmd = [BIN, "import", str(tree), *sb.destination(to), "--state-dir", str(state)]
    cmd += ["--part-size", str(PART), "--concurrency", str(CONCURRENCY), "--files-at-once", "3"]
    done = 0
    while done < kills:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
        time.sleep(rng.uniform(0.2, 1.6))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            done += 1
        proc.wait()
        sb.wait_idle()
        if proc.returncode == 0:  # finished before the kill: start over with a fresh run
            continue
    for _ in range(5):
        final = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=300)
        if final.returncode == 0:
            return done
    raise SystemExit(f"{to}: no clean run after the kills:\n{final.stderr[-2000:]}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=100, help="SIGKILLs in all (default 100)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--faults", default="503=0.05,reset=0.02")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="kill-campaign-") as tmp:
        root = Path(tmp)
        e57, ifc = write_tree(root / "scans", rng)
        sb = Sandbox(root / "data", args.faults, root / "sandbox.log")
        started = time.monotonic()
        try:
            half = args.kills // 2
            kills = campaign(sb, root / "scans", root / "state", "matterport", half, rng)
            kills += campaign(sb, root / "scans", root / "state", "speckle", args.kills - half, rng)
            return report(sb, root / "scans", e57, ifc, kills, time.monotonic() - started)
        finally:
            sb.stop()


def report(
    sb: Sandbox, tree: Path, e57: dict[str, str], ifc: dict[str, str], kills: int, secs: float
) -> int:
    stats = sb.stats()
    mp, sp = stats["planes"]["matterport"], stats["planes"]["speckle"]
    objects = {unquote(p.name): md5_file(p) for p in (sb.data / "objects").iterdir()}
    stored_e57 = Counter(m for k, m in objects.items() if k.startswith("import/"))
    stored_ifc = Counter(m for k, m in objects.items() if k.startswith("speckle/"))
    total = sum((tree / r).stat().st_size for r in [*e57, *ifc])
    resent = stats["bytes_received"] - total
    bound = kills * CONCURRENCY * PART
    checks = {
        f"E57 committed once: {mp['committed']}/{len(e57)}, models {mp['models']}": (
            mp["committed"] == mp["models"] == len(e57)
        ),
        f"E57 byte-identical: {sum(stored_e57.values())} objects": (
            stored_e57 == Counter(e57.values())
        ),
        f"IFC ingested once: {sp['versions']}/{len(ifc)} versions, {sp['ingestions']}": (
            sp["versions"] == len(ifc) and sp["ingestions"] == {"success": len(ifc)}
        ),
        f"IFC byte-identical: {len(set(stored_ifc))} distinct of {len(ifc)}": (
            set(stored_ifc) == set(ifc.values())
        ),
        f"re-sent {resent / MiB:.1f} MiB of {total / MiB:.1f} MiB, bound {bound / MiB:.1f} MiB": (
            0 <= resent <= bound
        ),
    }
    print(f"{kills} SIGKILLs in {secs:.0f} s; sessions {mp['sessions']}")
    for line, ok in checks.items():
        print(("ok    " if ok else "FAIL  ") + line)
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
