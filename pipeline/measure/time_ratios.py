"""Stage time with a compression over stage time without it, measured so that drift cancels.

Runs alternate (unpatched, patched, unpatched, ...) on the same built request, so a machine that
slows down or speeds up over the measurement affects both sides alike; the ratio of the medians
is what the efficiency gate compares (docs/ci_gate.md).
"""

from __future__ import annotations

import statistics

import torch
from torch import nn

import ipcv
from pipeline.measure.stages import compressed
from pipeline.measure.timing import StageClock
from pipeline.models import family_of

WARMUP_ROUNDS = 2


def stage_time_ratios(model: nn.Module, request: dict[str, torch.Tensor], vision: ipcv.IPCVConfig | None,
                      llm: ipcv.LLMPruneConfig | None, repeats: int) -> dict[str, float]:
    """``{"vision": ratio, "prefill": ratio}`` of median stage times, patched over unpatched, from
    ``repeats`` interleaved pairs of prefill forwards after two warm-up pairs."""
    family = family_of(model)
    stages = {"vision": family.tower(model), "prefill": family.language_model(model)}
    device = next(model.parameters()).device
    samples: dict[bool, dict[str, list[float]]] = {p: {s: [] for s in stages} for p in (False, True)}
    with StageClock(stages, device) as clock:
        for i in range(WARMUP_ROUNDS + repeats):
            for patched in (False, True):
                with compressed(model, vision if patched else None, llm if patched else None), torch.inference_mode():
                    model(**request, logits_to_keep=1)
                taken = clock.take()
                if i >= WARMUP_ROUNDS:
                    for stage in stages:
                        samples[patched][stage] += taken[stage]
    return {stage: statistics.median(samples[True][stage]) / statistics.median(samples[False][stage]) for stage in stages}
