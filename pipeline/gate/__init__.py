"""The efficiency gate: rerun a small fixed profile and compare it with a committed baseline.

Deterministic figures (FLOPs and tokens per stage, kept counts, KV-cache bytes) must match
exactly, fidelity at fixed seeds within a stated tolerance. Costs are compared as ratios of a
method's stage to the unpatched model's on the same machine and run: instruction counts
(callgrind; deterministic, the default and what CI uses) or times (GPU runners; interleaved pairs,
a confidence interval, suspects re-measured). The baseline is validated before anything is
measured (``baseline.py``); figures are measured in ``figures.py`` and judged in ``decide.py``.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.gate.baseline import (
    COSTS,
    PINNED,
    BaselineDocument,
    BaselineError,
    check_against,
    expected_figures,
    pinned_differences,
    read,
    versions,
    write,
)
from pipeline.gate.decide import Delta, GateResult, compare, confirm, finish, result_dict
from pipeline.gate.figures import Measured, gate_cells, measure, remeasure_times
from pipeline.sweep.spec import SweepSpec

REMEASURES = 2  # times a suspect time ratio is measured again before it counts


def load(path: Path, spec: SweepSpec, costs: str | None = None) -> BaselineDocument:
    """The validated baseline of ``spec`` (``costs``: the measure asked for; default the baseline's)."""
    document = read(path)
    wanted = costs or document.costs
    check_against(document, path, spec.name, wanted, expected_figures(gate_cells(spec), wanted))
    return document


def check(spec: SweepSpec, document: BaselineDocument) -> tuple[Measured, GateResult]:
    """Measure and judge; suspect time ratios are measured again up to ``REMEASURES`` times."""
    measured = measure(spec, document.costs)
    result = compare(document, measured.figures, measured.estimates)
    for _ in range(REMEASURES):
        if not result.suspects:
            break
        again = remeasure_times(spec, [d.key for d in result.suspects])
        confirm(result, again.estimates, document)
    finish(result)
    return measured, result


__all__ = [
    "COSTS", "PINNED", "BaselineDocument", "BaselineError", "Delta", "GateResult", "Measured", "REMEASURES", "check",
    "compare", "expected_figures", "gate_cells", "load", "measure", "pinned_differences", "read", "result_dict",
    "versions", "write",
]
