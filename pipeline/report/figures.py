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
from pipeline.report.pareto import COST, GROUP, STAGES, Metric  # noqa: E402

PANEL_W, PANEL_H, LEGEND_H, DPI, MAX_COLS = 5.5, 4.2, 0.8, 100, 3
MAX_BARS = 16
STAGE_COLOURS = {"preprocess_ms": "#bbbbbb", "vision_ms": "#1f77b4", "prefill_ms": "#ff7f0e", "decode_ms": "#2ca02c"}


def layout(panels: int) -> tuple[int, int]:
    cols = min(MAX_COLS, max(1, panels))
    return cols, max(1, math.ceil(panels / cols))


def _figure(panels: int):
    cols, rows = layout(panels)
    # constrained layout fits tick labels, titles and the legend inside the fixed figure size
    fig, axes = plt.subplots(rows, cols, figsize=(cols * PANEL_W, rows * PANEL_H + LEGEND_H), dpi=DPI, squeeze=False,
                             layout="constrained")
    flat = axes.ravel()
    for ax in flat[panels:]:
        ax.set_axis_off()
    return fig, flat


def _legend(fig, handles: dict[str, object], title: str) -> None:
    if handles:
        fig.legend(list(handles.values()), list(handles), loc="outside lower center", ncol=min(8, len(handles)),
                   title=title, frameon=False, fontsize=8, title_fontsize=8)


def _save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=DPI)  # no bbox_inches="tight": the size stays as laid out
    plt.close(fig)
    return path


def frontier_png(points: pd.DataFrame, cost_name: str, quality: Metric, path: Path, title: str) -> Path | None:
    """Quality against one cost per group; frontier points joined and labelled, dominated ones faded."""
    data = points[(points.cost_metric == cost_name) & points.on_frontier.notna()]
    if data.empty:
        return None
    groups = list(data.groupby(GROUP, sort=True))
    fig, axes = _figure(len(groups))
    handles: dict[str, object] = {}
    for ax, ((model, inp), group) in zip(axes, groups):
        for method, part in group.groupby("method", sort=False):
            front = part[part.on_frontier.astype(bool)]
            rest = part[~part.on_frontier.astype(bool)]
            colour = method_colour(method)
            ax.scatter(rest.cost, rest.quality, s=22, color=colour, alpha=0.35, linewidths=0)
            handles[method] = ax.scatter(front.cost, front.quality, s=46, color=colour, edgecolors="black",
                                         linewidths=0.8, zorder=3)
        front = group[group.on_frontier.astype(bool)].sort_values("cost")
        ax.step(front.cost, front.quality, where="post", color="black", linewidth=0.9, alpha=0.7, zorder=2)
        for i, (_, row) in enumerate(front.iterrows()):  # staggered, so neighbouring labels do not overprint
            ax.annotate(row.setting, (row.cost, row.quality), fontsize=6.5, xytext=(4, 4 + 9 * (i % 3)),
                        textcoords="offset points", annotation_clip=True, clip_on=True)
        ax.margins(x=0.08, y=0.14)  # room for the labels of points at the edges
        ax.set_title(f"{model} | {inp}", fontsize=9)
        ax.set_xlabel(COST[cost_name].label, fontsize=8)
        ax.set_ylabel(quality.label if len(quality.label) < 48 else quality.label.replace(": ", ":\n", 1), fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    handles["frontier (outlined, joined)"] = plt.Line2D([], [], color="black", linewidth=0.9)
    _legend(fig, handles, "method")
    return _save(fig, path)


def stages_png(breakdown: pd.DataFrame, frontier_settings: dict[tuple, set], path: Path, title: str) -> Path | None:
    """Stacked horizontal bars of time per stage for each setting of each group (the baseline
    first; with more than 16 settings, the baseline and the end-to-end frontier)."""
    data = breakdown.dropna(subset=["vision_ms"])
    if data.empty:
        return None
    groups = list(data.groupby(GROUP, sort=True))
    fig, axes = _figure(len(groups))
    handles: dict[str, object] = {}
    for ax, (key, group) in zip(axes, groups):
        group = group.assign(_base=group.method != "baseline").sort_values(["_base", "setting"])
        if len(group) > MAX_BARS:
            keep = frontier_settings.get(key, set())
            group = group[(group.method == "baseline") | group.setting.isin(keep)].head(MAX_BARS)
        y = np.arange(len(group))
        left = np.zeros(len(group))
        for stage in STAGES:
            values = group[stage].astype(float).fillna(0).to_numpy()
            handles[stage.removesuffix("_ms")] = ax.barh(y, values, left=left, color=STAGE_COLOURS[stage], height=0.7)
            left += values
        ax.set_yticks(y, group.setting, fontsize=6.5)
        ax.invert_yaxis()
        ax.set_xlabel("time per request (ms, median per stage)", fontsize=8)
        ax.set_title(f"{key[0]} | {key[1]}", fontsize=9)
        ax.tick_params(axis="x", labelsize=7)
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(title, fontsize=10)
    _legend(fig, handles, "stage")
    return _save(fig, path)


def ratio_png(rows: pd.DataFrame, quality: Metric, path: Path, title: str) -> Path | None:
    """Quality against reduction ratio: IPCV's r for vision methods, r' for LLM-only methods;
    one line per method (mean over its other settings), the baseline as a dashed line."""
    data = rows.assign(ratio=rows.ipcv_reduction_ratio.where(rows.ipcv_reduction_ratio.notna(), rows.llm_reduction_ratio)
                       if "ipcv_reduction_ratio" in rows and "llm_reduction_ratio" in rows else np.nan)
    data = data[data[quality.column].notna()]
    if data.empty or data.ratio.notna().sum() == 0:
        return None
    groups = list(data.groupby(GROUP, sort=True))
    fig, axes = _figure(len(groups))
    handles: dict[str, object] = {}
    for ax, ((model, inp), group) in zip(axes, groups):
        for method, part in group[group.ratio.notna()].groupby("method", sort=False):
            colour = method_colour(method)
            ax.scatter(part.ratio, part[quality.column], s=14, color=colour, alpha=0.35, linewidths=0)
            mean = part.groupby("ratio")[quality.column].mean()
            (handles[method],) = ax.plot(mean.index, mean.values, marker="o", color=colour, linewidth=1.2, markersize=4)
        base = group[group.method == "baseline"][quality.column]
        if len(base):
            handles["baseline (uncompressed)"] = ax.axhline(float(base.iloc[0]), color="black", linestyle="--", linewidth=0.9)
        ax.set_title(f"{model} | {inp}", fontsize=9)
        ax.set_xlabel("reduction ratio (IPCV r; r' for LLM-only methods)", fontsize=8)
        ax.set_ylabel(quality.label if len(quality.label) < 48 else quality.label.replace(": ", ":\n", 1), fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    _legend(fig, handles, "method")
    return _save(fig, path)
