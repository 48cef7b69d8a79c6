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
from torch import nn

from ipcv.families.base import FrameLayout, VisionFamily, placeholder_runs


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
    ) -> torch.Tensor:
        attn_out = block.attn(block.norm1(full_states), **kwargs)
        hidden = kept_states + attn_out.index_select(0, kept)
        return hidden + block.mlp(block.norm2(hidden))

    def attention_and_mlp(self, block: nn.Module) -> tuple[nn.Module, nn.Module]:
        return block.attn, block.mlp


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
