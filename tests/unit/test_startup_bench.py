"""``benchmarks.startup`` at one repetition: every contender runs, the S3 upload's first byte is
seen by the relay before the process ends, and the target reads the console script's row.
Timings themselves are the benchmark's, not asserted here."""

from __future__ import annotations

import pytest

from benchmarks import startup


@pytest.mark.slow
def test_one_repetition_of_every_contender() -> None:
    rows = startup.measure(1)
    names = [r["contender"] for r in rows]
    assert names == [*startup.COMMANDS, startup.FIRST_BYTE, startup.WHOLE_RUN]
    assert all(r["failures"] == 0 and r["median_seconds"] > 0 for r in rows), rows
    by_name = {r["contender"]: r["median_seconds"] for r in rows}
    assert by_name[startup.FIRST_BYTE] < by_name[startup.WHOLE_RUN]
    cpu = {r["contender"]: r["median_cpu_seconds"] for r in rows}
    assert cpu.pop(startup.FIRST_BYTE) is None  # not a process of its own
    assert all(seconds > 0 for seconds in cpu.values()), cpu
    (target,) = startup.targets(rows)
    assert target["value"] == by_name["upload-engine --help"]
    assert "upload-engine --help" in startup.markdown(rows)
