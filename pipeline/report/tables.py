"""The report's tables as a reader sees them (report.md and report.html): human headers, numbers
to 3 significant figures, every latency with its p10–p90 spread, speed-ups within noise as "≈1".
The CSV files keep the raw columns; this is only how they are shown."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd

from pipeline.methods import order as method_order
from pipeline.report import numbers
from pipeline.report.pareto import SPEEDUPS, STAGES, Metric

Row = Mapping[str, Any]


@dataclass(frozen=True)
class Shown:
    """One shown column: its header and how a row's cell is written."""

    header: str
    cell: Callable[[Row], str]


def _text(column: str) -> Callable[[Row], str]:
    return lambda r: "-" if r.get(column) is None or r.get(column) != r.get(column) else str(r[column])


def _sig(column: str) -> Callable[[Row], str]:
    return lambda r: numbers.sig(r.get(column))


def _spread(column: str) -> Callable[[Row], str]:
    return lambda r: numbers.spread(r.get(column), r.get(f"{column}_p10"), r.get(f"{column}_p90"))


def _percent(column: str) -> Callable[[Row], str]:
    return lambda r: "-" if numbers.sig(r.get(column)) == "-" else numbers.sig(100 * r[column], 2) + "%"


def _speedup(name: str) -> Callable[[Row], str]:
    def cell(r: Row) -> str:
        if r.get(f"{name}_within_noise") is True and numbers.within_noise(r.get(f"{name}_lo"), r.get(f"{name}_hi")) is not True:
            return f"{numbers.NOISE} (input unchanged)"  # a stage the method leaves alone: its difference is noise
        return numbers.speedup(r.get(name), r.get(f"{name}_lo"), r.get(f"{name}_hi"))

    return cell


GROUP = [Shown("model", _text("model")), Shown("input", _text("input"))]
SETTING = Shown("setting", _text("setting"))
_STAGE_WORDS = {"preprocess_ms": "preprocess", "vision_ms": "vision encoder", "prefill_ms": "LLM prefill",
                "decode_ms": "decode", "e2e_ms": "end to end"}


def frontier(cost: Metric, quality: Metric) -> list[Shown]:
    cost_cell = (lambda r: numbers.spread(r.get("cost"), r.get("cost_p10"), r.get("cost_p90")))
    label = cost.label[:-1] + "; p10–p90)" if cost.column.endswith("_ms") and cost.label.endswith(")") else cost.label
    return [SETTING, Shown(label, cost_cell), Shown(quality.label, _sig("quality"))]


def speedup(quality: Metric) -> list[Shown]:
    drop = "quality drop" + ("" if quality.higher_is_better else " (rise in KL)")
    return [SETTING,
            *(Shown(f"{_STAGE_WORDS[c]} speed-up (interval)", _speedup(f"{c[:-3]}_speedup")) for c in SPEEDUPS),
            Shown("FLOPs saved", _percent("total_flops_saved")), Shown("peak memory saved", _percent("peak_bytes_saved")),
            Shown(quality.label, _sig("quality")), Shown(drop, _sig("quality_drop"))]


def stages() -> list[Shown]:
    return [SETTING, *(Shown(f"{_STAGE_WORDS[s]} ms (p10–p90)", _spread(s)) for s in STAGES),
            Shown("saved in vision encoder, ms", _spread("vision_saved_ms")),
            Shown("saved in LLM, ms", _spread("llm_saved_ms")),
            Shown("vision share of time saved", _percent("vision_share_of_time_saved")),
            Shown("vision share of FLOPs saved", _percent("vision_share_of_flops_saved"))]


def render(frame: pd.DataFrame, shown: list[Shown]) -> pd.DataFrame:
    """The table as strings under its headers, one row per row of ``frame``."""
    records = frame.to_dict(orient="records")
    return pd.DataFrame({s.header: [s.cell(r) for r in records] for s in shown}, columns=[s.header for s in shown])


def _summary_cell(group: pd.DataFrame, name: str) -> str:
    """One figure of a setting: a latency as median (p10–p90) of its cell, a cost's median over
    several cells (no spread then), a quality's mean; - when missing."""
    from pipeline import columns

    column = columns.get(name)
    if name not in group or group[name].isna().all():
        return "-"
    if len(group) == 1 and column.unit == "ms":
        row = group.iloc[0]
        return numbers.spread(row[name], row.get(f"{name}_p10"), row.get(f"{name}_p90"))
    values = group[name].astype(float)
    if column.unit in ("ms", "FLOPs", "bytes"):
        return numbers.sig(values.median() / column.scale)
    return column.show(values.mean())  # a quality in its own format (a cosine needs its 4 decimals)


def sweep_summary(results: pd.DataFrame) -> pd.DataFrame:
    """The ``ok`` rows of a sweep, one row per model, input and setting (method and its parameters),
    in the methods' fixed order, with the summary figures (``columns.SUMMARY``) as strings."""
    from pipeline import columns
    from pipeline.report.pareto import prepare

    rows = prepare(results)
    heads = {name: (columns.get(name).header or name) + (" (p10–p90)" if columns.get(name).unit == "ms" else "")
             for name in columns.SUMMARY}
    if rows.empty:
        return pd.DataFrame(columns=["model", "input", "setting", *heads.values()])
    rows = rows.assign(_order=rows.method.map(method_order))
    out = []
    for (model, inp, _, setting), group in rows.groupby(["model", "input", "_order", "setting"], sort=True):
        out.append({"model": model, "input": inp, "setting": setting,
                    **{head: _summary_cell(group, name) for name, head in heads.items()}})
    return pd.DataFrame(out)
