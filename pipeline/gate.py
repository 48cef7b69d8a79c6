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
from pipeline import columns
from pipeline.sweep.executor import run_inline
from pipeline.sweep.grid import expand
from pipeline.sweep.spec import ProfileError, SweepSpec

# figure -> (kind, tolerance, worse direction), from the column schema: exact | close (absolute
# tolerance) | ratio (relative band)
FIGURES: dict[str, tuple[str, float, str]] = {
    c.name: (c.gate.kind, c.gate.tolerance, c.worse) for c in map(columns.get, columns.GATED)
}
RATIO_REPEATS = 9


def versions() -> dict[str, str]:
    return {"torch": torch.__version__, "transformers": transformers.__version__, "ipcv": ipcv.__version__}


def measure(spec: SweepSpec) -> dict[str, float | None]:
    """Run every cell of ``spec`` in this process and return its gate figures by key."""
    cells = expand(spec)
    keys = [c.key for c in cells]
    if len(set(keys)) != len(keys):
        raise ProfileError("the gate profile must have one setting per method (cell keys model|input|method repeat)")
    figures: dict[str, float | None] = {}
    for executor, cell, row in run_inline(cells, spec.measurement.max_new_tokens):
        if row["status"] != "ok":
            raise RuntimeError(f"gate cell {cell.key} failed: {row['error']}")
        for name, (kind, _, _) in FIGURES.items():
            value = row.get(name)
            if kind != "ratio" and value is not None and not (isinstance(value, float) and math.isnan(value)):
                figures[f"{cell.key}|{name}"] = float(value)
        if cell.method != "baseline":
            for stage, ratio in executor.time_ratios(cell, RATIO_REPEATS).items():
                figures[f"{cell.key}|{stage}_time_ratio"] = ratio
    return figures


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
            note = "figure appeared" if old is None else "figure disappeared"
            result.deltas.append(Delta(key, old, new, worse, regression=new is None, note=note))
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
