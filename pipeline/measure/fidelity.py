"""Fidelity to the uncompressed model on the same input: always available, never called accuracy.

Reference (uncompressed) outputs of a request: the greedy answer, the first answer token's
log-probabilities, and the visual features handed to the LLM. A compressed run is compared with
them: exact match of the answers, KL(reference || compressed) and top-1 agreement of the first
answer token, and the mean cosine similarity of the visual features (when both have the same
number of them; the downsampling baseline does not).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from pipeline.models import family_of


@dataclass
class Outputs:
    answer: list[int]
    first_logprobs: torch.Tensor  # [V], float32, CPU
    features: torch.Tensor  # [n_visual, D], float32, CPU
    task_answers: dict[str, Any] = field(default_factory=dict)  # benchmark task -> runner.Answers
    task_error: str | None = None  # why the benchmark answers are missing


def collect(model: nn.Module, request: dict[str, torch.Tensor], max_new_tokens: int) -> Outputs:
    captured: list[torch.Tensor] = []
    family = family_of(model)
    hook = family.tower(model).register_forward_hook(
        lambda m, a, out: captured.append(family.features(out).detach().float().cpu())
    )
    try:
        with torch.inference_mode():
            out = model.generate(
                **request, max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens, do_sample=False,
                output_logits=True, return_dict_in_generate=True,
            )
    finally:
        hook.remove()
    prompt = request["input_ids"].shape[1]
    return Outputs(
        answer=out.sequences[0, prompt:].tolist(),
        first_logprobs=out.logits[0][0].float().log_softmax(-1).cpu(),
        features=torch.cat(captured) if captured else torch.empty(0),
    )


def compare(reference: Outputs, run: Outputs) -> dict[str, float | None]:
    kl = torch.sum(reference.first_logprobs.exp() * (reference.first_logprobs - run.first_logprobs))
    cosine = None
    if reference.features.shape == run.features.shape and reference.features.numel():
        cosine = float(torch.nn.functional.cosine_similarity(reference.features, run.features, dim=-1).mean())
    return {
        "fidelity_answer_match": float(reference.answer == run.answer),
        "fidelity_first_token_kl": float(kl),
        "fidelity_top1_agreement": float(reference.first_logprobs.argmax() == run.first_logprobs.argmax()),
        "fidelity_feature_cosine": cosine,
    }
