"""Analytic FLOPs of the language model's prefill for the tokens that actually flowed through it.

Convention as for the vision encoder (2 FLOPs per multiply-add, matrix products only). Per decoder
layer with ``n`` tokens: q/k/v/o projections ``2 n D (H hd + 2 Hkv hd) + 2 n H hd D``; attention
``2 * 2 * H * hd * n^2`` (all query-key pairs, as FastV's formula and eager or masked-sdpa kernels
compute them; a causal flash kernel skips about half); gated MLP ``2 * 3 * n * D * I``. The LM
head ``2 * n_logits * D * V`` is counted for the positions whose logits were computed (all of
them in ``model(...)``, the last one in ``generate``'s prefill). Token counts per layer are
recorded by hooks, so pruning is counted as it happened. The sizes come from the family adapter
(``ModelFamily.llm_dims``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from torch import nn

from pipeline.models import LLMDims

__all__ = ["LLMDims", "LLMLayout", "prefill_flops", "record_llm_layout"]


@dataclass
class LLMLayout:
    """Tokens per decoder layer (one entry per row) and logits positions of the last forward."""

    layer_tokens: list[list[int]] = field(default_factory=list)
    logits_positions: int = 0


@contextmanager
def record_llm_layout(language_model: nn.Module, lm_head: nn.Module | None = None) -> Iterator[LLMLayout]:
    layout = LLMLayout(layer_tokens=[[] for _ in language_model.layers])
    handles = []

    def on_layer(i: int):
        # at the attention's input: a pruning wrapper shortens the sequence inside the layer
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            hidden = args[0] if args else kwargs["hidden_states"]
            layout.layer_tokens[i] = [int(hidden.shape[1])] * int(hidden.shape[0])

        return hook

    def on_head(module: nn.Module, args: tuple) -> None:
        layout.logits_positions = int(args[0].shape[0] * args[0].shape[1])

    for i, layer in enumerate(language_model.layers):
        handles.append(layer.self_attn.register_forward_pre_hook(on_layer(i), with_kwargs=True))
    if lm_head is not None:
        handles.append(lm_head.register_forward_pre_hook(on_head))
    try:
        yield layout
    finally:
        for h in handles:
            h.remove()


def prefill_flops(dims: LLMDims, layout: LLMLayout, selection_flops: int = 0) -> dict[str, int]:
    d, hd = dims.width, dims.head_dim
    parts = {"attn_proj": 0, "attn_scores": 0, "mlp": 0, "lm_head": 0, "selection": selection_flops}
    for rows in layout.layer_tokens:
        for n in rows:
            parts["attn_proj"] += 2 * n * d * (dims.heads * hd + 2 * dims.kv_heads * hd) + 2 * n * dims.heads * hd * d
            parts["attn_scores"] += 2 * 2 * dims.heads * hd * n * n
            parts["mlp"] += 2 * 3 * n * d * dims.intermediate
    parts["lm_head"] = 2 * layout.logits_positions * d * dims.vocab
    parts["total"] = sum(parts.values())
    return parts
