"""Models for the study: tiny seeded presets of the real architectures, or real checkpoints.

Tiny presets are built from configs with random weights (no download), so tests and the embedded
default run anywhere. Their vision towers use the real patch size, temporal patch, spatial merge
(and, for Qwen2.5-VL, the real window size with full-attention blocks every 4th block), at a
small width and depth 12, deep enough for the published K=3, A=7.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

_TINY_TEXT = dict(
    hidden_size=64,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=128,
    vocab_size=512,
    bos_token_id=0,
    eos_token_id=1,
    pad_token_id=2,
    rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
)
_TINY_SPECIAL = dict(image_token_id=500, video_token_id=501, vision_start_token_id=502, vision_end_token_id=503)


def _tiny_qwen2_vl(vision: dict[str, Any] | None = None) -> nn.Module:
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    vision_cfg = dict(
        depth=12, embed_dim=64, num_heads=4, mlp_ratio=4, hidden_size=64,
        patch_size=14, spatial_merge_size=2, temporal_patch_size=2,
    )
    vision_cfg.update(vision or {})
    config = Qwen2VLConfig(vision_config=vision_cfg, text_config=dict(_TINY_TEXT), **_TINY_SPECIAL)
    return Qwen2VLForConditionalGeneration(config)


def _tiny_qwen2_5_vl(vision: dict[str, Any] | None = None) -> nn.Module:
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    vision_cfg = dict(
        depth=12, hidden_size=64, intermediate_size=128, num_heads=4, out_hidden_size=64,
        patch_size=14, spatial_merge_size=2, temporal_patch_size=2,
        window_size=112, fullatt_block_indexes=[3, 7, 11],
    )
    vision_cfg.update(vision or {})
    config = Qwen2_5_VLConfig(vision_config=vision_cfg, text_config=dict(_TINY_TEXT), **_TINY_SPECIAL)
    return Qwen2_5_VLForConditionalGeneration(config)


@dataclass(frozen=True)
class Preset:
    name: str
    family: str
    build: Callable[..., nn.Module]
    description: str


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("tiny-qwen2-vl", "qwen2_vl", _tiny_qwen2_vl, "Qwen2-VL architecture, width 64, 12 ViT blocks"),
        Preset("tiny-qwen2.5-vl", "qwen2_5_vl", _tiny_qwen2_5_vl,
               "Qwen2.5-VL architecture (window attention), width 64, 12 ViT blocks"),
    )
}

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def parse_dtype(name: str) -> torch.dtype:
    try:
        return DTYPES[name]
    except KeyError:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {name!r}") from None


def build_tiny(
    name: str,
    seed: int = 0,
    dtype: str = "float32",
    attn_implementation: str = "sdpa",
    vision: dict[str, Any] | None = None,
) -> nn.Module:
    """A tiny preset with weights drawn from ``seed``: the same seed gives the same model."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}")
    torch_dtype = parse_dtype(dtype)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = PRESETS[name].build(vision)
    model.set_attn_implementation(attn_implementation)
    return model.to(torch_dtype).eval()


def load_model(
    name_or_path: str,
    dtype: str = "bfloat16",
    attn_implementation: str = "sdpa",
    device: str = "cpu",
    seed: int = 0,
) -> nn.Module:
    """A tiny preset by name, else a real checkpoint from a local path or hub id."""
    if name_or_path in PRESETS:
        check_device(device)
        return build_tiny(name_or_path, seed=seed, dtype=dtype, attn_implementation=attn_implementation).to(device)
    from transformers import AutoModelForImageTextToText

    torch_dtype = parse_dtype(dtype)
    check_device(device)
    try:
        model = AutoModelForImageTextToText.from_pretrained(
            name_or_path, dtype=torch_dtype, attn_implementation=attn_implementation
        )
    except (OSError, ValueError) as err:
        raise ValueError(
            f"could not load model {name_or_path!r}: not a preset ({', '.join(PRESETS)}), "
            f"nor a loadable local path or hub id ({type(err).__name__}: {err})"
        ) from err
    return model.to(device).eval()


def check_device(device: str) -> None:
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available on this machine")
    if not (device == "cpu" or device.startswith("cuda")):
        raise ValueError(f"device must be 'cpu' or 'cuda[:N]', got {device!r}")
