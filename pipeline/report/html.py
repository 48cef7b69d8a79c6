"""One self-contained interactive page (plotly, its JavaScript inlined) for browsing a sweep.

A provenance header, then per model x input group: quality against cost with a menu to switch the
cost (hover shows each cell's number, setting and figures; frontier points outlined, joined and
labelled; latencies with p10–p90 error bars; a lower-is-better quality axis reversed, so that up
is always better), and the time per stage of every setting with each stage's p10–p90. Then the
tables of the Markdown summary, with human headers. It opens offline, from a file.
"""

from __future__ import annotations

import html
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go

from pipeline.methods import method_colour
from pipeline.methods import order as method_order
from pipeline.report import tables as shown
from pipeline.report.figures import STAGE_COLOURS
from pipeline.report.markdown import LATENCY_NOTE
from pipeline.report.pareto import COST, GROUP, STAGES, Metric

STYLE = """
body { font-family: system-ui, sans-serif; margin: 24px auto; max-width: 1200px; padding: 0 12px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; }
.table { overflow-x: auto; max-width: 100%; }
table { border-collapse: collapse; font-size: 0.78em; margin: 8px 0 16px; }
th, td { border: 1px solid #ddd; padding: 3px 6px; text-align: right; }
th { background: #f4f4f4; vertical-align: bottom; max-width: 9em; }
td { white-space: nowrap; }
td:nth-child(-n+3), th:nth-child(-n+3) { text-align: left; }  /* model, input, setting */
table.provenance td, table.provenance th { white-space: normal; text-align: left; }
.note { color: #555; font-size: 0.9em; }
"""


def _error_x(part: pd.DataFrame) -> dict | None:
    """p10–p90 whiskers of a latency cost; none for FLOPs and memory (no spread)."""
    if part.cost_p10.isna().all():
        return None
    return dict(type="data", symmetric=False, array=(part.cost_p90 - part.cost).clip(lower=0).fillna(0),
                arrayminus=(part.cost - part.cost_p10).clip(lower=0).fillna(0), thickness=1, width=2)


def _group_figure(points: pd.DataFrame, quality: Metric, costs: list[str], title: str) -> go.Figure:
    fig = go.Figure()
    bounds = [0]  # the traces of the k-th cost are fig.data[bounds[k]:bounds[k + 1]]
    labels = []
    for cost_name in costs:
        data = points[(points.cost_metric == cost_name) & points.on_frontier.notna()]
        if data.empty:
            continue
        labels.append(cost_name)
        data = data.assign(_order=data.method.map(method_order)).sort_values(["_order", "point"])
        for method, part in data.groupby("method", sort=False):
            front = part.on_frontier.astype(bool)
            status = front.map({True: "on the frontier", False: "dominated"})
            fig.add_trace(go.Scatter(
                x=part.cost, y=part.quality, mode="markers", name=method, legendgroup=method,
                legendrank=method_order(method), error_x=_error_x(part),
                marker=dict(color=method_colour(method), size=[11 if f else 7 for f in front],
                            opacity=1.0, line=dict(color=["black" if f else "rgba(0,0,0,0)" for f in front], width=1.2)),
                text=[f"#{n} {s}" for n, s in zip(part.point, part.setting)],
                customdata=list(zip(status, part.cost_p10, part.cost_p90)),
                hovertemplate="%{text}<br>" + COST[cost_name].label + ": %{x:.3g}"
                              + ("" if part.cost_p10.isna().all() else " (p10–p90 %{customdata[1]:.3g}–%{customdata[2]:.3g})")
                              + "<br>" + quality.label + ": %{y:.3g}<br>%{customdata[0]}<extra>" + method + "</extra>",
                visible=len(bounds) == 1,
            ))
        front = data[data.on_frontier.astype(bool)].sort_values("cost")
        fig.add_trace(go.Scatter(x=front.cost, y=front.quality, mode="lines+text", name="frontier", legendrank=1000,
                                 line=dict(shape="hv", color="black", width=1), text=front.setting,
                                 textposition="top right", textfont=dict(size=9), hoverinfo="skip",
                                 visible=len(bounds) == 1))
        bounds.append(len(fig.data))
    masks = [[bounds[k] <= i < bounds[k + 1] for i in range(len(fig.data))] for k in range(len(labels))]
    fig.update_layout(
        title=dict(text=title, font=dict(size=14)), height=480, margin=dict(t=90, b=50),
        xaxis_title=COST[labels[0]].label if labels else "",
        yaxis=dict(title=quality.label + ("" if quality.higher_is_better else " (axis reversed: up is better)"),
                   autorange=True if quality.higher_is_better else "reversed"),
        updatemenus=[dict(
            buttons=[dict(label=COST[c].label, method="update",
                          args=[{"visible": masks[k]}, {"xaxis.title.text": COST[c].label}])
                     for k, c in enumerate(labels)],
            direction="down", x=1.0, xanchor="right", y=1.2, yanchor="bottom",
        )] if len(labels) > 1 else [],
    )
    return fig


def _stage_figure(group_rows: pd.DataFrame, title: str) -> go.Figure:
    ordered = group_rows.assign(_order=group_rows.method.map(method_order)).sort_values(["_order", "setting"])
    fig = go.Figure()
    for stage in STAGES:
        low, high = ordered.get(f"{stage}_p10"), ordered.get(f"{stage}_p90")
        whiskers = None if low is None or high is None or low.isna().all() else dict(
            type="data", symmetric=False, array=(high - ordered[stage]).clip(lower=0).fillna(0),
            arrayminus=(ordered[stage] - low).clip(lower=0).fillna(0), thickness=1, width=2)
        fig.add_trace(go.Bar(y=ordered.setting, x=ordered[stage], name=stage.removesuffix("_ms"), orientation="h",
                             marker_color=STAGE_COLOURS[stage], error_x=whiskers,
                             hovertemplate="%{y}<br>" + stage.removesuffix("_ms") + ": %{x:.3g} ms<extra></extra>"))
    fig.update_layout(barmode="stack", title=title, height=max(300, 60 + 22 * len(ordered)),
                      xaxis_title="time per request (ms, median per stage; whiskers: p10–p90)",
                      yaxis=dict(autorange="reversed"), margin=dict(l=260, t=60, b=50))
    return fig


def _table(frame: pd.DataFrame, classes: str = "") -> str:
    return f"<div class='table'>{frame.to_html(index=False, escape=True, border=0, classes=classes or None)}</div>"


def write_html(path: Path, title: str, header: dict[str, str], intro: list[str], rows: pd.DataFrame,
               points: pd.DataFrame, quality: Metric, costs: list[str], frames: dict[str, pd.DataFrame]) -> Path:
    """``frames``: the ``frontier`` (its cells on the first cost's frontier), ``speedup`` and ``stages`` tables."""
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>",
             _table(pd.DataFrame({"what": list(header), "value": list(header.values())}), "provenance")]
    parts += [f"<p class='note'>{html.escape(line)}</p>" for line in [*intro, LATENCY_NOTE]]
    first = True
    for (model, inp), group in rows.groupby(GROUP, sort=True):
        parts.append(f"<h2>{html.escape(model)} | {html.escape(inp)}</h2>")
        mine = points[(points.model == model) & (points.input == inp)]
        for fig in (_group_figure(mine, quality, costs, "quality against cost (the menu on the right picks the cost)"),
                    _stage_figure(group, "time per stage")):
            parts.append(fig.to_html(full_html=False, include_plotlyjs="inline" if first else False))
            first = False
    cost = COST[costs[0]]
    views = {f"Pareto frontier ({cost.label})": ("frontier", shown.frontier(cost, quality)),
             "Against the uncompressed baseline": ("speedup", shown.speedup(quality)),
             "Where the time goes": ("stages", shown.stages())}
    for name, (key, view) in views.items():
        parts += [f"<h2>{html.escape(name)}</h2>", _table(shown.render(frames[key], [*shown.GROUP, *view]))]
    parts.append("</body></html>")
    path.write_text("\n".join(parts))
    return path
