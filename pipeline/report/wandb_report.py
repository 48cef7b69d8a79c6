"""W&B: a summary run of the sweep's analysis, and a W&B Report over the sweep's cell runs.

The report is described by a plain JSON *plan* (title, text, panels: quality-vs-cost scatter
plots coloured by method, parallel coordinates over the settings, per-stage bars) that the
wandb-workspaces reports API turns into a ``Report``. Online, that report is saved to W&B.
Offline (no API key needed), the report is still built and validated, every panel converted to
the spec W&B stores and the run-set filter parsed, and the plan is written to a file: publishing
it later is ``ipcv-study publish OUT`` (or ``ipcv-study report OUT --wandb-mode online``).
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
                costs: dict[str, str], summary: list[str], groups: list[tuple[str, str]] = ()) -> dict[str, Any]:
    """The report as data: what a reader sees, and which run summaries / configs each panel reads.

    A sweep-level part (the provenance and notes, parallel coordinates over every cell), then one
    section per model x input (``groups``): its own quality-vs-cost scatters, coloured by method,
    and its own stage bars, so that models and resolutions are never mixed in one panel or mean."""
    scatter = [{"type": "scatter", "title": f"{quality_label} vs {label}", "x": cost, "y": quality}
               for cost, label in costs.items()]
    blocks: list[dict[str, Any]] = [
        {"type": "h1", "text": f"Sweep {sweep}"},
        *({"type": "p", "text": line} for line in summary),
        {"type": "h2", "text": "Every cell: settings, cost and quality (parallel coordinates)"},
        {"type": "panels", "groupby": [], "panels": [
            {"type": "parallel_coordinates", "title": "settings, cost and quality",
             "config": SETTING_COLUMNS, "summary": [*costs, quality]},
        ]},
    ]
    for model, inp in groups:
        only = f"Config(\"model.name\") == {json.dumps(model)} and SummaryMetric(\"input\") == {json.dumps(inp)}"
        blocks += [
            {"type": "h2", "text": f"{model} | {inp}"},
            {"type": "p", "text": "Quality against cost, one point per cell, colour = method; then the time per stage "
                                  "(ms, median) by method, over this model and input only."},
            {"type": "panels", "groupby": ["method"], "filters": only, "panels": scatter},
            {"type": "panels", "groupby": [], "filters": only, "panels": [
                {"type": "bar", "title": f"time per stage by method: {model} | {inp}", "metrics": STAGE_METRICS,
                 "groupby": "method"},
            ]},
        ]
    return {
        "project": project,
        "entity": entity,
        "title": f"IPCV sweep '{sweep}': accuracy-efficiency",
        "description": "Quality against cost per cell and model x input; runs grouped (coloured) by method.",
        "sweep": sweep,
        "blocks": blocks,
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
        filters = f"Config(\"sweep\") == {json.dumps(plan['sweep'])}"
        if block.get("filters"):  # a section of one model x input
            filters += f" and {block['filters']}"
        runset = wr.Runset(entity=entity, project=plan["project"], name=f"sweep {plan['sweep']}", filters=filters,
                           groupby=list(block["groupby"]))
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


def has_credentials() -> bool:
    """Whether W&B can authenticate without asking: WANDB_API_KEY, an identity-token file, or a
    ``wandb login`` entry for the W&B host in the netrc file. Checked before publishing, so that a
    machine without a key gets one clear message instead of a prompt or a network error."""
    import netrc
    import os
    from urllib.parse import urlparse

    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname or "api.wandb.ai"
    path = os.environ.get("NETRC") or str(Path.home() / ".netrc")
    try:
        return netrc.netrc(path).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def read_plan(path: str | Path) -> dict[str, Any]:
    """The plan of a definition file written offline (``OUT/report/wandb_report.json``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no W&B report definition (ipcv-study report writes it unless W&B is disabled)")
    try:
        return json.loads(path.read_text())["plan"]
    except (ValueError, KeyError) as err:
        raise ValueError(f"{path}: not a W&B report definition ({type(err).__name__}: {err})") from None


def publish(plan_or_file: dict[str, Any] | str | Path) -> str:
    """Save a plan (or a definition file written offline) as a W&B Report; needs a W&B login.
    Without an entity in the plan, the logged-in user's default entity owns it. Returns its URL."""
    plan = plan_or_file if isinstance(plan_or_file, dict) else read_plan(plan_or_file)
    if not plan.get("entity"):
        import wandb

        plan = {**plan, "entity": wandb.Api().default_entity}
    report = build(plan)
    report.save()
    return report.url


def write_definition(plan: dict[str, Any], path: Path) -> dict[str, Any]:
    report = build(plan)
    checked = validate_offline(report)
    definition = {"plan": plan, "wandb_panel_specs": checked["panels"], "publish": f"ipcv-study publish {path}"}
    path.write_text(json.dumps(definition, indent=1))
    return definition


def log_summary_run(*, project: str, entity: str | None, mode: str, sweep: str, out_dir: Path,
                    tables: dict[str, pd.DataFrame], images: list[Path], summary: dict[str, Any],
                    provenance: dict[str, str] | None = None) -> str | None:
    """One run (job type ``report``) with the analysis tables and figures, and the provenance
    header as its config and as a table, so that the run says where its figures come from;
    returns its id."""
    import wandb

    run = wandb.init(project=project, entity=entity, mode=mode, group=sweep, job_type="report",
                     name=f"{sweep} | Pareto report", dir=str(out_dir),
                     config={"sweep": sweep, "kind": "report", "provenance": dict(provenance or {})},
                     reinit="finish_previous", settings=wandb.Settings(silent=True, console="off", x_disable_stats=True))
    try:
        payload: dict[str, Any] = {name: wandb.Table(dataframe=table.astype(object).where(table.notna(), None))
                                   for name, table in tables.items() if not table.empty}
        payload.update({f"figures/{p.stem}": wandb.Image(str(p)) for p in images})
        if provenance:
            payload["provenance"] = wandb.Table(columns=["what", "value"], data=[[k, v] for k, v in provenance.items()])
        run.log(payload)
        run.summary.update(summary)
        return run.id
    finally:
        run.finish()
