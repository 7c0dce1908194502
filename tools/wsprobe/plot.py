"""``wsprobe bench --plot``: one PNG with the latency distribution and throughput over time.

Left, the latency percentile plot as HdrHistogram draws it: x is ``1 / (1 - percentile)`` on
a log scale, labelled 50%, 90%, 99%, 99.9%, ..., so every "nine" gets the same width and
the tail is as visible as the median; y is milliseconds. It is drawn from the distribution
of the merged histogram in the report (``LoadReport.latency_distribution``), plus the
service latency in an open loop. Right, ops/s per interval (bars) with that interval's p99 on
a second axis.

matplotlib is an optional dependency (``pip install gearhall[plot]``), imported only here and
only when a plot is asked for, through ``importlib``: the package's import rules
(``tools/check_imports.py``) list what ``tools/wsprobe`` may import at module level, and this
extra is not among them. It draws on a bare ``Figure`` with the Agg canvas: no pyplot, no
global state, no display needed.
"""

from __future__ import annotations

import importlib
from typing import Any

from tools.wsprobe.bench_report import LoadReport
from tools.wsprobe.stats import PercentilePoint

INSTALL_HINT = "install gearhall[plot] (pip install 'gearhall[plot]')"

_NINES = [(2.0, "50%"), (10.0, "90%"), (100.0, "99%"), (1e3, "99.9%"), (1e4, "99.99%"),
          (1e5, "99.999%"), (1e6, "99.9999%")]  # fmt: skip


def available() -> bool:
    """Whether matplotlib can be imported."""
    try:
        importlib.import_module("matplotlib")
    except ImportError:
        return False
    return True


def _curve(points: list[PercentilePoint]) -> tuple[list[float], list[float]]:
    """x = 1 / (1 - p) and y = ms, leaving out p = 1 (the maximum: x would be infinite)."""
    below = [p for p in points if p.percentile < 1.0]
    return [1.0 / (1.0 - p.percentile) for p in below], [p.ms for p in below]


def _percentiles(ax: Any, report: LoadReport) -> None:
    x, y = _curve(report.latency_distribution)
    label = "latency (from intended send)" if report.mode == "open" else "latency"
    ax.step(x, y, where="post", label=label, color="tab:blue")
    if report.service_latency_distribution:
        sx, sy = _curve(report.service_latency_distribution)
        ax.step(sx, sy, where="post", label="service (from actual send)", color="tab:green")
    ax.axhline(report.latency.max_ms, color="tab:red", linestyle=":", linewidth=1,
               label=f"max {report.latency.max_ms:.2f} ms")  # fmt: skip
    right = max([10.0, *x]) * 1.5
    ticks = [(at, text) for at, text in _NINES if at <= right]
    ax.set_xscale("log")
    ax.set_xlim(1.0, right)
    ax.set_xticks([at for at, _ in ticks], [text for _, text in ticks])
    ax.minorticks_off()
    ax.set_ylim(bottom=0)
    ax.set_xlabel("percentile")
    ax.set_ylabel("ms")
    ax.set_title(f"latency distribution ({report.latency.count:,} replies)")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(loc="upper left", fontsize="small")


def _throughput(ax: Any, report: LoadReport) -> None:
    points = report.timeline
    interval = report.config.interval_s
    starts = [i * interval for i in range(len(points))]
    widths = [p.t_s - s for p, s in zip(points, starts, strict=True)]
    ax.bar(starts, [p.ops_per_s for p in points], width=widths, align="edge",
           color="tab:blue", alpha=0.6, edgecolor="white", label="ops/s")  # fmt: skip
    ax.set_xlabel("seconds into the measured window")
    ax.set_ylabel("ops/s")
    ax.set_xlim(0, report.window_s)
    ax.set_title(f"throughput ({report.ops_per_s:,.0f} ops/s overall)")
    ax.grid(True, axis="y", alpha=0.3)
    twin = ax.twinx()
    twin.plot([p.t_s - w / 2 for p, w in zip(points, widths, strict=True)],
              [p.p99_ms for p in points], color="tab:red", marker="o", label="p99")  # fmt: skip
    twin.set_ylabel("p99 ms", color="tab:red")
    twin.set_ylim(bottom=0)
    handles, labels = ax.get_legend_handles_labels()
    twin_handles, twin_labels = twin.get_legend_handles_labels()
    ax.legend(handles + twin_handles, labels + twin_labels, loc="lower right", fontsize="small")


def write_plot(report: LoadReport, path: str) -> None:
    """Draw ``report`` into the PNG file ``path``.

    Raises:
        ImportError: matplotlib is not installed (:func:`available` says so beforehand).
        OSError: the file cannot be written.
    """
    figure = importlib.import_module("matplotlib.figure")
    agg = importlib.import_module("matplotlib.backends.backend_agg")
    fig = figure.Figure(figsize=(12.0, 5.0), dpi=100, layout="constrained")
    agg.FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2)
    _percentiles(left, report)
    _throughput(right, report)
    c = report.config
    mode = "closed loop" if c.rate is None else f"open loop {c.rate:,g} ops/s"
    fig.suptitle(
        f"wsprobe bench {report.mix}: {c.clients} clients, {mode}, {c.connect.encoding}, "
        f"{report.error_count:,} errors"
    )
    fig.savefig(path, format="png")
