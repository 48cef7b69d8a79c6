"""Building the report of a sweep: read the results store, analyse, write every file in turn
(tables, figures, the HTML page, W&B, the Markdown summary). A W&B failure never costs the local
files: it becomes a note in the report."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.report import figures, markdown, pareto
from pipeline.report.html import write_html
from pipeline.report.provenance import FEW_REPEATS, fewest_repeats, provenance
from pipeline.sweep.store import ResultStore

log = logging.getLogger(__name__)


class ReportError(ValueError):
    """The output directory holds nothing to report on; the message says what is missing."""


@dataclass
class ReportResult:
    directory: Path
    quality: pareto.Metric
    costs: list[str]
    files: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    wandb_run: str | None = None
    wandb_report: str | None = None  # URL (online) or the definition file (offline)


def load_results(out_dir: Path) -> pd.DataFrame:
    """The rows of the folder's current profile: from the cell files themselves (``results.parquet``
    may be older than them after an interrupted run), else from ``results.parquet`` alone."""
    if not out_dir.is_dir():
        raise ReportError(f"{out_dir}: no such directory (give a sweep's output directory)")
    if (out_dir / "cells").is_dir():
        return ResultStore(out_dir).table()
    path = out_dir / "results.parquet"
    if path.exists():
        try:
            return pd.read_parquet(path)
        except Exception as err:  # a damaged file, and no cells/ to rebuild it from
            raise ReportError(f"{path}: unreadable ({type(err).__name__}: {err}) and no cells/ beside it") from None
    raise ReportError(f"{out_dir}: no results.parquet or cells/ (is this a sweep's output directory?)")


def coverage_notes(out_dir: Path) -> list[str]:
    """What the folder lacks of its profile, and what it holds beyond it."""
    if not (out_dir / "cells").is_dir():
        return []
    c = ResultStore(out_dir).coverage()
    notes = []
    if c.missing:
        notes.append(f"{c.missing} of the profile's {c.cells} cells have no result yet: the sweep is not finished "
                     "(rerun ipcv-study run to resume it)")
    if c.outside:
        notes.append(f"{c.outside} cell file(s) in cells/ belong to an earlier version of the profile (or another "
                     "sweep) and are left out")
    return notes


def _profile(out_dir: Path) -> dict[str, Any]:
    path = out_dir / "profile.json"
    return json.loads(path.read_text()) if path.exists() else {}


def build_report(out_dir: str | Path, *, quality: str = "auto", costs: list[str] | None = None,
                 wandb_mode: str | None = None, project: str | None = None, entity: str | None = None) -> ReportResult:
    out_dir = Path(out_dir)
    results = load_results(out_dir)
    rows = pareto.prepare(results)
    if rows.empty:
        raise ReportError(f"{out_dir}: no finished (ok) cells to report on ({len(results)} rows in the store)")
    costs = costs or list(pareto.COST)
    unknown = [c for c in costs if c not in pareto.COST]
    if unknown:
        raise ReportError(f"unknown cost(s) {', '.join(unknown)}; choose from {', '.join(pareto.COST)}")
    metric = pareto.choose_quality(rows, quality)
    report_dir = out_dir / "report"
    report_dir.mkdir(exist_ok=True)
    profile = _profile(out_dir)
    sweep = profile.get("name") or out_dir.name
    result = ReportResult(report_dir, metric, [])
    result.notes += coverage_notes(out_dir) + _quality_notes(rows, metric, quality)
    for cost in costs:
        if rows[pareto.COST[cost].column].notna().any():
            result.costs.append(cost)
        else:
            why = "no GPU in this sweep: memory is measured on GPUs only" if cost == "peak_bytes" else "no values"
            result.notes.append(f"cost {cost} left out: not measured ({why})")
    if not result.costs:
        raise ReportError(f"{out_dir}: none of the costs {', '.join(costs)} was measured")

    points = pareto.frontiers(rows, metric, result.costs)
    relative = pareto.relative_to_baseline(rows, metric)
    stages = pareto.stage_breakdown(rows)
    for name, table in (("frontier", points), ("speedup", relative), ("stages", stages)):
        path = report_dir / f"{name}.csv"
        table.to_csv(path, index=False)
        result.files.append(path)

    title = f"sweep {sweep}"
    pngs = []
    for cost in result.costs:
        png = figures.frontier_png(points, cost, metric, report_dir / f"frontier_{cost}.png",
                                   f"{title}: {metric.label} against {pareto.COST[cost].label} (Pareto frontier outlined)")
        pngs += [png] if png else []
    primary = result.costs[0]
    on_front = points[(points.cost_metric == primary) & (points.on_frontier == True)]  # noqa: E712 (object column)
    keep = {key: set(g.setting) for key, g in on_front.groupby(pareto.GROUP)}
    for png in (figures.stages_png(stages, keep, report_dir / "stages.png", f"{title}: time per stage per request"),
                figures.ratio_png(rows, metric, report_dir / "quality_vs_ratio.png",
                                  f"{title}: {metric.label} against reduction ratio")):
        pngs += [png] if png else []
    result.files += pngs

    intro = _intro(rows, results, metric, result)
    header = provenance(rows, profile)
    result.files.append(write_html(report_dir / "report.html", f"IPCV study: {title}", header, intro, rows, points,
                                   metric, result.costs, {"frontier": on_front, "speedup": relative, "stages": stages}))
    tracking = profile.get("tracking", {})
    mode = wandb_mode or tracking.get("mode", "offline")
    if mode != "disabled":
        _wandb(result, mode, project or tracking.get("project", "ipcv-study"), entity or tracking.get("entity"),
               tracking.get("group") or sweep, out_dir, {"frontier": points, "speedup": relative, "stages": stages},
               pngs, metric, intro, header)
    md = markdown.summary(title, _intro(rows, results, metric, result), header, rows, results, points, relative,
                          stages, metric, result.costs, pngs, result.wandb_report)
    (report_dir / "report.md").write_text(md)
    result.files.append(report_dir / "report.md")
    return result


def _quality_notes(rows: pd.DataFrame, metric: pareto.Metric, requested: str) -> list[str]:
    if requested != "auto":
        return [f"quality: {metric.column} (as asked)"]
    if metric.column == "accuracy":
        return ["quality: accuracy (mean benchmark score of real-weight models)"]
    has_acc = rows["accuracy"].notna().any()
    why = ("the accuracy present comes from random-weight presets (chance level), so " if has_acc else
           "no benchmark accuracy in these results, so ")
    return [f"quality: {why}fidelity to the uncompressed model is used: {metric.column} "
            f"({'higher' if metric.higher_is_better else 'lower'} is better). It is not accuracy."]


def _intro(rows: pd.DataFrame, results: pd.DataFrame, metric: pareto.Metric, result: ReportResult) -> list[str]:
    failed = int((results.status != "ok").sum())
    clocks = set(rows.get("clock", pd.Series(dtype=object)).dropna())
    lines = [f"{len(rows)} finished cells, {failed} failed; {rows.model.nunique()} model(s), {rows.input.nunique()} input(s)."]
    if any(str(c).startswith("cpu") for c in clocks):
        lines.append("Latencies are CPU timings (perf_counter) on this machine, not GPU figures.")
    repeats = fewest_repeats(rows, _profile(result.directory.parent))
    if repeats is not None and repeats < FEW_REPEATS:
        lines.append(f"Only {repeats} timed repeat(s) per cell: a p10–p90 spread is then little more than the samples "
                     "themselves, so an interval that misses 1 is weak evidence of a gain; use 10 or more on a GPU.")
    weights = rows.get("weights", pd.Series(dtype=object))
    if (weights == "random (tiny preset)").any():
        lines.append("Some models are tiny presets with random weights: their accuracy is chance level and "
                     "their latencies say little about real sizes.")
    if (weights == "random (architecture)").any():
        lines.append("Some models are published architectures with random weights: their costs (latency, memory, "
                     "FLOPs, KV cache) are those of the real model, their accuracy and fidelity are not quality.")
    lines += result.notes
    return lines


def _wandb(result: ReportResult, mode: str, project: str, entity: str | None, sweep: str, out_dir: Path,
           tables: dict[str, pd.DataFrame], pngs: list[Path], metric: pareto.Metric, intro: list[str],
           header: dict[str, str]) -> None:
    from pipeline.report import wandb_report

    try:
        result.wandb_run = wandb_report.log_summary_run(
            project=project, entity=entity, mode=mode, sweep=sweep, out_dir=out_dir, tables=tables, images=pngs,
            summary={"quality_metric": metric.column, "cells": int(tables["frontier"].cell_id.nunique()),
                     **{f"provenance/{k}": v for k, v in header.items()}},
            provenance=header)
    except Exception as err:  # W&B never costs the local report
        result.notes.append(f"W&B summary run failed ({type(err).__name__}: {err}); local files are complete")
        log.warning("W&B summary run failed: %s", err)
    plan = wandb_report.report_plan(project=project, entity=entity, sweep=sweep, quality=metric.column,
                                    quality_label=metric.label,
                                    costs={c: pareto.COST[c].label for c in result.costs},
                                    summary=[f"{k}: {v}" for k, v in header.items()] + intro,
                                    groups=sorted(set(zip(tables["frontier"].model, tables["frontier"].input))))
    path = result.directory / "wandb_report.json"
    try:
        wandb_report.write_definition(plan, path)
        result.files.append(path)
        result.wandb_report = str(path)
        if mode == "online":
            result.wandb_report = wandb_report.publish(plan)
    except Exception as err:
        result.notes.append(f"W&B report not saved ({type(err).__name__}: {err}); its definition: {path}")
        log.warning("W&B report failed: %s", err)
