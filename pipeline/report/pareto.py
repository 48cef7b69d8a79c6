"""Pareto analysis of a sweep's results table (pandas): quality against cost, per model x input.

Quality is accuracy where the rows hold a benchmark score from real weights; otherwise fidelity
to the uncompressed model (the random-weight presets' accuracy is chance level and would say
nothing). Cost is a latency, the FLOPs or the peak memory. A cell is on the frontier when no other
cell of its group is at most as costly and at least as good, and strictly better in one of the
two; equal points do not dominate each other, so ties stay on the frontier together. A cell that
lacks the quality or the cost figure is not ranked, and the report says which and why.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from pipeline import columns
from pipeline.methods import METHODS, setting_label
from pipeline.methods import order as method_order
from pipeline.report import numbers
from pipeline.sweep.rows import input_label


@dataclass(frozen=True)
class Metric:
    """A quality or cost axis: a column of the schema (``pipeline/columns.py``) as the analysis uses it."""

    column: str
    label: str  # axis label, with its unit
    higher_is_better: bool
    scale: float = 1.0  # column value / scale = shown value

    @classmethod
    def of(cls, name: str) -> Metric:
        c = columns.get(name)
        return cls(c.name, c.label or c.name, c.higher_is_better, c.scale)


QUALITY: dict[str, Metric] = {name: Metric.of(name) for name in columns.QUALITY}
COST: dict[str, Metric] = {name: Metric.of(name) for name in columns.COSTS}
STAGES = columns.STAGE_TIMES
SPEEDUPS = ("e2e_ms", "vision_ms", "prefill_ms")  # latencies compared with the baseline as speed-ups
GROUP = ["model", "input"]


def prepare(results: pd.DataFrame) -> pd.DataFrame:
    """The ``ok`` rows with the report's derived columns: ``input`` and ``setting`` (written with
    each row; derived the same way for tables that lack them) and ``peak_bytes`` (the largest
    stage peak)."""
    if results.empty or "status" not in results:
        return pd.DataFrame()
    rows = results[results.status == "ok"].copy()
    if rows.empty:
        return rows
    records = rows.to_dict(orient="records")
    for column, label in (("input", input_label), ("setting", setting_label)):
        given = rows[column] if column in rows else pd.Series(None, index=rows.index, dtype=object)
        rows[column] = [g if isinstance(g, str) else label(r) for g, r in zip(given, records)]
    peaks = [c for c in columns.STAGE_PEAKS if c in rows]
    rows["peak_bytes"] = rows[peaks].astype(float).max(axis=1, skipna=True) if peaks else np.nan
    for column in list(QUALITY) + list(COST):
        if column not in rows:
            rows[column] = np.nan
        rows[column] = pd.to_numeric(rows[column], errors="coerce")
    return rows.reset_index(drop=True)


def choose_quality(rows: pd.DataFrame, requested: str = "auto") -> Metric:
    """The quality metric: the one asked for, or accuracy when real-weight rows carry it, else
    the benchmark answer agreement, else the first-token KL (present for every cell)."""
    if requested != "auto":
        if requested in QUALITY:
            return QUALITY[requested]
        if requested.startswith("acc_") and requested in rows and columns.is_described(requested):
            return Metric.of(requested)
        raise ValueError(f"unknown quality metric {requested!r}; choose auto, {', '.join(QUALITY)} "
                         "or an acc_<task> column of the results")
    real = rows[rows.get("weights", pd.Series("checkpoint", index=rows.index)) == "checkpoint"] if len(rows) else rows
    if len(real) and real["accuracy"].notna().any():
        return QUALITY["accuracy"]
    if len(rows) and rows["fidelity_benchmark_answer_match"].notna().any():
        return QUALITY["fidelity_benchmark_answer_match"]
    return QUALITY["fidelity_first_token_kl"]


def frontier_mask(cost: pd.Series, quality: pd.Series, higher_is_better: bool = True) -> pd.Series:
    """True where a point is on the Pareto frontier (lower cost, better quality); NaN where it
    cannot be ranked (a figure is missing)."""
    q = quality.astype(float) if higher_is_better else -quality.astype(float)
    c = cost.astype(float)
    valid = c.notna() & q.notna()
    out = pd.Series(np.nan, index=cost.index, dtype=object)
    cv, qv = c[valid].to_numpy(), q[valid].to_numpy()
    for i, index in enumerate(c[valid].index):
        dominated = ((cv <= cv[i]) & (qv >= qv[i]) & ((cv < cv[i]) | (qv > qv[i]))).any()
        out[index] = not dominated
    return out


def frontiers(rows: pd.DataFrame, quality: Metric, costs: list[str]) -> pd.DataFrame:
    """One line per cell and cost: its group, its ``point`` number in the figures, setting, cost
    (with ``cost_p10`` / ``cost_p90`` for a latency; NaN for FLOPs and memory), quality and
    frontier flag (``on_frontier`` True / False, or missing with ``why_unranked``)."""
    out = []
    for cost_name in costs:
        cost = COST[cost_name]
        for (model, inp), group in rows.groupby(GROUP, sort=True):
            mask = frontier_mask(group[cost.column], group[quality.column], quality.higher_is_better)
            keys = point_keys(group)
            for index, row in group.iterrows():
                missing = [name for name, col in (("cost", cost.column), ("quality", quality.column)) if pd.isna(row[col])]
                out.append({
                    "model": model, "input": inp, "cost_metric": cost_name, "point": keys[index], "setting": row["setting"],
                    "method": row["method"], "cell_id": row["cell_id"], "cost": row[cost.column] / cost.scale,
                    "cost_p10": _float(row.get(f"{cost.column}_p10")) / cost.scale,
                    "cost_p90": _float(row.get(f"{cost.column}_p90")) / cost.scale,
                    "quality": row[quality.column], "on_frontier": mask[index],
                    "why_unranked": (f"no {cost.column}" if "cost" in missing else f"no {quality.column}")
                    if missing else None,
                })
    return pd.DataFrame(out)


def point_keys(group: pd.DataFrame) -> pd.Series:
    """Each cell's number in its group's figures (1, 2, ...: by method order, then setting), the
    same for every cost, so that a point of a PNG is found in the report's key."""
    order = group.assign(_order=group.method.map(method_order)).sort_values(["_order", "setting", "cell_id"])
    return pd.Series(range(1, len(order) + 1), index=order.index)


def relative_to_baseline(rows: pd.DataFrame, quality: Metric) -> pd.DataFrame:
    """Per cell: speed-up of each latency (baseline / cell) with its interval (``_lo`` / ``_hi``:
    from both cells' p10-p90, ``numbers.ratio_interval``) and ``_within_noise`` (the interval
    contains 1, or the method leaves that stage's input unchanged, so any difference is noise),
    FLOPs and memory saved (share), and the quality change against the group's baseline."""
    out = []
    for (model, inp), group in rows.groupby(GROUP, sort=True):
        base = group[group.method == "baseline"]
        if base.empty:
            continue
        b = base.iloc[0]
        for _, row in group.iterrows():
            if row["method"] == "baseline":
                continue
            record = {"model": model, "input": inp, "setting": row["setting"], "method": row["method"]}
            for col in SPEEDUPS:
                name = f"{col[:-3]}_speedup"
                record[name] = _ratio(b[col], row[col])
                lo, hi = numbers.ratio_interval((b.get(f"{col}_p10"), b.get(f"{col}_p90")),
                                                (row.get(f"{col}_p10"), row.get(f"{col}_p90")))
                record[f"{name}_lo"], record[f"{name}_hi"] = lo, hi
                unchanged = col != "e2e_ms" and col[:-3] not in _stages_changed(row["method"])
                record[f"{name}_within_noise"] = True if unchanged else numbers.within_noise(lo, hi)
            for col in ("total_flops", "peak_bytes"):
                record[f"{col}_saved"] = 1 - _ratio(row[col], b[col]) if not pd.isna(_ratio(row[col], b[col])) else np.nan
            sign = 1 if quality.higher_is_better else -1
            record["quality"] = row[quality.column]
            record["quality_drop"] = sign * (b[quality.column] - row[quality.column])
            out.append(record)
    return _ordered(pd.DataFrame(out, columns=None if out else ["model", "input", "setting", "method", "e2e_speedup"]))


def _stages_changed(method: str) -> frozenset[str]:
    """The stages whose input a method changes; an unknown method may change any."""
    return METHODS[method].stages if method in METHODS else frozenset({"vision", "prefill"})


def gain(table: pd.DataFrame, name: str = "e2e_speedup") -> pd.Series:
    """A speed-up as a ranking key: 1 where it is within noise, so noise never ranks as a gain."""
    noise = table.get(f"{name}_within_noise", pd.Series(None, index=table.index, dtype=object))
    return table[name].where(noise != True, 1.0)  # noqa: E712 (object column: True, False or None)


def _ratio(a, b) -> float:
    try:
        a, b = float(a), float(b)
    except (TypeError, ValueError):
        return np.nan
    return a / b if b and not (np.isnan(a) or np.isnan(b)) else np.nan


def stage_breakdown(rows: pd.DataFrame) -> pd.DataFrame:
    """Per cell: time in each stage, and where its saving against the baseline comes from: time
    saved in the vision encoder and in the LLM (prefill + decode), the vision encoder's share of
    the time saved, and the same share for FLOPs (vision vs. prefill)."""
    out = []
    for (model, inp), group in rows.groupby(GROUP, sort=True):
        base = group[group.method == "baseline"]
        b = base.iloc[0] if len(base) else None
        for _, row in group.iterrows():
            record = {"model": model, "input": inp, "setting": row["setting"], "method": row["method"]}
            for stage in STAGES:
                record[stage] = row.get(stage, np.nan)
                record[f"{stage}_p10"], record[f"{stage}_p90"] = row.get(f"{stage}_p10", np.nan), row.get(f"{stage}_p90", np.nan)
            if b is not None and row["method"] != "baseline":
                vision = _float(b.get("vision_ms")) - _float(row.get("vision_ms"))
                llm = sum(_float(b.get(s)) - _float(row.get(s)) for s in ("prefill_ms", "decode_ms"))
                record.update(vision_saved_ms=vision, llm_saved_ms=llm, time_saved_ms=vision + llm)
                for name, parts in (("vision", ("vision_ms",)), ("llm", ("prefill_ms", "decode_ms"))):
                    # the saving's range from both cells' p10-p90 (baseline's low end minus the cell's high end ...)
                    record[f"{name}_saved_ms_p10"] = sum(_float(b.get(f"{s}_p10")) - _float(row.get(f"{s}_p90")) for s in parts)
                    record[f"{name}_saved_ms_p90"] = sum(_float(b.get(f"{s}_p90")) - _float(row.get(f"{s}_p10")) for s in parts)
                record["vision_share_of_time_saved"] = _share(vision, llm)
                record["vision_share_of_flops_saved"] = _share(
                    _float(b.get("vision_flops")) - _float(row.get("vision_flops")),
                    _float(b.get("prefill_flops")) - _float(row.get("prefill_flops")))
            out.append(record)
    return _ordered(pd.DataFrame(out))


def _share(vision: float, llm: float) -> float:
    """The vision encoder's share of a saving; only defined when neither part got worse (a share
    of a net saving where one stage slowed down would fall outside [0, 1] and mislead)."""
    if np.isnan(vision) or np.isnan(llm) or vision < 0 or llm < 0 or vision + llm <= 0:
        return np.nan
    return vision / (vision + llm)


def _ordered(table: pd.DataFrame) -> pd.DataFrame:
    """Rows by group, then in the methods' fixed order (the baseline first), then by setting."""
    if table.empty:
        return table
    key = table.assign(_order=table.method.map(method_order))
    return key.sort_values(["model", "input", "_order", "setting"]).drop(columns="_order").reset_index(drop=True)


def _float(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return np.nan
