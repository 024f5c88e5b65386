"""``python -m benchmarks.startup [--reps N]``: how long the command line takes to start.

Every run is a fresh process timed from the outside (spawn to exit, ``time.perf_counter``),
the contenders interleaved (A B C ... A B C ...) over ``reps`` repetitions after one untimed
round (compiled ``.pyc`` files, kept under a temporary ``PYTHONPYCACHEPREFIX``, and a warm
page cache, as a user's second run has them):

- ``python -c pass``: the interpreter's own start-up, the floor under every other row;
- ``upload-engine --help`` (the console script beside this interpreter) and ``python -m engine
  --help``: building the whole command line and printing its help;
- ``import engine`` and ``from engine import Uploader``: what a library user pays before and
  after touching the HTTP client;
- ``S3 upload 1 MiB``: ``upload-engine upload FILE --to s3://... --endpoint-url`` against a
  ``benchmarks.endpoint`` process, through a loopback relay here that notes when the first
  request byte arrives: ``first byte`` is spawn to that byte, ``whole run`` spawn to exit.

Rows (``case`` ``"startup"``): ``contender``, ``runs``, ``failures``, ``error``, the median, min
and max seconds, and the median CPU seconds of the process (user + system: what the run costs
the machine, steadier than the wall time when other work shares the cores). :func:`targets`
gives the issue's verdict (``upload-engine --help`` under 0.12 s on this machine).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

__all__ = ["HELP_GOAL", "markdown", "measure", "targets"]

ROOT = Path(__file__).resolve().parent
PY = sys.executable
SCRIPT = str(Path(PY).with_name("upload-engine"))
HELP_GOAL = 0.12  # seconds: issue 13's bound on ``upload-engine --help``
FIRST_BYTE = "S3 upload 1 MiB: first byte"
WHOLE_RUN = "S3 upload 1 MiB: whole run"

#: what each plain contender runs (its name: what a user types)
COMMANDS: dict[str, list[str]] = {
    "python -c pass": [PY, "-c", "pass"],
    "upload-engine --help": [SCRIPT, "--help"],
    "python -m engine --help": [PY, "-m", "engine", "--help"],
    "import engine": [PY, "-c", "import engine"],
    "from engine import Uploader": [PY, "-c", "from engine import Uploader"],
}

#: one round: each row's wall seconds and CPU seconds (user + system; None: not its own)
Timing = dict[str, tuple[float, float | None]]


class Relay:
    """A loopback TCP relay to ``upstream`` that notes (``perf_counter``) when the first byte
    from any client arrives; ``reset`` forgets it."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.first: float | None = None
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def reset(self) -> None:
        self.first = None

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._sock.accept()
            except OSError:  # closed
                return
            server = socket.create_connection(self.upstream)
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, from_client: bool) -> None:
        try:
            while data := src.recv(256 * 1024):
                if from_client and self.first is None:
                    self.first = time.perf_counter()
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
            src.close()

    def close(self) -> None:
        with suppress(OSError):  # wakes the accepting thread (Linux), which then ends
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()


@contextmanager
def _endpoint() -> Any:
    """A ``benchmarks.endpoint`` process on a free port, behind a ``Relay``."""
    proc = subprocess.Popen(
        [PY, "-m", "benchmarks.endpoint", "--port", "0"],
        stdout=subprocess.PIPE,
        cwd=ROOT.parent,
        text=True,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        port = int(json.loads(proc.stdout.readline())["port"])
        relay = Relay(("127.0.0.1", port))
        try:
            yield relay
        finally:
            relay.close()
    finally:
        proc.terminate()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


def _env(home: Path, source: Path) -> dict[str, str]:
    """A user of the engine in ``source`` with nothing configured but fake AWS keys (the
    endpoint takes any), whose interpreter keeps compiled modules (under ``home``: the
    checkout is left as it is), as an installed package has them: a harness that sets
    ``PYTHONDONTWRITEBYTECODE`` would else time the compiling of every module of the engine."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UPLOAD_ENGINE_", "AWS_"))}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.update(
        PYTHONPATH=str(source),
        PYTHONPYCACHEPREFIX=str(home.parent / "pycache"),
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_CONFIG_FILE=str(home / "no-aws-config"),
        AWS_SHARED_CREDENTIALS_FILE=str(home / "no-aws-credentials"),
        XDG_CONFIG_HOME=str(home / "config"),
        XDG_STATE_HOME=str(home / "state"),
    )
    return env


def _cpu() -> float:
    """CPU seconds of the children waited for so far (one runs at a time: the difference
    around a run is its own; the endpoint, never waited for until the end, is not counted)."""
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


def _run(argv: list[str], env: dict[str, str]) -> tuple[float, float, float]:
    """Run ``argv`` to its end (a failure raises, with its stderr); its spawn and exit times
    and its CPU seconds. The working directory is a scratch one, so ``python -m`` finds
    ``engine`` where ``PYTHONPATH`` says, not in the harness's checkout."""
    cpu, started = _cpu(), time.perf_counter()
    subprocess.run(
        argv, env=env, cwd=env["XDG_STATE_HOME"], stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True, check=True, timeout=120,
    )  # fmt: skip
    return started, time.perf_counter(), _cpu() - cpu


#: one contender's run: the rows it gives, and what runs it (its argument: the repetition)
Run = tuple[tuple[str, ...], Callable[[int], Timing]]


def _plain(name: str, argv: list[str], env: dict[str, str]) -> Run:
    def run(rep: int) -> Timing:
        started, ended, cpu = _run(argv, env)
        return {name: (ended - started, cpu)}

    return (name,), run


def _s3_upload(relay: Relay, data: Path, env: dict[str, str], tag: str) -> Run:
    first, whole = FIRST_BYTE + tag, WHOLE_RUN + tag

    def run(rep: int) -> Timing:
        argv = [SCRIPT, "upload", str(data), "--to", f"s3://bench/startup-{rep}.bin",
                "--endpoint-url", f"http://127.0.0.1:{relay.port}"]  # fmt: skip
        relay.reset()
        started, ended, cpu = _run(argv, env)
        if relay.first is None:
            raise RuntimeError("the upload sent no byte to the endpoint")
        return {first: (relay.first - started, None), whole: (ended - started, cpu)}

    return (first, whole), run


def _runs(source: Path, tag: str, home: Path, relay: Relay, data: Path) -> list[Run]:
    """Every contender, for the engine in ``source`` (``tag``: after each row's name)."""
    env = _env(home, source)
    Path(env["XDG_STATE_HOME"]).mkdir(parents=True)
    runs = [_plain(name + tag, argv, env) for name, argv in COMMANDS.items()]
    return [*runs, _s3_upload(relay, data, env, tag)]


def _round(runs: Sequence[Run], rep: int, errors: dict[str, str]) -> Timing:
    """One run of every contender, in order; a failure is kept as its rows' error."""
    got: Timing = {}
    for rows, run in runs:
        try:
            got.update(run(rep))
        except (subprocess.SubprocessError, OSError, RuntimeError) as exc:
            stderr = getattr(exc, "stderr", None)
            error = (stderr.strip().splitlines() or [""])[-1] if stderr else str(exc)
            errors.update(dict.fromkeys(rows, error))
    return got


def measure(reps: int, baseline: Path | None = None) -> list[dict[str, Any]]:
    """Every contender ``reps`` times, interleaved, after one untimed round; a row each. With
    ``baseline`` (a directory holding another version's ``engine`` package) every contender
    runs on that one too, interleaved with this checkout's, its rows marked ``(baseline)``."""
    with tempfile.TemporaryDirectory(prefix="startup-") as tmp, _endpoint() as relay:
        home = Path(tmp)
        data = home / "one-mib.bin"
        data.write_bytes(os.urandom(1024 * 1024))
        runs = _runs(ROOT.parent, "", home / "checkout", relay, data)
        if baseline is not None:
            runs += _runs(baseline.resolve(), " (baseline)", home / "baseline", relay, data)
        errors: dict[str, str] = {}
        _round(runs, -1, errors)  # warm-up, not counted
        errors.clear()
        rounds = [_round(runs, rep, errors) for rep in range(reps)]
    names = [name for rows, _ in runs for name in rows]
    return [_row(name, [r[name] for r in rounds if name in r], reps, errors) for name in names]


def _row(
    name: str, timings: list[tuple[float, float | None]], reps: int, errors: dict[str, str]
) -> dict[str, Any]:
    seconds = [wall for wall, _ in timings]
    cpu = [c for _, c in timings if c is not None]
    return {
        "case": "startup",
        "label": "Start-up: fresh processes, spawn to exit (first byte: to the endpoint)",
        "contender": name,
        "runs": reps,
        "failures": reps - len(seconds),
        "error": errors.get(name, ""),
        "median_seconds": statistics.median(seconds) if seconds else None,
        "min_seconds": min(seconds) if seconds else None,
        "max_seconds": max(seconds) if seconds else None,
        "median_cpu_seconds": statistics.median(cpu) if cpu else None,
    }


def targets(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's target, in ``benchmarks.report``'s form: ``upload-engine --help`` under
    ``HELP_GOAL`` seconds (median)."""
    row = next((r for r in rows if r["contender"] == "upload-engine --help"), None)
    if row is None:
        return []
    value = row["median_seconds"]
    floor = next((r["median_seconds"] for r in rows if r["contender"] == "python -c pass"), None)
    return [
        {
            "issue": 13,
            "target": "upload-engine --help: seconds, spawn to exit",
            "value": value,
            "goal": HELP_GOAL,
            "met": value is not None and value <= HELP_GOAL,
            "detail": f"median of {row['runs']}; the bare interpreter: "
            + ("—" if floor is None else f"{floor:.3f} s"),
        }
    ]


def markdown(rows: Sequence[dict[str, Any]]) -> str:
    def f(v: float | None) -> str:
        return "—" if v is None else f"{v:.3f}"

    lines = [f"#### {rows[0]['label']}", "", "| contender | median s | min–max s | CPU s |"]
    lines.append("| --- | ---: | ---: | ---: |")
    for r in rows:
        if r["median_seconds"] is None:
            lines.append(f"| {r['contender']} | failed: {r['error'][:80]} | | |")
            continue
        lines.append(
            f"| {r['contender']} | {f(r['median_seconds'])} | "
            f"{f(r['min_seconds'])}–{f(r['max_seconds'])} | {f(r['median_cpu_seconds'])} |"
        )
    for t in targets(rows):
        met = "met" if t["met"] else "NOT met"
        lines += ["", f"Target: {t['target']} = {f(t['value'])} (goal {t['goal']:g}, {met})."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Start-up of the command line, fresh processes")
    p.add_argument("--reps", type=int, default=10, help="repetitions (default 10)")
    p.add_argument(
        "--baseline",
        type=Path,
        metavar="DIR",
        help="also run every contender on the engine package in DIR (another version: e.g. "
        "git archive COMMIT engine | tar -x -C DIR), interleaved, rows marked (baseline)",
    )
    p.add_argument("--json", action="store_true", help="print the rows as JSON instead")
    args = p.parse_args(argv)
    rows = measure(args.reps, args.baseline)
    print(json.dumps(rows, indent=1) if args.json else markdown(rows))
    return 0 if all(r["failures"] == 0 for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
