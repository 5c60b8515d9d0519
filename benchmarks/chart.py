"""The results chart (PNG, matplotlib): small-GET throughput, latency and CPU per request; large-body MB/s."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.load import Row
from benchmarks.targets import TARGET_COLORS, TARGET_LABELS, TARGETS


def chart(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [Row(**r) for r in report["rows"]]
    targets = [t for t in TARGETS if any(r.target == t for r in rows)]
    colors = TARGET_COLORS
    fig, axes = plt.subplots(2, 2, figsize=(13, 9.5))
    (ax_rps, ax_lat), (ax_cpu, ax_mb) = axes
    for i, t in enumerate(targets):
        small = sorted((r for r in rows if r.target == t and r.kind == "small"), key=lambda r: r.concurrency)
        if not small:
            continue
        cs = [r.concurrency for r in small]
        lw = 2.6 if t == "gateway" else 1.6
        kw = {"color": colors[t], "lw": lw, "marker": "o"}
        label = "direct (wrk + backend, one core)" if t == "direct" else TARGET_LABELS[t]
        ax_rps.plot(cs, [max(r.rps, 1) for r in small], label=label, **kw)
        answered = [r for r in small if r.requests]
        ax_lat.plot([r.concurrency for r in answered], [r.p50_ms for r in answered], **kw)
        ax_lat.plot([r.concurrency for r in answered], [r.p99_ms for r in answered], ls="--",
                    **{**kw, "marker": "^", "lw": lw * 0.8})
        if t != "direct":
            pts = [(c, r.cpu_us_per_req) for c, r in zip(cs, small, strict=True) if r.cpu_us_per_req]
            ax_cpu.plot([c for c, _ in pts], [v for _, v in pts], **kw)
        for r in small:
            late = r.errors_detail["timeout"] + r.errors_detail.get("unanswered", 0)
            if late:
                ax_rps.annotate(f"{late} timeouts", (r.concurrency, max(r.rps, 1)), textcoords="offset points",
                                xytext=(-60, 6 + 9 * i), fontsize=7, color=colors[t])
    floor_line = ax_cpu.axhline(report["h11_floor"]["floor_us"], color="black", ls=":", lw=1.5)
    for ax in (ax_rps, ax_lat, ax_cpu):
        ax.set_xscale("log")
        ax.set_xticks([1, 10, 100, 1000], ["1", "10", "100", "1000"])
        ax.set_xlabel("concurrent connections (wrk -c)")
        ax.grid(True, which="both", alpha=0.3)
    ax_rps.set_title("Small GET: throughput (the proxy has one core)")
    ax_rps.set_ylabel("requests / s (log)")
    ax_rps.set_yscale("log")
    ax_lat.set_title("Small GET: latency, p50 (solid ●) and p99 (dashed ▲)")
    ax_lat.set_ylabel("ms (log)")
    ax_lat.set_yscale("log")
    ax_cpu.set_title("Small GET: proxy CPU time per request")
    ax_cpu.set_ylabel("CPU µs / request (log)")
    ax_cpu.set_yscale("log")
    ax_cpu.legend([floor_line], [f"h11 floor {report['h11_floor']['floor_us']:.0f} µs"], fontsize=8, loc="lower right")
    big = [s for s in ("1 MiB GET", "10 MiB GET", "64 KiB POST") if any(r.scenario == s for r in rows)]
    width = 0.8 / max(len(targets), 1)
    for i, t in enumerate(targets):
        vals = []
        for s in big:
            found = next((r for r in rows if r.target == t and r.scenario == s), None)
            vals.append(found.mbps if found and found.mbps is not None else 0)
        xs = [j + (i - (len(targets) - 1) / 2) * width for j in range(len(big))]
        bars = ax_mb.bar(xs, vals, width, label=TARGET_LABELS[t], color=colors[t])
        ax_mb.bar_label(bars, fmt="%.0f", fontsize=6, padding=1)
    ax_mb.set_xticks(range(len(big)), [f"{s} (c=10)" for s in big])
    ax_mb.set_title("Large bodies: throughput")
    ax_mb.set_ylabel("MB/s")
    ax_mb.grid(True, axis="y", alpha=0.3)
    meta = report["meta"]
    fig.suptitle(
        f"gateway vs direct and peers — {meta['date']}, {meta['duration_s']:g} s/row, "
        f"{'proxy pinned to its own core' if meta['pinned'] else 'not pinned'}",
        fontsize=12,
    )
    handles, labels = ax_rps.get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=max(1, len(labels)), bbox_to_anchor=(0.5, 0.965), fontsize=9,
               frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.94))
    fig.savefig(path, dpi=110)
    plt.close(fig)

