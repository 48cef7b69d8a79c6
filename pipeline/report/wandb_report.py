"""W&B: a summary run of the sweep's analysis, and a W&B Report over the sweep's cell runs.

The report is described by a plain JSON *plan* (title, text, panels: quality-vs-cost scatter
plots coloured by method, parallel coordinates over the settings, per-stage bars) that the
wandb-workspaces reports API turns into a ``Report``. Online, that report is saved to W&B.
Offline (no API key needed), the report is still built and validated, every panel converted to
the spec W&B stores and the run-set filter parsed, and the plan is written to a file: publishing
it later is ``publish(plan_file)`` (or ``ipcv-study report OUT --wandb-mode online``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline import columns

STAGE_METRICS = list(columns.STAGE_TIMES)
# run-config keys (a cell's config, pipeline/sweep/grid.py) on the parallel-coordinates panel
SETTING_COLUMNS = ["method", "model.name", "input.resolution", "vision.prune_layer", "vision.reduction_ratio",
                   "vision.as_layers", "llm.method", "llm.reduction_ratio"]


def report_plan(*, project: str, entity: str | None, sweep: str, quality: str, quality_label: str,
                costs: dict[str, str], summary: list[str]) -> dict[str, Any]:
    """The report as data: what a reader sees, and which run summaries / configs each panel reads."""
    scatter = [{"type": "scatter", "title": f"{quality_label} vs {label}", "x": cost, "y": quality}
               for cost, label in costs.items()]
    return {
        "project": project,
        "entity": entity,
        "title": f"IPCV sweep '{sweep}': accuracy-efficiency",
        "description": "Quality against cost per cell; runs grouped (coloured) by method.",
        "sweep": sweep,
        "blocks": [
            {"type": "h1", "text": f"Sweep {sweep}"},
            *({"type": "p", "text": line} for line in summary),
            {"type": "h2", "text": "Quality against cost (one point per cell, colour = method)"},
            {"type": "panels", "groupby": ["method"], "panels": scatter},
            {"type": "h2", "text": "Settings (parallel coordinates)"},
            {"type": "panels", "groupby": [], "panels": [
                {"type": "parallel_coordinates", "title": "settings, cost and quality",
                 "config": SETTING_COLUMNS, "summary": [*costs, quality]},
            ]},
            {"type": "h2", "text": "Time per stage (ms, median), by method"},
            {"type": "panels", "groupby": [], "panels": [
                {"type": "bar", "title": "time per stage by method", "metrics": STAGE_METRICS, "groupby": "method"},
            ]},
        ],
    }


def build(plan: dict[str, Any]):
    """The wandb-workspaces ``Report`` of a plan (every field validated by its pydantic models)."""
    import wandb_workspaces.reports.v2 as wr

    entity = plan.get("entity") or ""
    blocks: list[Any] = []
    for block in plan["blocks"]:
        kind = block["type"]
        if kind in ("h1", "h2", "p"):
            blocks.append({"h1": wr.H1, "h2": wr.H2, "p": wr.P}[kind](block["text"]))
            continue
        panels = []
        for panel in block["panels"]:
            if panel["type"] == "scatter":
                panels.append(wr.ScatterPlot(title=panel["title"], x=wr.SummaryMetric(panel["x"]),
                                             y=wr.SummaryMetric(panel["y"])))
            elif panel["type"] == "parallel_coordinates":
                columns = [wr.ParallelCoordinatesPlotColumn(metric=wr.Config(c)) for c in panel["config"]]
                columns += [wr.ParallelCoordinatesPlotColumn(metric=wr.SummaryMetric(m)) for m in panel["summary"]]
                panels.append(wr.ParallelCoordinatesPlot(title=panel["title"], columns=columns))
            elif panel["type"] == "bar":
                panels.append(wr.BarPlot(title=panel["title"], metrics=[wr.SummaryMetric(m) for m in panel["metrics"]],
                                         groupby=wr.Config(panel["groupby"]), groupby_aggfunc="mean"))
            else:
                raise ValueError(f"unknown panel type {panel['type']!r}")
        runset = wr.Runset(entity=entity, project=plan["project"], name=f"sweep {plan['sweep']}",
                           filters=f'Config("sweep") == "{plan["sweep"]}"', groupby=list(block["groupby"]))
        blocks.append(wr.PanelGrid(runsets=[runset], panels=panels))
    return wr.Report(project=plan["project"], entity=entity, title=plan["title"], description=plan["description"],
                     blocks=blocks, width="fluid")


def validate_offline(report) -> dict[str, Any]:
    """What can be checked without W&B: each panel as the spec W&B stores, each run-set filter
    parsed. (Run sets need the server to resolve their project, so they are checked online.)"""
    from wandb_workspaces import expr

    specs: list[dict[str, Any]] = []
    for block in report.blocks:
        if not hasattr(block, "panels"):
            continue
        for runset in block.runsets:
            expr.expr_to_filters(runset.filters)
        for panel in block.panels:
            specs.append(json.loads(panel._to_model().model_dump_json(by_alias=True, exclude_none=True)))
    return {"panels": specs}


def publish(plan_or_file: dict[str, Any] | str | Path) -> str:
    """Save a plan (or a definition file written offline) as a W&B Report; needs a W&B login.
    Without an entity in the plan, the logged-in user's default entity owns it. Returns its URL."""
    plan = plan_or_file if isinstance(plan_or_file, dict) else json.loads(Path(plan_or_file).read_text())["plan"]
    if not plan.get("entity"):
        import wandb

        plan = {**plan, "entity": wandb.Api().default_entity}
    report = build(plan)
    report.save()
    return report.url


def write_definition(plan: dict[str, Any], path: Path) -> dict[str, Any]:
    report = build(plan)
    checked = validate_offline(report)
    definition = {"plan": plan, "wandb_panel_specs": checked["panels"],
                  "publish": f"python -c \"from pipeline.report.wandb_report import publish; print(publish('{path}'))\""}
    path.write_text(json.dumps(definition, indent=1))
    return definition


def log_summary_run(*, project: str, entity: str | None, mode: str, sweep: str, out_dir: Path,
                    tables: dict[str, pd.DataFrame], images: list[Path], summary: dict[str, Any]) -> str | None:
    """One run (job type ``report``) with the analysis tables and figures; returns its id."""
    import wandb

    run = wandb.init(project=project, entity=entity, mode=mode, group=sweep, job_type="report",
                     name=f"{sweep} | Pareto report", config={"sweep": sweep, "kind": "report"}, dir=str(out_dir),
                     reinit="finish_previous", settings=wandb.Settings(silent=True, console="off", x_disable_stats=True))
    try:
        payload: dict[str, Any] = {name: wandb.Table(dataframe=table.astype(object).where(table.notna(), None))
                                   for name, table in tables.items() if not table.empty}
        payload.update({f"figures/{p.stem}": wandb.Image(str(p)) for p in images})
        run.log(payload)
        run.summary.update(summary)
        return run.id
    finally:
        run.finish()
