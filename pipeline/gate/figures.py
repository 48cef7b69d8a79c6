"""Measuring the gate's figures for a profile: exact and fidelity figures from the cells' rows,
cost figures as instruction-count ratios (callgrind, deterministic) or time ratios (interleaved
pairs with a confidence interval).

Cells run inline through the sweep's own cell executor; figure keys are ``model|input|method|metric``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from pipeline import columns
from pipeline.measure import instructions
from pipeline.measure.time_ratios import RatioEstimate
from pipeline.sweep.executor import CellExecutor, run_inline
from pipeline.sweep.grid import Cell, InputSpec, expand
from pipeline.sweep.spec import ModelSpec, ProfileError, SweepSpec

TIME_PAIRS = 15  # interleaved (unpatched, patched) pairs per time ratio


@dataclass
class Measured:
    figures: dict[str, float] = field(default_factory=dict)
    estimates: dict[str, RatioEstimate] = field(default_factory=dict)  # time ratios: with their interval


def gate_cells(spec: SweepSpec) -> list[Cell]:
    cells = expand(spec)
    keys = [c.key for c in cells]
    if len(set(keys)) != len(keys):
        raise ProfileError("the gate profile must have one setting per method (cell keys model|input|method repeat)")
    return cells


def measure(spec: SweepSpec, costs: str) -> Measured:
    """Every gate figure of the profile's cells."""
    cells = gate_cells(spec)
    out = Measured()
    for executor, cell, row in run_inline(cells, spec.measurement.max_new_tokens):
        if row["status"] != "ok":
            raise RuntimeError(f"gate cell {cell.key} failed: {row['error']}")
        for name in columns.ROW_GATED:
            value = row.get(name)
            if value is not None and not (isinstance(value, float) and math.isnan(value)):
                out.figures[f"{cell.key}|{name}"] = float(value)
        if costs == "time" and cell.method != "baseline":
            _record_times(out, cell, executor.time_ratios(cell, TIME_PAIRS))
    if costs == "instructions":
        out.figures.update(instruction_ratios(cells))
    return out


def remeasure_times(spec: SweepSpec, keys: list[str]) -> Measured:
    """The time ratios of the cells these figure keys belong to, measured again."""
    wanted = {key.rsplit("|", 1)[0] for key in keys}
    out = Measured()
    by_model: dict[ModelSpec, list[Cell]] = {}
    for cell in gate_cells(spec):
        if cell.key in wanted:
            by_model.setdefault(cell.model, []).append(cell)
    for model, cells in by_model.items():
        executor = CellExecutor(model)
        if executor.model is None:
            raise RuntimeError(executor.load_error)
        for cell in cells:
            _record_times(out, cell, executor.time_ratios(cell, TIME_PAIRS))
    return out


def _record_times(out: Measured, cell: Cell, estimates: dict[str, RatioEstimate]) -> None:
    for stage, estimate in estimates.items():
        key = f"{cell.key}|{stage}_time_ratio"
        out.figures[key] = estimate.ratio
        out.estimates[key] = estimate


def instruction_ratios(cells: list[Cell]) -> dict[str, float]:
    """Instructions of each compressed cell's vision tower and of the rest of its prefill
    forward, over the unpatched model's on the input the cell is compared with."""
    jobs: dict[tuple[ModelSpec, InputSpec], instructions.Job] = {}

    def job(model: ModelSpec, inp: InputSpec) -> instructions.Job:
        if (model, inp) not in jobs:
            jobs[(model, inp)] = instructions.Job(
                model={"name": model.name, "dtype": model.dtype, "attn_implementation": model.attn_implementation,
                       "seed": model.seed},
                input={"resolution": inp.resolution, "images": inp.count, "video_frames": inp.frames,
                       "prompt": inp.prompt})
        return jobs[(model, inp)]

    def reference_key(cell: Cell) -> str:
        return f"{cell.model.name}|{cell.reference_input.key}|unpatched"

    compressed = [c for c in cells if c.method != "baseline"]
    for cell in compressed:
        reference = job(cell.model, cell.reference_input)
        if not any(m.key.startswith(reference_key(cell) + "|") for m in reference.measurements):
            reference.measurements += [instructions.Measurement(f"{reference_key(cell)}|{s}", s)
                                       for s in instructions.STATEMENTS]
        job(cell.model, cell.input).measurements += [
            instructions.Measurement(f"{cell.key}|{s}", s, cell.vision, cell.llm) for s in instructions.STATEMENTS]
    counts = instructions.count(list(jobs.values()))
    out = {}
    for cell in compressed:
        ref = reference_key(cell)
        vision, forward = counts[f"{cell.key}|vision"], counts[f"{cell.key}|forward"]
        ref_vision, ref_forward = counts[f"{ref}|vision"], counts[f"{ref}|forward"]
        out[f"{cell.key}|vision_instructions_ratio"] = vision / ref_vision
        out[f"{cell.key}|prefill_instructions_ratio"] = (forward - vision) / (ref_forward - ref_vision)
    return out
