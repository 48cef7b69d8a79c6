"""The efficiency gate: rerun a small fixed profile and compare it with a committed baseline.

Deterministic figures (FLOPs and tokens per stage, kept counts, KV-cache bytes, fidelity at fixed
seeds) must match exactly or within a stated tolerance. Timings are compared only as ratios
measured in the same run (a method's stage time over the baseline's on the same model and
input), inside a band wide enough for noisy machines. The baseline records the versions it was
made with; a difference is reported with the comparison.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import transformers

import ipcv
from pipeline.grid import Cell, expand
from pipeline.spec import ProfileError, SweepSpec
from pipeline.worker import CellRunner

# figure -> (kind, tolerance, worse direction). kind: exact | close (abs tolerance) | ratio (relative band)
FIGURES: dict[str, tuple[str, float, str]] = {
    "vision_flops": ("exact", 0, "higher"),
    "prefill_flops": ("exact", 0, "higher"),
    "vision_tokens_in": ("exact", 0, "higher"),
    "vision_tokens_kept": ("exact", 0, "higher"),
    "llm_visual_tokens_in": ("exact", 0, "higher"),
    "llm_visual_tokens_kept": ("exact", 0, "higher"),
    "kv_cache_bytes": ("exact", 0, "higher"),
    "fidelity_answer_match": ("close", 0.0, "lower"),
    "fidelity_top1_agreement": ("close", 0.0, "lower"),
    "fidelity_first_token_kl": ("close", 1e-3, "higher"),
    "fidelity_feature_cosine": ("close", 1e-4, "lower"),
    # a stage-time ratio may rise by this share before it counts (the tiny LLM's prefill is a few ms
    # on a CPU and jitters more than the vision encoder)
    "vision_time_ratio": ("ratio", 0.5, "higher"),
    "prefill_time_ratio": ("ratio", 1.0, "higher"),
}


def versions() -> dict[str, str]:
    return {"torch": torch.__version__, "transformers": transformers.__version__, "ipcv": ipcv.__version__}


def _key(cell: Cell) -> str:
    inp = cell.input
    what = f"{inp.kind}{inp.resolution}" + (f"x{inp.frames}f" if inp.frames else "")
    return f"{cell.model.name}|{what}|{cell.method}"


RATIO_REPEATS = 9


def measure(spec: SweepSpec) -> dict[str, float | None]:
    """Run every cell of ``spec`` in this process and return its gate figures by key."""
    cells = expand(spec)
    keys = [_key(c) for c in cells]
    if len(set(keys)) != len(keys):
        raise ProfileError("the gate profile must have one setting per method (cell keys model|input|method repeat)")
    figures: dict[str, float | None] = {}
    for model in spec.models:
        runner = CellRunner(model)
        references: dict[tuple, Any] = {}
        mine = [c for c in cells if c.model == model]
        for cell in mine:
            if cell.reference_key not in references:
                references[cell.reference_key] = runner.reference(cell.reference_input, spec.measurement.max_new_tokens,
                                                                   cell.evaluation)
            row = runner.run(cell, references[cell.reference_key])
            if row["status"] != "ok":
                raise RuntimeError(f"gate cell {_key(cell)} failed: {row['error']}")
            for name, (kind, _, _) in FIGURES.items():
                value = row.get(name)
                if kind != "ratio" and value is not None and not (isinstance(value, float) and math.isnan(value)):
                    figures[f"{_key(cell)}|{name}"] = float(value)
        for cell in mine:
            if cell.method != "baseline":
                for stage, ratio in time_ratios(runner, cell).items():
                    figures[f"{_key(cell)}|{stage}_time_ratio"] = ratio
    return figures


def time_ratios(runner: CellRunner, cell: Cell) -> dict[str, float]:
    """Stage time with the cell's method over stage time without it, from interleaved runs
    (unpatched, patched, unpatched, ...) so that drift of a noisy machine cancels out."""
    from pipeline.timing import StageClock

    model = runner.model
    request = runner._request(cell.input)
    vision = ipcv.IPCVConfig(**cell.vision) if cell.vision else None
    llm = ipcv.LLMPruneConfig(**cell.llm) if cell.llm else None
    device = next(model.parameters()).device
    samples: dict[bool, dict[str, list[float]]] = {False: {"vision": [], "prefill": []}, True: {"vision": [], "prefill": []}}
    with StageClock({"vision": model.model.visual, "prefill": model.model.language_model}, device) as clock:
        for i in range(2 + RATIO_REPEATS):
            for patched in (False, True):
                handle = ipcv.apply(model, vision=vision, llm=llm) if patched else None
                with torch.inference_mode():
                    model(**request, logits_to_keep=1)
                if handle:
                    handle.remove()
                taken = clock.take()
                if i >= 2:  # two warm-up rounds
                    for stage in ("vision", "prefill"):
                        samples[patched][stage] += taken[stage]
    import statistics

    return {
        stage: statistics.median(samples[True][stage]) / statistics.median(samples[False][stage])
        for stage in ("vision", "prefill")
    }


@dataclass
class Delta:
    key: str
    baseline: float | None
    current: float | None
    worse: str
    regression: bool
    note: str = ""

    @property
    def change(self) -> str:
        if self.baseline is None or self.current is None:
            return "new" if self.baseline is None else "missing"
        if self.baseline == 0:
            return f"{self.current - self.baseline:+.4g}"
        return f"{100 * (self.current / self.baseline - 1):+.2f}%"


@dataclass
class GateResult:
    deltas: list[Delta] = field(default_factory=list)
    version_notes: list[str] = field(default_factory=list)

    @property
    def regressions(self) -> list[Delta]:
        return [d for d in self.deltas if d.regression]

    @property
    def moved(self) -> list[Delta]:
        return [d for d in self.deltas if d.regression or d.note]


def compare(baseline: dict[str, Any], figures: dict[str, float | None]) -> GateResult:
    result = GateResult()
    for name, value in baseline.get("versions", {}).items():
        now = versions().get(name)
        if now != value:
            result.version_notes.append(f"baseline made with {name} {value}, this run uses {now}")
    recorded: dict[str, float] = baseline["figures"]
    stated = {name: (t["kind"], t["tolerance"], t["worse"]) for name, t in baseline.get("tolerances", {}).items()}
    for key in sorted(set(recorded) | set(figures)):
        figure = key.rsplit("|", 1)[1]
        kind, tolerance, worse = stated.get(figure, FIGURES[figure])  # the baseline states its tolerances
        old, new = recorded.get(key), figures.get(key)
        if old is None or new is None:
            result.deltas.append(Delta(key, old, new, worse, regression=new is None, note="figure appeared" if old is None else "figure disappeared"))
            continue
        if kind == "exact":
            moved = new != old
            limit = 0.0
        elif kind == "close":
            moved = abs(new - old) > tolerance
            limit = tolerance
        else:  # a time ratio: only a rise beyond the band counts
            limit = old * tolerance
            moved = abs(new - old) > limit
        is_worse = (new > old) if worse == "higher" else (new < old)
        # a deterministic figure that moved means the computation changed: either way it stops the
        # gate until the baseline is updated on purpose; a time ratio only stops it when worse
        regression = moved and (kind != "ratio" or (is_worse and new > old + limit))
        note = ""
        if moved:
            note = "worse" if is_worse else "better"
        result.deltas.append(Delta(key, old, new, worse, regression, note))
    return result


def load_baseline(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no baseline; create it with --update")
    return json.loads(path.read_text())


def write_baseline(path: Path, spec: SweepSpec, figures: dict[str, float | None],
                   tolerances: dict[str, dict[str, Any]] | None = None) -> None:
    """Write the baseline; ``tolerances`` (kept from the old baseline on --update) default to FIGURES."""
    path.parent.mkdir(parents=True, exist_ok=True)
    defaults = {name: {"kind": k, "tolerance": t, "worse": w} for name, (k, t, w) in FIGURES.items()}
    data = {
        "profile": spec.name,
        "versions": versions(),
        "tolerances": {**defaults, **(tolerances or {})},
        "figures": dict(sorted(figures.items())),
    }
    path.write_text(json.dumps(data, indent=2) + "\n")


def result_dict(result: GateResult) -> dict[str, Any]:
    return {"regressions": [asdict(d) for d in result.regressions], "version_notes": result.version_notes}
