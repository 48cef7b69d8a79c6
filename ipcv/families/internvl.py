"""InternVL (InternVL3, ``InternVLForConditionalGeneration``): fixed tiles as batch rows.

The tower (``model.model.vision_tower``, ``InternVLVisionModel``) takes ``pixel_values [T, 3, 448,
448]``: every tile (an image is cut into up to ``max_patches`` tiles plus a thumbnail; a video
frame is one tile) is a row of 1 CLS token + 1024 patch tokens. Its blocks
(``encoder.layer``) take only the hidden states: ``h + lambda_1 * attention(layernorm_before(h))``
then ``h + lambda_2 * mlp(layernorm_after(h))``; InternViT-6B adds q/k RMSNorm. After the tower
the CLS token is dropped and a pixel shuffle merges 4 patches into one LLM token (256 per tile).

Because tiles are rows of one tensor, the patch keeps the same number of tokens in every tile
(``ipcv/vision_tiled.py``): that is the published InternViT rule, and it keeps sdpa / flash
kernels on plain rectangular batches.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ipcv.families.base import FrameLayout, KeptQueries, VisionFamily, attention_function, placeholder_runs

CLS = 1  # tokens in front of each tile's patches


class InternVLFamily(VisionFamily):
    name = "InternVL"
    layout = "tiled"
    tower_classes = ("InternVLVisionModel",)
    model_classes = ("InternVLForConditionalGeneration", "InternVLModel")
    tower_paths = ("vision_tower", "model.vision_tower")
    block_parts = ("attention", "mlp", "layernorm_before", "layernorm_after", "lambda_1", "lambda_2")

    def _block_list(self, tower: nn.Module) -> Any:
        encoder = getattr(tower, "encoder", None)
        return getattr(encoder, "layer", None)

    def check_model(self, model: nn.Module) -> None:
        """The features must come from the last block (the patch restores every token there)."""
        for config in (getattr(model, "config", None), getattr(getattr(model, "model", None), "config", None)):
            layer = getattr(config, "vision_feature_layer", -1) if config is not None else -1
            if layer != -1:
                raise ValueError(f"IPCV on InternVL needs vision_feature_layer == -1 (the features of the last vision "
                                 f"block, where every token is restored); this model takes layer {layer}")

    def frame_layout(self, tower: nn.Module, args: tuple, kwargs: dict) -> FrameLayout:
        pixels = kwargs.get("pixel_values", args[0] if args else None)
        if pixels is None:
            raise ValueError("IPCV needs pixel_values in the call of the vision tower")
        patch = tower.config.patch_size
        ph, pw = patch if isinstance(patch, (list, tuple)) else (patch, patch)
        tiles, tokens = int(pixels.shape[0]), CLS + (int(pixels.shape[-2]) // ph) * (int(pixels.shape[-1]) // pw)
        return FrameLayout(frames_per_item=[1] * tiles, tokens_per_frame=[tokens] * tiles)

    def item_rows(self, config: Any, input_ids: torch.Tensor, frames: FrameLayout) -> list[int] | None:
        # every image (or video frame) is one run of the image token, ``image_seq_length`` per tile
        per_tile = int(getattr(config, "image_seq_length", 256))
        rows = []
        for row, length in zip(*placeholder_runs(input_ids == config.image_token_id)):
            if length % per_tile:
                return None
            rows += [row] * (length // per_tile)
        return rows if len(rows) == len(frames.tokens_per_frame) else None

    def split_block_call(self, args: tuple, kwargs: dict) -> tuple[torch.Tensor, dict[str, Any]]:
        kwargs = dict(kwargs)
        hidden = args[0] if args else kwargs.pop("hidden_states")
        if len(args) > 1 or kwargs:
            raise TypeError("IPCV expects InternVL vision blocks to be called with the hidden states only")
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
        """``kept_states [T, k, D]`` at positions ``kept [T, k]`` of ``full_states [T, L, D]``."""
        if queries is None:
            attended, _ = block.attention(block.layernorm_before(full_states))
            attended = attended.gather(1, kept[..., None].expand(-1, -1, attended.shape[-1]))
        else:
            attended, _ = block.attention(block.layernorm_before(full_states), ipcv_queries=queries)
        hidden = kept_states + block.lambda_1 * attended
        return hidden + block.lambda_2 * block.dropout(block.mlp(block.layernorm_after(hidden)))

    def attend_kept(self, attention: nn.Module, hidden: torch.Tensor, queries: KeptQueries,
                    kwargs: dict[str, Any]) -> tuple[torch.Tensor, Any]:
        return _kept_query_attention(attention, hidden, queries.index)

    def attention_and_mlp(self, block: nn.Module) -> tuple[nn.Module, nn.Module]:
        return block.attention, block.mlp


def _kept_query_attention(attention: nn.Module, x: torch.Tensor, kept: torch.Tensor) -> tuple[torch.Tensor, Any]:
    """InternViT attention for the kept rows ``kept [T, k]`` of tiles ``x [T, L, D]``: queries
    (and q-norm) from the kept tokens only, keys and values from every token of the tile, one
    batched kernel call over the tiles, the output projection on the kept rows."""
    tiles, length, width = x.shape
    heads, head_dim = attention.num_heads, attention.head_dim
    rows = x.gather(1, kept[..., None].expand(-1, -1, width))
    q = attention.q_norm(attention.q_proj(rows)).reshape(tiles, -1, heads, head_dim).transpose(1, 2)
    k = attention.k_norm(attention.k_proj(x)).reshape(tiles, length, heads, head_dim).transpose(1, 2)
    v = attention.v_proj(x).view(tiles, length, heads, head_dim).transpose(1, 2)
    out, weights = attention_function(attention)(attention, q, k, v, None, dropout=0.0, scaling=attention.scale,
                                                 is_causal=False)
    out = attention.projection_layer(out.reshape(tiles, kept.shape[1], width))
    return attention.projection_dropout(out), weights


INTERNVL = InternVLFamily()
