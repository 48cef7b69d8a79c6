"""Analytic FLOPs of a vision encoder for the tokens that actually flowed through it.

Convention: one multiply-add is 2 FLOPs; only matrix products are counted (patch embedding,
q/k/v and output projections, attention scores and weighted sum, MLP, merger, and IPCV's distance
matrix; InternVL's projector after the pixel shuffle counts as the merger). Queries and the output
projection are counted for the tokens that ask queries: fewer than all in IPCV's
Attention-Stabilization blocks with ``as_queries="kept"``. Norms, activations,
softmax, rotary embeddings and NGR's gathers are elementwise and left out. Attention is counted
per attended sequence as ``sum(l_i^2)``: per image/frame for full-attention blocks, per window
for Qwen2.5-VL's window blocks and per tile for InternViT (``sum(q_i * l_i)`` when ``q_i`` of a
segment's ``l_i`` tokens ask queries).

The token layout is read, not assumed: forward pre-hooks on each block's attention and MLP
record how many tokens entered them and the sequences attention ran within (the family adapter
says where those modules are and how a call describes its sequences), so the same formula serves
the unpatched and the IPCV-patched tower. The sizes come from the family adapter too
(``vision_dims``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from torch import nn

from pipeline.models import VisionDims, family_of

__all__ = ["BlockLayout", "VisionDims", "VisionLayout", "record_vision_layout", "vision_dims", "vision_flops"]


def vision_dims(model: nn.Module) -> VisionDims:
    """The formula's sizes for a vision tower (or a whole model), from its family adapter."""
    return family_of(model).vision_dims(model)


@dataclass
class BlockLayout:
    """Tokens one block's attention and MLP received. ``query_segments``: queries per attention
    segment when fewer tokens asked queries than gave keys (IPCV's ``as_queries="kept"``), else
    ``None`` (every token did)."""

    attn_tokens: int = 0
    attn_segments: list[int] = field(default_factory=list)
    mlp_tokens: int = 0
    query_segments: list[int] | None = None

    @property
    def query_tokens(self) -> int:
        return self.attn_tokens if self.query_segments is None else sum(self.query_segments)


@dataclass
class VisionLayout:
    """Tokens per block as recorded during one forward of the tower."""

    blocks: list[BlockLayout]
    patch_tokens: int = 0
    merger_tokens: int = 0  # patches entering the merger (its input values / the encoder's width)


def _tokens(x) -> int:
    """Tokens of a ``[..., D]`` tensor, packed ``[N, D]`` or batched ``[T, L, D]``."""
    return x.numel() // x.shape[-1]


@contextmanager
def record_vision_layout(model: nn.Module) -> Iterator[VisionLayout]:
    """Record the token layout of the next forward(s) of a vision tower or of a whole model's
    vision stage (the last one wins)."""
    family = family_of(model)
    blocks, patch_embed, merger = family.layout_modules(model)
    width = family.vision_dims(model).width
    layout = VisionLayout(blocks=[BlockLayout() for _ in blocks])
    handles = []

    def on_attn(i: int):
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            hidden = args[0] if args else kwargs["hidden_states"]
            layout.blocks[i].attn_tokens = _tokens(hidden)
            layout.blocks[i].attn_segments = family.attention_segments(hidden, args, kwargs)
            queries = kwargs.get("ipcv_queries")
            layout.blocks[i].query_segments = None if queries is None else list(queries.lengths)

        return hook

    def on_mlp(i: int):
        def hook(module: nn.Module, args: tuple) -> None:
            layout.blocks[i].mlp_tokens = _tokens(args[0])

        return hook

    def on_patch(module: nn.Module, args: tuple, output) -> None:
        layout.patch_tokens = _tokens(output)

    def on_merger(module: nn.Module, args: tuple) -> None:
        layout.merger_tokens = args[0].numel() // width

    for i, (attn, mlp) in enumerate(blocks):
        handles.append(attn.register_forward_pre_hook(on_attn(i), with_kwargs=True))
        handles.append(mlp.register_forward_pre_hook(on_mlp(i)))
    handles.append(patch_embed.register_forward_hook(on_patch))
    if merger is not None:
        handles.append(merger.register_forward_pre_hook(on_merger))
    try:
        yield layout
    finally:
        for h in handles:
            h.remove()


def vision_flops(dims: VisionDims, layout: VisionLayout, ipcv_overhead: int = 0) -> dict[str, int]:
    """FLOPs by part of the encoder (2 per multiply-add), and their ``total``."""
    d = dims.width
    parts = {
        "patch_embed": 2 * layout.patch_tokens * dims.patch_inputs * d,
        "attn_proj": 0,
        "attn_scores": 0,
        "mlp": 0,
        "merger": 0,
        "ipcv_overhead": ipcv_overhead,
    }
    for block in layout.blocks:
        # keys and values for every token; queries and the output projection for the querying ones
        parts["attn_proj"] += 2 * block.attn_tokens * d * 2 * d + 2 * 2 * block.query_tokens * d * d
        queries = block.query_segments or block.attn_segments
        parts["attn_scores"] += 2 * 2 * sum(q * n for q, n in zip(queries, block.attn_segments)) * d
        parts["mlp"] += 2 * dims.mlp_matrices * block.mlp_tokens * d * dims.mlp_hidden
    groups = layout.merger_tokens // dims.merge_unit
    merged = d * dims.merge_unit
    hidden = dims.merger_hidden or merged
    parts["merger"] = 2 * groups * merged * hidden + 2 * groups * hidden * dims.out_width
    parts["total"] = sum(parts.values())
    return parts
