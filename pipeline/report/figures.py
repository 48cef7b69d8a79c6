"""The report's PNG figures (matplotlib, headless): one panel per model x input group.

Layout, so that sizes are predictable: panels of 550 x 420 px (5.5 x 4.2 in at 100 dpi), at most
three a row, and a band of 80 px at the bottom for the legend. Colours follow the method, the
same in every figure (``pipeline/methods.py``).
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display: the report runs on servers and in CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from pipeline.methods import method_colour  # noqa: E402
from pipeline.methods import order as method_order  # noqa: E402
from pipeline.report.pareto import COST, GROUP, STAGES, Metric  # noqa: E402

PANEL_W, PANEL_H, LEGEND_H, DPI, MAX_COLS = 5.5, 4.2, 0.8, 100, 3
MAX_BARS = 16
STAGE_COLOURS = {"preprocess_ms": "#bbbbbb", "vision_ms": "#1f77b4", "prefill_ms": "#ff7f0e", "decode_ms": "#2ca02c"}


def layout(panels: int, max_cols: int = MAX_COLS) -> tuple[int, int]:
    cols = min(max_cols, max(1, panels))
    return cols, max(1, math.ceil(panels / cols))


def _figure(panels: int, max_cols: int = MAX_COLS):
    cols, rows = layout(panels, max_cols)
    # constrained layout fits tick labels, titles and the legend inside the fixed figure size
    fig, axes = plt.subplots(rows, cols, figsize=(cols * PANEL_W, rows * PANEL_H + LEGEND_H), dpi=DPI, squeeze=False,
                             layout="constrained")
    flat = axes.ravel()
    for ax in flat[panels:]:
        ax.set_axis_off()
    return fig, flat


def _legend(fig, handles: dict[str, object], title: str) -> None:
    """One legend for the figure; methods in their fixed order (``pipeline/methods.py``), other
    entries (frontier, baseline line, stages) after them in the order drawn."""
    if handles:
        names = sorted(handles, key=lambda n: (method_order(n), list(handles).index(n)))
        fig.legend([handles[n] for n in names], names, loc="outside lower center", ncol=min(8, len(handles)),
                   title=title, frameon=False, fontsize=8, title_fontsize=8)


def _save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=DPI)  # no bbox_inches="tight": the size stays as laid out
    plt.close(fig)
    return path


def _by_method(frame: pd.DataFrame):
    """(method, rows) in the methods' fixed order, so that every panel draws and lists them alike."""
    names = sorted(frame.method.unique(), key=lambda m: (method_order(m), m))
    return ((m, frame[frame.method == m]) for m in names)


def _quality_axis(ax, quality: Metric) -> None:
    """The quality label; a lower-is-better quality (KL) on a reversed axis, so that up is better
    in every panel and the frontier steps up and to the right as for accuracy."""
    label = quality.label if len(quality.label) < 48 else quality.label.replace(": ", ":\n", 1)
    if not quality.higher_is_better:
        ax.invert_yaxis()
        label += "\n(axis reversed: up is better)"
    ax.set_ylabel(label, fontsize=8)


def frontier_png(points: pd.DataFrame, cost_name: str, quality: Metric, path: Path, title: str) -> Path | None:
    """Quality against one cost per group. Every point carries its number (``point``, the report's
    key lists them); frontier points are outlined, joined and labelled with their setting;
    dominated ones faded; latencies with p10–p90 whiskers."""
    data = points[(points.cost_metric == cost_name) & points.on_frontier.notna()]
    if data.empty:
        return None
    groups = list(data.groupby(GROUP, sort=True))
    fig, axes = _figure(len(groups))
    handles: dict[str, object] = {}
    for ax, ((model, inp), group) in zip(axes, groups):
        for method, part in _by_method(group):
            on = part.on_frontier.astype(bool)
            colour = method_colour(method)
            if part.cost_p10.notna().any():
                ax.errorbar(part.cost, part.quality, xerr=[(part.cost - part.cost_p10).clip(lower=0).fillna(0),
                                                           (part.cost_p90 - part.cost).clip(lower=0).fillna(0)],
                            fmt="none", ecolor=colour, alpha=0.5, elinewidth=0.8, capsize=1.5, zorder=1)
            ax.scatter(part[~on].cost, part[~on].quality, s=22, color=colour, alpha=0.35, linewidths=0)
            handles[method] = ax.scatter(part[on].cost, part[on].quality, s=46, color=colour, edgecolors="black",
                                         linewidths=0.8, zorder=3)
            for row in part[~on].itertuples():
                ax.annotate(str(row.point), (row.cost, row.quality), fontsize=6, color="#555555", xytext=(3, -7),
                            textcoords="offset points", annotation_clip=True)
        front = group[group.on_frontier.astype(bool)].sort_values("cost")
        ax.step(front.cost, front.quality, where="post", color="black", linewidth=0.9, alpha=0.7, zorder=2)
        ax.margins(x=0.08, y=0.14)  # room for the labels of points at the edges
        left, right = ax.get_xlim()
        for i, row in enumerate(front.itertuples()):  # staggered, so neighbouring labels do not overprint
            leftward = (row.cost - left) > 0.55 * (right - left)  # a label in the right part runs to the left
            ax.annotate(f"{row.point} {row.setting}", (row.cost, row.quality), fontsize=6.5,
                        xytext=(-4 if leftward else 4, 4 + 9 * (i % 3)), ha="right" if leftward else "left",
                        textcoords="offset points", annotation_clip=True, clip_on=True)
        ax.set_title(f"{model} | {inp}", fontsize=9)
        ax.set_xlabel(COST[cost_name].label + (" (whiskers: p10–p90)" if group.cost_p10.notna().any() else ""),
                      fontsize=8)
        _quality_axis(ax, quality)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    handles["frontier (outlined, joined, labelled)"] = plt.Line2D([], [], color="black", linewidth=0.9)
    handles["dominated (faded; numbers: the report's key)"] = plt.Line2D([], [], color="grey", alpha=0.35, marker="o",
                                                                         linestyle="none")
    _legend(fig, handles, "method")
    return _save(fig, path)


def stages_png(breakdown: pd.DataFrame, frontier_settings: dict[tuple, set], path: Path, title: str) -> Path | None:
    """Stacked horizontal bars of time per stage for each setting of each group (methods in their
    fixed order, the baseline first; with more than 16 settings, the baseline and the end-to-end
    frontier), each stage with a p10–p90 whisker at its end."""
    data = breakdown.dropna(subset=["vision_ms"])
    if data.empty:
        return None
    groups = list(data.groupby(GROUP, sort=True))
    fig, axes = _figure(len(groups))
    handles: dict[str, object] = {}
    for ax, (key, group) in zip(axes, groups):
        group = group.assign(_order=group.method.map(method_order)).sort_values(["_order", "setting"])
        if len(group) > MAX_BARS:
            keep = frontier_settings.get(key, set())
            group = group[(group.method == "baseline") | group.setting.isin(keep)].head(MAX_BARS)
        y = np.arange(len(group))
        left = np.zeros(len(group))
        for stage in STAGES:
            values = group[stage].astype(float).fillna(0).to_numpy()
            handles[stage.removesuffix("_ms")] = ax.barh(y, values, left=left, color=STAGE_COLOURS[stage], height=0.7)
            left += values
            if f"{stage}_p10" in group and group[f"{stage}_p10"].notna().any():
                low = (group[stage] - group[f"{stage}_p10"]).clip(lower=0).fillna(0)
                high = (group[f"{stage}_p90"] - group[stage]).clip(lower=0).fillna(0)
                ax.errorbar(left, y, xerr=[low, high], fmt="none", ecolor="black", elinewidth=0.6, capsize=1.5)
        ax.set_yticks(y, group.setting, fontsize=6.5)
        ax.invert_yaxis()
        ax.set_xlabel("time per request (ms, median per stage; whiskers: p10–p90)", fontsize=8)
        ax.set_title(f"{key[0]} | {key[1]}", fontsize=9)
        ax.tick_params(axis="x", labelsize=7)
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(title, fontsize=10)
    _legend(fig, handles, "stage")
    return _save(fig, path)


# the reduction ratios of quality_vs_ratio.png, one panel each (a method is on the panels of the
# ratios its rows carry): the column and its axis label
RATIOS = (
    ("ipcv_reduction_ratio", "IPCV r (vision tokens removed in the encoder)"),
    ("llm_reduction_ratio", "LLM r' (visual tokens removed in the prefill)"),
)


def ratio_png(rows: pd.DataFrame, quality: Metric, path: Path, title: str) -> Path | None:
    """Quality against reduction ratio, per group one panel for IPCV's r (the vision-side methods,
    stacked ones averaged over their r') and one for the LLM's r' (LLM-only and stacked methods,
    averaged over their r); one line per method (mean over its other settings), the baseline as a
    dashed line. The two ratios remove tokens at different places, so they never share an axis."""
    data = rows[rows[quality.column].notna()]
    panels = [(key, group, column, label) for key, group in data.groupby(GROUP, sort=True)
              for column, label in RATIOS if column in group and group[column].notna().any()]
    if not panels:
        return None
    fig, axes = _figure(len(panels), max_cols=2)
    handles: dict[str, object] = {}
    for ax, ((model, inp), group, column, label) in zip(axes, panels):
        for method, part in _by_method(group[group[column].notna()]):
            colour = method_colour(method)
            ax.scatter(part[column], part[quality.column], s=14, color=colour, alpha=0.35, linewidths=0)
            mean = part.groupby(column)[quality.column].mean()
            (handles[method],) = ax.plot(mean.index, mean.values, marker="o", color=colour, linewidth=1.2, markersize=4)
        base = group[group.method == "baseline"][quality.column]
        if len(base):
            handles["baseline (uncompressed)"] = ax.axhline(float(base.iloc[0]), color="black", linestyle="--", linewidth=0.9)
        ax.set_title(f"{model} | {inp}: {label.split(' (')[0]}", fontsize=9)
        ax.set_xlabel(label, fontsize=8)
        _quality_axis(ax, quality)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    _legend(fig, handles, "method")
    return _save(fig, path)
