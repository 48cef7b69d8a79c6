"""One self-contained interactive page (plotly, its JavaScript inlined) for browsing a sweep.

Per model x input group: quality against cost with a menu to switch the cost (hover shows each
cell's setting and figures; frontier points outlined and joined), and the time per stage of
every setting. Then the tables of the Markdown summary. It opens offline, from a file.
"""

from __future__ import annotations

import html
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go

from pipeline.methods import method_colour
from pipeline.report.figures import STAGE_COLOURS
from pipeline.report.pareto import COST, GROUP, STAGES, Metric

STYLE = """
body { font-family: system-ui, sans-serif; margin: 24px auto; max-width: 1200px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 0.8em; margin: 8px 0 16px; }
th, td { border: 1px solid #ddd; padding: 3px 6px; text-align: right; }
th { background: #f4f4f4; } td:first-child, th:first-child { text-align: left; }
.note { color: #555; font-size: 0.9em; }
"""


def _group_figure(points: pd.DataFrame, quality: Metric, costs: list[str], title: str) -> go.Figure:
    fig = go.Figure()
    bounds = [0]  # the traces of the k-th cost are fig.data[bounds[k]:bounds[k + 1]]
    labels = []
    for cost_name in costs:
        data = points[(points.cost_metric == cost_name) & points.on_frontier.notna()]
        if data.empty:
            continue
        labels.append(cost_name)
        for method, part in data.groupby("method", sort=False):
            front = part.on_frontier.astype(bool)
            fig.add_trace(go.Scatter(
                x=part.cost, y=part.quality, mode="markers", name=method, legendgroup=method,
                marker=dict(color=method_colour(method), size=[11 if f else 7 for f in front],
                            opacity=1.0, line=dict(color=["black" if f else "rgba(0,0,0,0)" for f in front], width=1.2)),
                text=part.setting, customdata=front.map({True: "on the frontier", False: "dominated"}),
                hovertemplate="%{text}<br>" + COST[cost_name].label + ": %{x:.4g}<br>" + quality.label
                              + ": %{y:.4g}<br>%{customdata}<extra>" + method + "</extra>",
                visible=len(bounds) == 1,
            ))
        front = data[data.on_frontier.astype(bool)].sort_values("cost")
        fig.add_trace(go.Scatter(x=front.cost, y=front.quality, mode="lines", line=dict(shape="hv", color="black", width=1),
                                 name="frontier", hoverinfo="skip", visible=len(bounds) == 1))
        bounds.append(len(fig.data))
    masks = [[bounds[k] <= i < bounds[k + 1] for i in range(len(fig.data))] for k in range(len(labels))]
    fig.update_layout(
        title=title, height=460, margin=dict(t=70, b=50),
        xaxis_title=COST[labels[0]].label if labels else "", yaxis_title=quality.label,
        updatemenus=[dict(
            buttons=[dict(label=COST[c].label, method="update",
                          args=[{"visible": masks[k]}, {"xaxis.title.text": COST[c].label}])
                     for k, c in enumerate(labels)],
            direction="down", x=1.0, xanchor="right", y=1.18, yanchor="top",
        )] if len(labels) > 1 else [],
    )
    return fig


def _stage_figure(group_rows: pd.DataFrame, title: str) -> go.Figure:
    ordered = group_rows.assign(_base=group_rows.method != "baseline").sort_values(["_base", "setting"])
    fig = go.Figure()
    for stage in STAGES:
        fig.add_trace(go.Bar(y=ordered.setting, x=ordered[stage], name=stage.removesuffix("_ms"), orientation="h",
                             marker_color=STAGE_COLOURS[stage],
                             hovertemplate="%{y}<br>" + stage.removesuffix("_ms") + ": %{x:.3g} ms<extra></extra>"))
    fig.update_layout(barmode="stack", title=title, height=max(300, 60 + 22 * len(ordered)),
                      xaxis_title="time per request (ms, median per stage)", yaxis=dict(autorange="reversed"),
                      margin=dict(l=260, t=60, b=50))
    return fig


def write_html(path: Path, title: str, intro: list[str], rows: pd.DataFrame, points: pd.DataFrame,
               quality: Metric, costs: list[str], tables: dict[str, pd.DataFrame]) -> Path:
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>"]
    parts += [f"<p class='note'>{html.escape(line)}</p>" for line in intro]
    first = True
    for (model, inp), group in rows.groupby(GROUP, sort=True):
        parts.append(f"<h2>{html.escape(model)} | {html.escape(inp)}</h2>")
        mine = points[(points.model == model) & (points.input == inp)]
        for fig in (_group_figure(mine, quality, costs, f"{quality.label} against cost (menu: which cost)"),
                    _stage_figure(group, "time per stage")):
            parts.append(fig.to_html(full_html=False, include_plotlyjs="inline" if first else False))
            first = False
    for name, table in tables.items():
        parts.append(f"<h2>{html.escape(name)}</h2>")
        parts.append(table.to_html(index=False, na_rep="-", float_format=lambda v: f"{v:.4g}", border=0))
    parts.append("</body></html>")
    path.write_text("\n".join(parts))
    return path
