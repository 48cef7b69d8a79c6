"""The report's Markdown summary (``report.md``): the page a person reads first.

Per model x input group: the Pareto frontier on the first cost, the table against the
uncompressed baseline, and where the time goes per stage; then the failed cells.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from pipeline.report import pareto


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "-"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (float, np.floating)):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|")


def markdown_table(frame: pd.DataFrame, columns: dict[str, str]) -> str:
    """``columns``: column -> header. Missing values show as ``-``."""
    head = "| " + " | ".join(columns.values()) + " |"
    rule = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(_fmt(row.get(c)) for c in columns) + " |" for row in frame.to_dict(orient="records")]
    return "\n".join([head, rule, *body])


def summary(title, intro, rows, results, points, relative, stages, metric, costs, pngs, wandb_report) -> str:
    """The Markdown page."""
    out = [f"# IPCV study: {title}", "", *[f"- {line}" for line in intro], ""]
    primary = costs[0]
    cost = pareto.COST[primary]
    out += [f"Frontier: a cell is on it when no cell of its group costs at most as much with at least the same "
            f"quality and is strictly better in one. Quality axis: {metric.label}. Tables use {cost.label}; "
            f"`frontier.csv` has every cost.", ""]
    for png in pngs:
        out += [f"![{png.stem}]({png.name})", ""]
    for model, inp in rows.groupby(pareto.GROUP, sort=True).groups:
        mine = points[(points.model == model) & (points.input == inp) & (points.cost_metric == primary)]
        front = mine[mine.on_frontier == True].sort_values("cost")  # noqa: E712
        dominated = mine[mine.on_frontier == False]  # noqa: E712
        unranked = mine[mine.on_frontier.isna()]
        out += [f"## {model} | {inp}", "", f"Pareto frontier ({len(front)} of {len(mine)} cells; {len(dominated)} dominated):", ""]
        out += [markdown_table(front, {"setting": "setting", "cost": cost.label, "quality": metric.label}), ""]
        if len(unranked):
            out += ["Not ranked (a figure is missing): " + "; ".join(f"{r.setting} ({r.why_unranked})"
                                                                    for r in unranked.itertuples()), ""]
        rel = relative[(relative.model == model) & (relative.input == inp)].sort_values("e2e_speedup", ascending=False)
        if len(rel):
            drop = "quality drop" + ("" if metric.higher_is_better else " (rise in KL)")
            out += ["Against the uncompressed baseline (speed-up = baseline time / cell time; saved = share of the "
                    "baseline's):", "", markdown_table(rel, {
                        "setting": "setting", "e2e_speedup": "e2e speed-up", "vision_speedup": "vision speed-up",
                        "prefill_speedup": "prefill speed-up", "total_flops_saved": "FLOPs saved (share)",
                        "peak_bytes_saved": "peak memory saved (share)", "quality": metric.label, "quality_drop": drop}), ""]
        else:
            out += ["No uncompressed baseline cell in this group: no speed-up table.", ""]
        st = stages[(stages.model == model) & (stages.input == inp)]
        out += ["Where the time goes (ms, median per stage) and where the saving comes from: ms saved in the "
                "vision encoder and in the LLM (prefill + decode), and the vision encoder's share of the time and of "
                "the FLOPs saved (- where a stage got slower, so no share is meaningful):",
                "", markdown_table(st, {"setting": "setting", **{s: s.removesuffix("_ms") for s in pareto.STAGES},
                                        "vision_saved_ms": "vision saved", "llm_saved_ms": "LLM saved",
                                        "vision_share_of_time_saved": "vision share (time)",
                                        "vision_share_of_flops_saved": "vision share (FLOPs)"}), ""]
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
