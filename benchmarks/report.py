"""Turn benchmark results into the issue's target verdicts, a markdown table and a plot."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.cluster import targets as cluster_targets

Row = dict[str, Any]


def _rows(rows: Sequence[Row], case: str) -> list[Row]:
    return [r for r in rows if r["case"] == case and r["median_gbps"] is not None]


def _get(rows: Sequence[Row], case: str, contender: str) -> Row | None:
    return next((r for r in _rows(rows, case) if r["contender"] == contender), None)


def _target(name: str, value: float | None, goal: float, detail: str) -> dict[str, Any]:
    return {
        "target": name,
        "value": value,
        "goal": goal,
        "met": value is not None and value >= goal,
        "detail": detail,
    }


def evaluate_targets(rows: Sequence[Row]) -> list[dict[str, Any]]:
    """The issue's targets as ratios of medians measured in the same run."""
    out: list[dict[str, Any]] = []
    peers = [r for r in _rows(rows, "mp-http") if r["group"] == "peer"]
    eng_off = _get(rows, "mp-http", "engine (ETag check off)")
    eng_on = _get(rows, "mp-http", "engine")
    ceiling = _get(rows, "mp-http", "sendfile ceiling")
    if eng_off and peers:
        best = max(peers, key=lambda r: r["median_gbps"])
        out.append(
            _target(
                "multipart HTTP, ETag off: engine / fastest peer",
                eng_off["median_gbps"] / best["median_gbps"],
                1.5,
                f"fastest peer: {best['contender']} {best['median_gbps']:.2f} GB/s",
            )
        )
    if eng_off and ceiling:
        out.append(
            _target(
                "multipart HTTP, ETag off: engine / sendfile ceiling",
                eng_off["median_gbps"] / ceiling["median_gbps"],
                0.5,
                f"ceiling {ceiling['median_gbps']:.2f} GB/s",
            )
        )
    defaults = [r for r in peers if r["default_config"]]
    if eng_on and defaults:
        best = max(defaults, key=lambda r: r["median_gbps"])
        out.append(
            _target(
                "multipart HTTP, ETag on: engine / fastest default peer",
                eng_on["median_gbps"] / best["median_gbps"],
                1.5,
                f"fastest default peer: {best['contender']} {best['median_gbps']:.2f} GB/s",
            )
        )
        hashing = [r for r in defaults if r["hashing"]]
        if hashing:
            best = max(hashing, key=lambda r: r["median_gbps"])
            out.append(
                _target(
                    "multipart HTTP, ETag on: engine / fastest default S3 peer (they hash too)",
                    eng_on["median_gbps"] / best["median_gbps"],
                    1.5,
                    f"{best['contender']} {best['median_gbps']:.2f} GB/s",
                )
            )
    out.extend(cluster_targets(list(rows)))  # benchmarks/cluster.py
    tls_peers = [r for r in _rows(rows, "mp-https") if r["group"] == "peer"]
    tls_eng = [r for r in _rows(rows, "mp-https") if r["group"] == "engine"]
    if tls_peers and tls_eng:
        best = max(tls_peers, key=lambda r: r["median_gbps"])
        eng = max(tls_eng, key=lambda r: r["median_gbps"])
        out.append(
            _target(
                "multipart HTTPS: engine / fastest peer",
                eng["median_gbps"] / best["median_gbps"],
                1.0,
                f"{eng['contender']} {eng['median_gbps']:.2f} vs {best['contender']} "
                f"{best['median_gbps']:.2f} GB/s",
            )
        )
    curl = _get(rows, "single-http", "curl -T")
    for name, label in (("engine (ETag check off)", "ETag off"), ("engine", "ETag on")):
        eng1 = _get(rows, "single-http", name)
        if eng1 and curl:
            out.append(
                _target(
                    f"single PUT HTTP, {label}: engine / curl -T",
                    eng1["median_gbps"] / curl["median_gbps"],
                    1.0,
                    f"engine {eng1['median_gbps']:.2f}, curl {curl['median_gbps']:.2f} GB/s",
                )
            )
    s5 = _get(rows, "bulk-http", "s5cmd (defaults)")
    for eng in (r for r in _rows(rows, "bulk-http") if r["group"] == "engine"):
        if s5:
            out.append(
                _target(
                    f"bulk 200 x 8 MiB: {eng['contender']} / s5cmd",
                    eng["median_gbps"] / s5["median_gbps"],
                    1.5,
                    f"engine {eng['median_gbps']:.2f}, s5cmd {s5['median_gbps']:.2f} GB/s",
                )
            )
    for cases, label in (
        (("sweep-p8-c16", "sweep-p16-c16", "sweep-p64-c16"), "2 GiB"),
        (("rss-20g",), "20 GiB"),
    ):
        mine = [x for c in cases for x in _rows(rows, c) if x["group"] == "engine"]
        if mine:
            r = max(mine, key=lambda x: x["max_rss_mib"])
            # expressed as headroom: 100 MiB / peak, met when >= 1
            out.append(
                _target(
                    f"peak RSS, {label}, concurrency 16: 100 MiB / engine peak",
                    100.0 / r["max_rss_mib"],
                    1.0,
                    f"peak {r['max_rss_mib']:.1f} MiB",
                )
            )
    return out


def _fmt(v: float | None, spec: str = ".2f") -> str:
    return "—" if v is None else format(v, spec)


def markdown(result: dict[str, Any]) -> str:
    rows: list[Row] = result["summary"]
    m = result["machine"]
    lines = [
        f"Machine: {m['cpu']} ({m['cores']} cores), Python {m['python']}, "
        f"kernel {m['kernel']}; {result['reps']} repetition(s), interleaved; "
        f"GB/s = 10^9 bytes/s.",
        "",
    ]
    cases: list[str] = []
    for r in rows:
        if r["case"] not in cases:
            cases.append(r["case"])
    sweep = [c for c in cases if c.startswith("sweep-")]
    for case in [c for c in cases if c not in sweep]:
        mine = [r for r in rows if r["case"] == case]
        lines.append(f"### {mine[0]['label']}")
        lines.append("")
        lines.append("| contender | median GB/s | min–max | peak RSS MiB | vs engine |")
        lines.append("| --- | ---: | ---: | ---: | ---: |")
        eng = next((r for r in mine if r["contender"] == "engine"), None)
        for r in sorted(mine, key=lambda r: -(r["median_gbps"] or 0)):
            ratio = (
                f"{eng['median_gbps'] / r['median_gbps']:.2f}×"
                if eng and eng["median_gbps"] and r["median_gbps"]
                else "—"
            )
            if r["median_gbps"] is None:
                lines.append(f"| {r['contender']} | failed: {r['error'][:80]} | | | |")
                continue
            lines.append(
                f"| {r['contender']} | {_fmt(r['median_gbps'])} | "
                f"{_fmt(r['min_gbps'])}–{_fmt(r['max_gbps'])} | "
                f"{_fmt(r['max_rss_mib'], '.0f')} | {ratio} |"
            )
        lines.append("")
    if sweep:
        lines.append("### Engine sweep (2 GiB multipart, HTTP, ETag check on)")
        lines.append("")
        lines.append("| part MiB | concurrency | median GB/s | min–max | peak RSS MiB |")
        lines.append("| ---: | ---: | ---: | ---: | ---: |")
        for case in sweep:
            for r in (x for x in rows if x["case"] == case):
                lines.append(
                    f"| {r['part_mib']} | {r['concurrency']} | {_fmt(r['median_gbps'])} | "
                    f"{_fmt(r['min_gbps'])}–{_fmt(r['max_gbps'])} | "
                    f"{_fmt(r['max_rss_mib'], '.0f')} |"
                )
        lines.append("")
    if result.get("targets"):
        lines.append("### Targets (issue 6)")
        lines.append("")
        lines.append("| target | measured | goal | met | detail |")
        lines.append("| --- | ---: | ---: | :---: | --- |")
        for t in result["targets"]:
            lines.append(
                f"| {t['target']} | {_fmt(t['value'])} | {t['goal']:g} | "
                f"{'yes' if t['met'] else 'NO'} | {t['detail']} |"
            )
        lines.append("")
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows: list[Row] = [r for r in result["summary"] if r["median_gbps"] is not None]
    main_cases: list[str] = []
    for r in rows:
        if not r["case"].startswith("sweep-") and r["case"] not in main_cases:
            main_cases.append(r["case"])
    fig = plt.figure(figsize=(13, 4 + 0.32 * len(rows)))
    gs = fig.add_gridspec(2, 1, height_ratios=[max(3, len(rows) - 9), 3])
    ax = fig.add_subplot(gs[0])
    labels, values, lows, highs, colors = [], [], [], [], []
    palette = {"engine": "#1f77b4", "peer": "#ff7f0e", "ceiling": "#7f7f7f"}
    for case in main_cases:
        for r in sorted(
            (x for x in rows if x["case"] == case), key=lambda x: -(x["median_gbps"] or 0)
        ):
            labels.append(f"{case}: {r['contender']}")
            values.append(r["median_gbps"])
            lows.append(r["median_gbps"] - r["min_gbps"])
            highs.append(r["max_gbps"] - r["median_gbps"])
            colors.append(palette.get(r["group"], "#999999"))
    ypos = list(range(len(labels)))[::-1]
    ax.barh(ypos, values, xerr=[lows, highs], color=colors, capsize=2)
    ax.set_yticks(ypos)
    ax.set_yticklabels(labels, fontsize=7)
    ax.set_xlabel("GB/s (median, whiskers min–max)")
    m = result["machine"]
    ax.set_title(f"Upload throughput over loopback — {m['cpu']}, {m['cores']} cores")
    ax.grid(axis="x", alpha=0.3)

    ax2 = fig.add_subplot(gs[1])
    ax3 = ax2.twinx()
    sweep = [r for r in rows if r["case"].startswith("sweep-")]
    for part in sorted({r["part_mib"] for r in sweep}):
        pts = sorted((r for r in sweep if r["part_mib"] == part), key=lambda r: r["concurrency"])
        xs = [r["concurrency"] for r in pts]
        ax2.plot(xs, [r["median_gbps"] for r in pts], marker="o", label=f"GB/s, part {part} MiB")
        ax3.plot(
            xs,
            [r["max_rss_mib"] for r in pts],
            marker="x",
            linestyle="--",
            label=f"RSS, part {part} MiB",
        )
    ax2.set_xlabel("concurrency (engine, 2 GiB multipart, HTTP, ETag check on)")
    ax2.set_ylabel("GB/s")
    ax3.set_ylabel("peak RSS MiB")
    ax3.axhline(100, color="red", alpha=0.3, linewidth=1)
    h1, l1 = ax2.get_legend_handles_labels()
    h2, l2 = ax3.get_legend_handles_labels()
    if h1:
        ax2.legend(h1 + h2, l1 + l2, fontsize=7, loc="lower right")
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
