"""Analytic FLOPs of a Qwen-VL vision encoder for the tokens that actually flowed through it.

Convention: one multiply-add is 2 FLOPs; only matrix products are counted (patch embedding,
q/k/v and output projections, attention scores and weighted sum, MLP, merger, and IPCV's distance
matrix). Norms, activations, softmax, rotary embeddings and NGR's gathers are elementwise and
left out. Attention is counted per ``cu_seqlens`` segment as ``sum(l_i^2)``: per image/frame for
full-attention blocks and per window for Qwen2.5-VL's window blocks.

The token layout is read, not assumed: forward pre-hooks on each block's ``attn`` and ``mlp``
record how many tokens entered them and the ``cu_seqlens`` they were given, so the same formula
serves the unpatched and the IPCV-patched tower.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

from torch import nn


@dataclass(frozen=True)
class VisionDims:
    """The sizes the formula needs, read from a vision config of either family."""

    width: int
    mlp_hidden: int
    mlp_matrices: int  # 2 for Qwen2-VL (fc1, fc2); 3 for Qwen2.5-VL (gate, up, down)
    patch_inputs: int  # channels x temporal patch x patch x patch
    merge_unit: int  # spatial_merge_size ** 2
    out_width: int

    @classmethod
    def from_config(cls, cfg: object) -> "VisionDims":
        merge_unit = cfg.spatial_merge_size**2
        patch_inputs = cfg.in_channels * cfg.temporal_patch_size * cfg.patch_size**2
        if hasattr(cfg, "embed_dim"):  # Qwen2-VL: embed_dim is the ViT width, hidden_size the LLM's
            return cls(cfg.embed_dim, int(cfg.embed_dim * cfg.mlp_ratio), 2, patch_inputs, merge_unit, cfg.hidden_size)
        return cls(cfg.hidden_size, cfg.intermediate_size, 3, patch_inputs, merge_unit, cfg.out_hidden_size)


@dataclass
class BlockLayout:
    attn_tokens: int = 0
    attn_segments: list[int] = field(default_factory=list)
    mlp_tokens: int = 0


@dataclass
class VisionLayout:
    """Tokens per block as recorded during one forward of the tower."""

    blocks: list[BlockLayout]
    patch_tokens: int = 0
    merger_tokens: int = 0


@contextmanager
def record_vision_layout(tower: nn.Module) -> Iterator[VisionLayout]:
    """Record the token layout of the next forward(s) of ``tower`` (the last one wins)."""
    layout = VisionLayout(blocks=[BlockLayout() for _ in tower.blocks])
    handles = []

    def on_attn(i: int):
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            hidden = args[0] if args else kwargs["hidden_states"]
            cu = kwargs.get("cu_seqlens", args[1] if len(args) > 1 else None)
            bounds = [int(x) for x in cu.tolist()]
            layout.blocks[i].attn_tokens = int(hidden.shape[0])
            layout.blocks[i].attn_segments = [b - a for a, b in zip(bounds[:-1], bounds[1:])]

        return hook

    def on_mlp(i: int):
        def hook(module: nn.Module, args: tuple) -> None:
            layout.blocks[i].mlp_tokens = int(args[0].shape[0])

        return hook

    def on_patch(module: nn.Module, args: tuple, output) -> None:
        layout.patch_tokens = int(output.shape[0])

    def on_merger(module: nn.Module, args: tuple) -> None:
        layout.merger_tokens = int(args[0].shape[0])

    for i, block in enumerate(tower.blocks):
        handles.append(block.attn.register_forward_pre_hook(on_attn(i), with_kwargs=True))
        handles.append(block.mlp.register_forward_pre_hook(on_mlp(i)))
    handles.append(tower.patch_embed.register_forward_hook(on_patch))
    handles.append(tower.merger.register_forward_pre_hook(on_merger))
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
        parts["attn_proj"] += 2 * block.attn_tokens * d * 3 * d + 2 * block.attn_tokens * d * d
        parts["attn_scores"] += 2 * 2 * sum(l * l for l in block.attn_segments) * d
        parts["mlp"] += 2 * dims.mlp_matrices * block.mlp_tokens * d * dims.mlp_hidden
    groups = layout.merger_tokens // dims.merge_unit
    merged = d * dims.merge_unit
    parts["merger"] = 2 * groups * merged * merged + 2 * groups * merged * dims.out_width
    parts["total"] = sum(parts.values())
    return parts
