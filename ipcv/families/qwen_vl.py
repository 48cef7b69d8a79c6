"""Qwen2-VL and Qwen2.5-VL: a packed sequence of patches with ``cu_seqlens`` boundaries.

The tower (``model.model.visual``) is called with ``grid_thw`` (frames, height and width in
patches of every image or video) and hands each block ``cu_seqlens`` and rotary position
embeddings. Blocks are pre-norm: ``h + attn(norm1(h))`` then ``h + mlp(norm2(h))``. Qwen2.5-VL's
window blocks get per-window ``cu_seqlens`` from the tower; the patch reads boundaries from each
block call, so windows need no code of their own.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ipcv.families.base import FrameLayout, KeptQueries, VisionFamily, attention_function, placeholder_runs


class QwenVLFamily(VisionFamily):
    tower_paths = ("visual", "model.visual")
    block_parts = ("norm1", "attn", "norm2", "mlp")

    def __init__(self, name: str, tower_classes: tuple[str, ...], model_classes: tuple[str, ...]) -> None:
        self.name = name
        self.tower_classes = tower_classes
        self.model_classes = model_classes

    def _block_list(self, tower: nn.Module) -> Any:
        return getattr(tower, "blocks", None)

    def frame_layout(self, tower: nn.Module, args: tuple, kwargs: dict) -> FrameLayout:
        grid_thw = kwargs.get("grid_thw", args[1] if len(args) > 1 else None)
        if grid_thw is None:
            raise ValueError("IPCV needs grid_thw in the call of the vision tower")
        rows = [[int(v) for v in row] for row in grid_thw.tolist()]  # one read (the tower reads it too)
        return FrameLayout(frames_per_item=[t for t, _, _ in rows],
                           tokens_per_frame=[h * w for t, h, w in rows for _ in range(t)])

    def item_rows(self, config: Any, input_ids: torch.Tensor, frames: FrameLayout) -> list[int] | None:
        # each image / video is one run of its placeholder token in its row, of t*h*w / merge^2 tokens
        merge = config.vision_config.spatial_merge_size ** 2
        sizes = iter(frames.tokens_per_frame)
        item_tokens = [sum(next(sizes) for _ in range(n)) // merge for n in frames.frames_per_item]
        for token in (config.image_token_id, config.video_token_id):
            rows, lengths = placeholder_runs(input_ids == token)
            if lengths == item_tokens:
                return rows
        return None

    def split_block_call(self, args: tuple, kwargs: dict) -> tuple[torch.Tensor, dict[str, Any]]:
        kwargs = dict(kwargs)
        if args:
            hidden = args[0]
            if len(args) > 1:
                kwargs["cu_seqlens"] = args[1]
            if len(args) > 2:
                raise TypeError("IPCV expects the vision blocks to be called with keyword arguments")
        else:
            hidden = kwargs.pop("hidden_states")
        if "cu_seqlens" not in kwargs:
            raise TypeError("IPCV expects the vision tower to pass cu_seqlens to its blocks")
        return hidden, kwargs

    def stabilized_block(
        self,
        block: nn.Module,
        kept_states: torch.Tensor,
        full_states: torch.Tensor,
        kept: torch.Tensor,
        kwargs: dict[str, Any],
        queries: KeptQueries | None = None,
    ) -> torch.Tensor:
        if queries is None:
            attended = block.attn(block.norm1(full_states), **kwargs).index_select(0, kept)
        else:
            attended = block.attn(block.norm1(full_states), ipcv_queries=queries, **kwargs)
        hidden = kept_states + attended
        return hidden + block.mlp(block.norm2(hidden))

    def attend_kept(self, attention: nn.Module, hidden: torch.Tensor, queries: KeptQueries,
                    kwargs: dict[str, Any]) -> torch.Tensor:
        return _kept_query_attention(attention, hidden, queries, kwargs)

    def attention_and_mlp(self, block: nn.Module) -> tuple[nn.Module, nn.Module]:
        return block.attn, block.mlp


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Qwen-VL's vision rotary embedding of ``x [n, heads, head_dim]``, in float32 as the tower
    computes it (``apply_rotary_pos_emb_vision``), for queries and keys of different lengths."""
    xf = x.float()
    half = xf.shape[-1] // 2
    rotated = torch.cat((-xf[..., half:], xf[..., :half]), dim=-1)
    return (xf * cos.unsqueeze(-2).float() + rotated * sin.unsqueeze(-2).float()).to(x.dtype)


def _kept_query_attention(attention: nn.Module, x: torch.Tensor, queries: KeptQueries,
                          kwargs: dict[str, Any]) -> torch.Tensor:
    """``attention``'s output for the kept rows of ``x [N, D]``: queries from the kept tokens only
    (the first third of the fused qkv weight), keys and values from every token, each segment
    attending within itself as in the tower's own call, then the output projection on the kept
    rows. Returns ``[M, D]``.

    The kernel is called as the tower calls it: a flash (varlen) implementation once for all
    segments, with the kept queries' boundaries against the tower's ``cu_seqlens``; any other once
    per segment, as transformers' own loop does."""
    n, width = x.shape
    heads = attention.num_heads
    weight, bias = attention.qkv.weight, attention.qkv.bias
    q = F.linear(x.index_select(0, queries.index), weight[:width], None if bias is None else bias[:width])
    kv = F.linear(x, weight[width:], None if bias is None else bias[width:])
    q = q.view(q.shape[0], heads, -1)
    k, v = kv.view(n, 2, heads, -1).unbind(1)
    (cos, sin), (cos_q, sin_q) = kwargs["position_embeddings"], queries.position_embeddings
    q, k = _rotate(q, cos_q, sin_q), _rotate(k, cos, sin)
    q, k, v = (t.transpose(0, 1).unsqueeze(0) for t in (q, k, v))  # [1, heads, tokens, head_dim]
    from transformers.utils.generic import is_flash_attention_requested

    kernel = attention_function(attention)
    common = {"attention_mask": None, "scaling": attention.scaling, "dropout": 0.0, "is_causal": False}
    if is_flash_attention_requested(attention.config) and queries.boundaries is not None:
        max_q, max_k = queries.longest or (max(queries.lengths), max(queries.key_lengths))
        out, _ = kernel(attention, q, k, v, cu_seq_lens_q=queries.boundaries, cu_seq_lens_k=kwargs["cu_seqlens"],
                        max_length_q=max_q, max_length_k=max_k, **common)
        return attention.proj(out.reshape(q.shape[2], -1).contiguous())
    outputs, q_at, k_at = [], 0, 0
    for q_len, k_len in zip(queries.lengths, queries.key_lengths):
        if q_len:
            out, _ = kernel(attention, q[:, :, q_at:q_at + q_len], k[:, :, k_at:k_at + k_len],
                            v[:, :, k_at:k_at + k_len], **common)
            outputs.append(out)
        q_at, k_at = q_at + q_len, k_at + k_len
    out = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=1)
    return attention.proj(out.reshape(q.shape[2], -1).contiguous())


QWEN2_VL = QwenVLFamily(
    name="Qwen2-VL",
    tower_classes=("Qwen2VisionTransformerPretrainedModel",),
    model_classes=("Qwen2VLForConditionalGeneration", "Qwen2VLModel"),
)
QWEN2_5_VL = QwenVLFamily(
    name="Qwen2.5-VL",
    tower_classes=("Qwen2_5_VisionTransformerPretrainedModel",),
    model_classes=("Qwen2_5_VLForConditionalGeneration", "Qwen2_5_VLModel"),
)
