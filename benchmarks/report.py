"""Turn benchmark results into the issues' target verdicts, a markdown table and a plot.

Every target is a ratio of medians measured in the same run (``evaluate_targets``); a target
whose case did not run is listed as not measured, and a missed one stays in the table.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from benchmarks.cluster import targets as cluster_targets

Row = dict[str, Any]
Target = dict[str, Any]

#: the case groups' own targets (issue 16's cluster; issue 13's flows and start-up are added
#: here by the lead): each takes the summary rows and returns target dicts like ``_target``'s
TARGET_GROUPS: list[Callable[[list[Row]], list[Target]]] = [cluster_targets]

ENGINE = "engine"  # the engine at its defaults, in every case that has it
ENGINE_OFF = "engine (ETag check off)"
ONE_LOOP = "engine --data-loops 1 (one event loop)"
CRT = "AWS CRT (defaults)"
S5CMD = "s5cmd (defaults)"
BOTO3_OFF = "boto3 tuned (matched, signing+checksums off)"


def _rows(rows: Sequence[Row], case: str) -> list[Row]:
    return [r for r in rows if r["case"] == case and r["median_gbps"] is not None]


def _get(rows: Sequence[Row], case: str, contender: str) -> Row | None:
    return next((r for r in _rows(rows, case) if r["contender"] == contender), None)


def _target(
    name: str, value: float | None, goal: float, detail: str, issue: int | str = 6
) -> Target:
    return {
        "target": name,
        "issue": issue,
        "value": value,
        "goal": goal,
        "met": value is not None and value >= goal,
        "detail": detail,
    }


def _ratio(rows: Sequence[Row], name: str, case: str, top: str, bottom: str, goal: float) -> Target:
    """An issue-13 target ``top / bottom >= goal`` in ``case``; not measured when either is
    missing from the run (or failed)."""
    a, b = _get(rows, case, top), _get(rows, case, bottom)
    if a is None or b is None:
        missing = " and ".join(x for x, r in ((top, a), (bottom, b)) if r is None)
        return _target(name, None, goal, f"not measured in this run ({case}: {missing})", 13)
    value = a["median_gbps"] / b["median_gbps"]
    detail = f"{top} {a['median_gbps']:.2f}, {bottom} {b['median_gbps']:.2f} GB/s"
    return _target(name, value, goal, detail, 13)


def issue13_targets(rows: Sequence[Row]) -> list[Target]:
    """Issue 13's targets (the Matterport flow's come with benchmarks/flows.py)."""
    out = [
        _ratio(rows, "WAN 30 ms, defaults: engine / AWS CRT", "wan-30", ENGINE, CRT, 1.0),
    ]
    eng = _get(rows, "wan-30", ENGINE)
    link = next((r["link_gbps"] for r in rows if r["case"] == "wan-30"), None)
    if eng is not None and link:
        value = eng["median_gbps"] / link
        detail = f"engine {eng['median_gbps']:.3f} of {link:.3f} GB/s (process wall)"
        out.append(_target("WAN 30 ms, defaults: engine / link capacity", value, 0.8, detail, 13))
    else:
        detail = "not measured in this run (wan-30: engine)"
        out.append(_target("WAN 30 ms, defaults: engine / link capacity", None, 0.8, detail, 13))
    out += [
        _ratio(
            rows, "HTTPS multipart: engine / boto3, hashing off", "mp-https", ENGINE, BOTO3_OFF, 1.3
        ),
        _ratio(
            rows, "HTTPS multipart: engine / engine on one loop", "mp-https", ENGINE, ONE_LOOP, 1.5
        ),
        _ratio(rows, "HTTP multipart: engine (MD5 on) / s5cmd", "mp-http-md5", ENGINE, S5CMD, 1.5),
        _ratio(
            rows,
            "HTTP multipart: engine, ETag off / boto3, hashing off",
            "mp-http",
            ENGINE_OFF,
            BOTO3_OFF,
            1.5,
        ),
    ]
    for case, label in (
        ("rss-2g-http", "2 GiB HTTP"),
        ("rss-2g-https", "2 GiB HTTPS"),
        ("rss-20g-http", "20 GiB HTTP"),
        ("rss-20g-https", "20 GiB HTTPS"),
    ):
        mine = [r for r in _rows(rows, case) if r["group"] == "engine"]
        name = f"peak RSS, {label}, concurrency 64: 100 MiB / engine peak"
        if mine:
            peak = max(r["max_rss_mib"] for r in mine)
            out.append(_target(name, 100.0 / peak, 1.0, f"peak {peak:.1f} MiB", 13))
        else:
            out.append(_target(name, None, 1.0, f"not measured in this run ({case})", 13))
    return out


def issue6_targets(rows: Sequence[Row]) -> list[Target]:
    """Issue 6's targets, kept: the loopback ceiling checks."""
    out: list[Target] = []
    peers = [r for r in _rows(rows, "mp-http") if r["group"] == "peer"]
    eng_off = _get(rows, "mp-http", ENGINE_OFF)
    eng_on = _get(rows, "mp-http", ENGINE)
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
    for name, label in ((ENGINE_OFF, "ETag off"), (ENGINE, "ETag on")):
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
    s5 = _get(rows, "bulk-http", S5CMD)
    for eng in (r for r in _rows(rows, "bulk-http") if r["group"] == "engine"):
        if s5:
            out.append(
                _target(
                    f"bulk {eng['label'].split(',')[0]}: {eng['contender']} / s5cmd",
                    eng["median_gbps"] / s5["median_gbps"],
                    1.5,
                    f"engine {eng['median_gbps']:.2f}, s5cmd {s5['median_gbps']:.2f} GB/s",
                )
            )
    mine = [x for c in ("sweep-p16-c16", "sweep-p64-c16") for x in _rows(rows, c)]
    if mine:
        r = max(mine, key=lambda x: x["max_rss_mib"])
        # expressed as headroom: 100 MiB / peak, met when >= 1
        out.append(
            _target(
                "peak RSS, 2 GiB, concurrency 16: 100 MiB / engine peak",
                100.0 / r["max_rss_mib"],
                1.0,
                f"peak {r['max_rss_mib']:.1f} MiB",
            )
        )
    return out


def evaluate_targets(rows: Sequence[Row]) -> list[Target]:
    """Every issue's targets, as ratios of medians measured in the same run."""
    out = issue13_targets(rows) + issue6_targets(rows)
    for group in TARGET_GROUPS:
        for t in group(list(rows)):
            t.setdefault("issue", 16 if group is cluster_targets else "")
            out.append(t)
    return out


def _fmt(v: float | None, spec: str = ".2f") -> str:
    return "—" if v is None else format(v, spec)


def _case_table(mine: list[Row]) -> list[str]:
    """One case's table; WAN cases also give each contender's share of the link."""
    first = mine[0]
    link = first.get("link_gbps")
    lines = [f"#### {first['label']}", ""]
    if link:
        lines += [
            f"Link capacity {link:.3f} GB/s ({link * 8:g} Gbit/s); every contender at its "
            "defaults, GB/s from each process's wall time, start-up included.",
            "",
        ]
    share = " % of link |" if link else ""
    lines.append(f"| contender | median GB/s | min–max |{share} peak RSS MiB | vs engine |")
    lines.append("| --- | ---: | ---: |" + (" ---: |" if link else "") + " ---: | ---: |")
    eng = next((r for r in mine if r["contender"] == ENGINE), None)
    for r in sorted(mine, key=lambda r: -(r["median_gbps"] or 0)):
        if r["median_gbps"] is None:
            pad = " |" if link else ""
            lines.append(f"| {r['contender']} | failed: {r['error'][:80]} | |{pad} | |")
            continue
        ratio = (
            f"{eng['median_gbps'] / r['median_gbps']:.2f}×"
            if eng and eng["median_gbps"] and r["median_gbps"]
            else "—"
        )
        pct = f" {100 * r['median_gbps'] / link:.0f}% |" if link else ""
        lines.append(
            f"| {r['contender']} | {_fmt(r['median_gbps'])} | "
            f"{_fmt(r['min_gbps'])}–{_fmt(r['max_gbps'])} |{pct} "
            f"{_fmt(r['max_rss_mib'], '.0f')} | {ratio} |"
        )
    return [*lines, ""]


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
        lines += _case_table([r for r in rows if r["case"] == case])
    if sweep:
        lines.append("#### Engine sweep (multipart, HTTP, ETag check on)")
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
        lines.append("#### Targets")
        lines.append("")
        lines.append("| issue | target | measured | goal | met | detail |")
        lines.append("| ---: | --- | ---: | ---: | :---: | --- |")
        for t in result["targets"]:
            met = "—" if t["value"] is None else ("yes" if t["met"] else "NO")
            lines.append(
                f"| {t.get('issue', '')} | {t['target']} | {_fmt(t['value'])} | {t['goal']:g} | "
                f"{met} | {t['detail']} |"
            )
        lines.append("")
    return "\n".join(lines)


_PALETTE = {"engine": "#1f77b4", "peer": "#ff7f0e", "ceiling": "#7f7f7f"}


def _bars(ax: Any, rows: list[Row], cases: list[str], prefix: bool) -> None:
    """Horizontal bars (median, whiskers min-max) of ``cases``, fastest first per case."""
    labels, values, lows, highs, colors = [], [], [], [], []
    for case in cases:
        for r in sorted(
            (x for x in rows if x["case"] == case), key=lambda x: -(x["median_gbps"] or 0)
        ):
            labels.append(f"{case}: {r['contender']}" if prefix else r["contender"])
            values.append(r["median_gbps"])
            lows.append(r["median_gbps"] - r["min_gbps"])
            highs.append(r["max_gbps"] - r["median_gbps"])
            colors.append(_PALETTE.get(r["group"], "#999999"))
    ypos = list(range(len(labels)))[::-1]
    ax.barh(ypos, values, xerr=[lows, highs], color=colors, capsize=2)
    ax.set_yticks(ypos)
    ax.set_yticklabels(labels, fontsize=7)
    ax.grid(axis="x", alpha=0.3)


def _wan_panel(ax: Any, rows: list[Row], case: str) -> None:
    """One WAN case, with its link capacity drawn as the limit."""
    mine = [r for r in rows if r["case"] == case]
    _bars(ax, mine, [case], prefix=False)
    link = mine[0].get("link_gbps")
    if link:
        ax.axvline(link, color="#d62728", linestyle="--", linewidth=1.2, label="link capacity")
        ax.legend(fontsize=7, loc="lower right")
        ax.set_xlim(0, link * 1.15)
    ax.set_title(f"{mine[0]['label']}: GB/s by process wall, limit {link:.3f} GB/s", fontsize=8)


def _sweep_panel(ax2: Any, rows: list[Row]) -> None:
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
    ax2.set_xscale("log", base=2)
    ticks = sorted({r["concurrency"] for r in sweep})
    ax2.set_xticks(ticks, [str(t) for t in ticks])
    ax2.set_xlabel("concurrency (engine, multipart, HTTP, ETag check on)")
    ax2.set_ylabel("GB/s")
    ax3.set_ylabel("peak RSS MiB")
    ax3.axhline(100, color="red", alpha=0.3, linewidth=1)
    h1, l1 = ax2.get_legend_handles_labels()
    h2, l2 = ax3.get_legend_handles_labels()
    if h1:
        ax2.legend(h1 + h2, l1 + l2, fontsize=7, loc="lower right")
    ax2.grid(alpha=0.3)


def plot(result: dict[str, Any], path: Path) -> None:
    """Loopback cases, each WAN case with its link as the limit, and the engine sweep."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows: list[Row] = [r for r in result["summary"] if r["median_gbps"] is not None]
    order: list[str] = []
    for r in rows:
        if r["case"] not in order:
            order.append(r["case"])
    wan = [c for c in order if any(r["case"] == c and r.get("link_gbps") for r in rows)]
    main = [c for c in order if c not in wan and not c.startswith("sweep-")]
    m = result["machine"]

    def loopback(ax: Any) -> None:
        _bars(ax, rows, main, prefix=True)
        ax.set_xlabel("GB/s (median, whiskers min–max)")
        ax.set_title(f"Upload throughput over loopback — {m['cpu']}, {m['cores']} cores")

    def count(cases: list[str]) -> int:
        return sum(1 for r in rows if r["case"] in cases)

    panels: list[tuple[float, Callable[[Any], None]]] = []
    if main:
        panels.append((max(3.0, 0.3 * count(main)), loopback))
    for case in wan:
        panels.append((max(1.5, 0.35 * count([case])), partial(_wan_panel, rows=rows, case=case)))
    if any(r["case"].startswith("sweep-") for r in rows):
        panels.append((3.0, partial(_sweep_panel, rows=rows)))
    if not panels:
        return
    fig = plt.figure(figsize=(13, 1 + sum(h for h, _ in panels)))
    gs = fig.add_gridspec(len(panels), 1, height_ratios=[h for h, _ in panels])
    for i, (_, draw) in enumerate(panels):
        draw(fig.add_subplot(gs[i]))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
