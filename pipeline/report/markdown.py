"""The report's Markdown summary (``report.md``): the page a person reads first.

A provenance header (where and how the figures were measured), then per model x input group: the
Pareto frontier on the first cost, the table against the uncompressed baseline, where the time
goes per stage and the key of the figures' numbered points; then the failed cells. Tables are
written by ``tables`` (3 significant figures, latencies with their p10–p90).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from pipeline import columns
from pipeline.report import numbers, pareto, tables

LATENCY_NOTE = ("Latencies are medians over the timed repeats, with their p10–p90 in brackets. A speed-up's "
                "interval runs from the baseline's p10 over the cell's p90 to the baseline's p90 over the cell's p10 "
                "(a conservative band, not a confidence interval); when it contains 1, or the method leaves that "
                f"stage's input unchanged, the speed-up is within noise and shown as {numbers.NOISE}: it is no gain, "
                "and tables rank it as 1.")


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "-"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (float, np.floating)):
        return numbers.sig(value)
    return str(value).replace("|", "\\|")


def markdown_table(frame: pd.DataFrame, columns: dict[str, str] | None = None) -> str:
    """``columns``: column -> header (default: every column under its own name). Missing values
    show as ``-``, numbers to 3 significant figures."""
    columns = columns or {c: c for c in frame.columns}
    head = "| " + " | ".join(columns.values()) + " |"
    rule = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(_fmt(row.get(c)) for c in columns) + " |" for row in frame.to_dict(orient="records")]
    return "\n".join([head, rule, *body])


def provenance_table(header: dict[str, str]) -> str:
    return markdown_table(pd.DataFrame({"what": list(header), "value": list(header.values())}))


def key_table(points: pd.DataFrame, costs: list[str]) -> str:
    """The figures' numbered points of one group: setting, and which costs' frontiers it is on."""
    records = []
    for (number, setting), rows in points.groupby(["point", "setting"], sort=True):
        front = [columns.get(c).header or c for c in costs
                 if (rows[rows.cost_metric == c].on_frontier == True).any()]  # noqa: E712
        records.append({"#": number, "setting": setting, "on the frontier of": ", ".join(front) or "none (dominated)"})
    return markdown_table(pd.DataFrame(records))


def summary(title, intro, header, rows, results, points, relative, stages, metric, costs, pngs, wandb_report) -> str:
    """The Markdown page."""
    out = [f"# IPCV study: {title}", "", provenance_table(header), "", *[f"- {line}" for line in intro], ""]
    primary = costs[0]
    cost = pareto.COST[primary]
    out += [f"Frontier: a cell is on it when no cell of its group costs at most as much with at least the same "
            f"quality and is strictly better in one. Quality axis: {metric.label}. Tables use {cost.label}; "
            f"`frontier.csv` has every cost. In the figures, frontier points are outlined, joined and labelled; "
            f"every point carries its number in its group's key below.", "", LATENCY_NOTE, ""]
    for png in pngs:
        out += [f"![{png.stem}]({png.name})", ""]
    for model, inp in rows.groupby(pareto.GROUP, sort=True).groups:
        mine = points[(points.model == model) & (points.input == inp)]
        first = mine[mine.cost_metric == primary]
        front = first[first.on_frontier == True].sort_values("cost")  # noqa: E712
        dominated = first[first.on_frontier == False]  # noqa: E712
        unranked = first[first.on_frontier.isna()]
        out += [f"## {model} | {inp}", "", f"Pareto frontier ({len(front)} of {len(first)} cells; {len(dominated)} dominated):", ""]
        out += [markdown_table(tables.render(front, tables.frontier(cost, metric))), ""]
        if len(unranked):
            out += ["Not ranked (a figure is missing): " + "; ".join(f"{r.setting} ({r.why_unranked})"
                                                                    for r in unranked.itertuples()), ""]
        rel = relative[(relative.model == model) & (relative.input == inp)]
        if len(rel):
            rel = rel.assign(_gain=pareto.gain(rel)).sort_values("_gain", ascending=False, kind="stable")
            out += ["Against the uncompressed baseline (speed-up = baseline time / cell time, best end-to-end gain "
                    "first; saved = share of the baseline's):", "",
                    markdown_table(tables.render(rel, tables.speedup(metric))), ""]
        else:
            out += ["No uncompressed baseline cell in this group: no speed-up table.", ""]
        st = stages[(stages.model == model) & (stages.input == inp)]
        out += ["Where the time goes (ms per stage) and where the saving comes from: ms saved in the vision encoder "
                "and in the LLM (prefill + decode), and the vision encoder's share of the time and of the FLOPs saved "
                "(- where a stage got slower, so no share is meaningful):", "",
                markdown_table(tables.render(st, tables.stages())), "",
                "Key of the figures' numbered points:", "", key_table(mine, costs), ""]
    failed = results[results.status != "ok"]
    if len(failed):
        out += ["## Failed cells", ""]
        out += [f"- {r.get('model')} | {r.get('input_kind')} {r.get('resolution')} | {r.get('method')}: {r.get('error')}"
                for r in failed.to_dict(orient="records")]
        out.append("")
    out += ["Files: `frontier.csv`, `speedup.csv`, `stages.csv` (full tables), `report.html` (interactive)."]
    if wandb_report:
        out.append(f"W&B report: {wandb_report}")
    return "\n".join(out) + "\n"
