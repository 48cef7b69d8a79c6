"""Deciding, figure by figure, whether this run regressed against the baseline.

- ``exact`` figures (FLOPs, tokens, kept counts, KV bytes): any change stops the gate, either way:
  the computation changed, and the baseline must be updated on purpose.
- ``close`` figures (fidelity at fixed seeds): a change beyond the tolerance stops it.
- ``work_ratio`` figures (instruction counts): a rise beyond the band stops it; a fall beyond it
  is reported as better.
- ``time_ratio`` figures: the same band, judged on the confidence interval: the figure is
  *suspect* only when the whole interval lies above the band; the gate re-measures suspects and
  fails only when every measurement agrees (``check`` in ``pipeline/gate/__init__.py``).

The reference of a cost ratio is the baseline's value, except for a stage the method cannot
change (IPCV hands the LLM every visual token; DART and FastV leave the vision tower alone):
there the reference is 1.0, a "did not get slower" check, so a slowdown that was committed into
the baseline is still caught.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from pipeline.gate.baseline import BaselineDocument, figure_of, method_of, version_differences
from pipeline.measure.time_ratios import RatioEstimate


@dataclass
class Delta:
    key: str
    baseline: float | None
    current: float | None
    worse: str
    regression: bool
    note: str = ""
    interval: tuple[float, float] | None = None  # time ratios: the confidence interval

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
    remeasured: list[str] = field(default_factory=list)

    @property
    def regressions(self) -> list[Delta]:
        return [d for d in self.deltas if d.regression]

    @property
    def suspects(self) -> list[Delta]:
        return [d for d in self.deltas if d.note == "suspect"]

    @property
    def moved(self) -> list[Delta]:
        return [d for d in self.deltas if d.regression or d.note]


def reference_value(key: str, recorded: float) -> float:
    """What a cost ratio is compared with: 1.0 for a stage the method cannot change."""
    figure = figure_of(key)
    method = method_of(key)
    stage = figure.split("_", 1)[0]
    if figure.endswith("_ratio") and method is not None and stage not in method.stages:
        return 1.0
    return recorded


def judge(key: str, old: float, new: float, kind: str, tolerance: float, worse: str,
          estimate: RatioEstimate | None = None) -> Delta:
    if kind == "exact":
        moved = new != old
        is_worse = (new > old) if worse == "higher" else (new < old)
        return Delta(key, old, new, worse, moved, ("worse" if is_worse else "better") if moved else "")
    if kind == "close":
        moved = abs(new - old) > tolerance
        is_worse = (new > old) if worse == "higher" else (new < old)
        return Delta(key, old, new, worse, moved, ("worse" if is_worse else "better") if moved else "")
    reference = reference_value(key, old)
    upper, lower = reference * (1 + tolerance), reference * (1 - tolerance)
    if kind == "work_ratio":
        if new > upper:
            return Delta(key, old, new, worse, True, "worse")
        return Delta(key, old, new, worse, False, "better" if new < lower else "")
    low, high = (estimate.low, estimate.high) if estimate else (new, new)
    interval = (low, high) if estimate else None
    if low > upper:
        return Delta(key, old, new, worse, False, "suspect", interval)
    return Delta(key, old, new, worse, False, "better" if high < lower else "", interval)


def compare(baseline: BaselineDocument | dict[str, Any], figures: dict[str, float],
            estimates: dict[str, RatioEstimate] | None = None) -> GateResult:
    """Every figure of the baseline and of this run, judged by the baseline's stated tolerances.
    A figure missing on either side is a regression (the baseline was validated against the
    profile, so this means the measurement changed)."""
    if isinstance(baseline, dict):
        baseline = BaselineDocument.model_validate(baseline)
    result = GateResult(version_notes=version_differences(baseline))
    estimates = estimates or {}
    for key in sorted(set(baseline.figures) | set(figures)):
        old, new = baseline.figures.get(key), figures.get(key)
        stated = baseline.tolerances[figure_of(key)]
        if old is None or new is None:
            note = "figure appeared" if old is None else "figure disappeared"
            result.deltas.append(Delta(key, old, new, stated.worse, True, note))
            continue
        result.deltas.append(judge(key, float(old), float(new), stated.kind, stated.tolerance, stated.worse,
                                   estimates.get(key)))
    return result


def confirm(result: GateResult, again: dict[str, RatioEstimate], baseline: BaselineDocument) -> None:
    """Re-judge the suspects with a second measurement: still suspect stays suspect, cleared is cleared."""
    for i, delta in enumerate(result.deltas):
        if delta.note != "suspect" or delta.key not in again:
            continue
        stated = baseline.tolerances[figure_of(delta.key)]
        estimate = again[delta.key]
        result.deltas[i] = judge(delta.key, delta.baseline, estimate.ratio, stated.kind, stated.tolerance, stated.worse,
                                 estimate)
        result.remeasured.append(delta.key)


def finish(result: GateResult) -> None:
    """Suspects that every re-measurement confirmed are regressions."""
    for delta in result.deltas:
        if delta.note == "suspect":
            delta.regression, delta.note = True, "worse (confirmed by re-measuring)"


def result_dict(result: GateResult) -> dict[str, Any]:
    return {"regressions": [asdict(d) for d in result.regressions], "version_notes": result.version_notes,
            "remeasured": result.remeasured}
