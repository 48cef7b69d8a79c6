"""One vision-encoder comparison: the same tower and input, unpatched and with IPCV.

Gives what the embedded default prints: tokens per stage, analytic FLOPs from the recorded
layout, and fidelity of the features handed to the LLM (cosine similarity to the unpatched
tower's; this is fidelity, not accuracy).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

import ipcv
from pipeline.measure.vision_flops import record_vision_layout, vision_dims, vision_flops
from pipeline.models import VisionInput, family_of


@dataclass
class VisionComparison:
    tokens_in: list[int]
    tokens_kept: list[int]
    tokens_to_merger: list[int]
    flops_baseline: dict[str, int]
    flops_ipcv: dict[str, int]
    cosine_mean: float
    cosine_min: float

    @property
    def flops_saved(self) -> float:
        return 1.0 - self.flops_ipcv["total"] / self.flops_baseline["total"]


def run_tower(tower: nn.Module, inp: VisionInput) -> tuple[torch.Tensor, object]:
    """Features handed to the LLM (merger output) and the recorded token layout."""
    family = family_of(tower)
    param = next(tower.parameters())
    args, kwargs = family.vision_input_call(inp.to(param.device, param.dtype))
    with torch.inference_mode(), record_vision_layout(tower) as layout:
        out = tower(*args, **kwargs)
    return family.features(out), layout


def compare_vision(model: nn.Module, inp: VisionInput, config: ipcv.IPCVConfig) -> VisionComparison:
    tower = family_of(model).tower(model)
    dims = vision_dims(tower)
    reference, base_layout = run_tower(tower, inp)
    with ipcv.apply(tower, vision=config) as handle:
        features, ipcv_layout = run_tower(tower, inp)
        stats = handle.vision_stats
    cosine = torch.nn.functional.cosine_similarity(features.float(), reference.float(), dim=-1)
    return VisionComparison(
        tokens_in=stats.tokens_in,
        tokens_kept=stats.tokens_kept,
        tokens_to_merger=stats.tokens_to_merger,
        flops_baseline=vision_flops(dims, base_layout),
        flops_ipcv=vision_flops(dims, ipcv_layout, stats.neighbor_search_flops),
        cosine_mean=float(cosine.mean()),
        cosine_min=float(cosine.min()),
    )
