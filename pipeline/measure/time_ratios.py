"""Stage time with a compression over stage time without it, measured so that drift cancels.

Runs alternate in pairs (unpatched, patched) on the same built request, so a machine that slows
down or speeds up over the measurement affects both runs of a pair alike. The estimate is the
median of the per-pair ratios with a bootstrap confidence interval of that median (seeded, so
the same samples give the same interval): a noisy machine gives a wide interval, and the gate
only calls a ratio worse when the interval clears its band (docs/ci_gate.md).
"""

from __future__ import annotations

import random
import statistics
from dataclasses import dataclass

import torch
from torch import nn

import ipcv
from pipeline.measure.stages import compressed
from pipeline.measure.timing import StageClock
from pipeline.models import family_of

WARMUP_ROUNDS = 2
BOOTSTRAP_SAMPLES = 2000
CONFIDENCE = 0.95


@dataclass(frozen=True)
class RatioEstimate:
    """Median of per-pair ratios and its bootstrap confidence interval."""

    ratio: float
    low: float
    high: float
    pairs: int


def estimate(ratios: list[float], seed: int = 0) -> RatioEstimate:
    """The median of ``ratios`` with a percentile-bootstrap interval at ``CONFIDENCE``."""
    if not ratios:
        raise ValueError("no ratios to estimate from")
    rng = random.Random(seed)
    medians = sorted(statistics.median(rng.choices(ratios, k=len(ratios))) for _ in range(BOOTSTRAP_SAMPLES))
    tail = (1 - CONFIDENCE) / 2
    low = medians[int(tail * (BOOTSTRAP_SAMPLES - 1))]
    high = medians[int((1 - tail) * (BOOTSTRAP_SAMPLES - 1))]
    return RatioEstimate(statistics.median(ratios), low, high, len(ratios))


def stage_time_ratios(model: nn.Module, request: dict[str, torch.Tensor], vision: ipcv.IPCVConfig | None,
                      llm: ipcv.LLMPruneConfig | None, repeats: int) -> dict[str, RatioEstimate]:
    """``{"vision": estimate, "prefill": estimate}``, patched over unpatched, from ``repeats``
    interleaved pairs of prefill forwards after two warm-up pairs."""
    family = family_of(model)
    stages = {"vision": family.vision_span(model), "prefill": family.language_model(model)}
    device = next(model.parameters()).device
    ratios: dict[str, list[float]] = {s: [] for s in stages}
    with StageClock(stages, device) as clock:
        for i in range(WARMUP_ROUNDS + repeats):
            times = {}
            for patched in (False, True):
                with compressed(model, vision if patched else None, llm if patched else None), torch.inference_mode():
                    model(**request, logits_to_keep=1)
                times[patched] = {s: sum(v) for s, v in clock.take().items()}
            if i >= WARMUP_ROUNDS:
                for stage in stages:
                    ratios[stage].append(times[True][stage] / times[False][stage])
    return {stage: estimate(values) for stage, values in ratios.items()}
