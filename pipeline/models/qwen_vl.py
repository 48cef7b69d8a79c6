"""Qwen2-VL and Qwen2.5-VL in the study: sizes, patch geometry, requests, FLOPs parameters.

Patches of 14 x 14 pixels over 2 frames (temporal patch), merged 2 x 2 into one LLM token, so
image sides are multiples of 28 and videos have an even number of frames. The tower takes
``pixel_values [patches, 3 * 2 * 14 * 14]`` with ``grid_thw`` and returns the merger output as
``pooler_output``.

Architecture sizes (random weights): ``tiny`` (width 64, 12 ViT blocks, deep enough for the
published K=3, A=7; real patch, temporal patch, merge and, for Qwen2.5-VL, window geometry with
full-attention blocks every 4th block) for tests and the embedded default; for Qwen2-VL also
``small`` (a reduced model for CPU benchmarks) and ``7b`` (Qwen2-VL-7B: LLM width 3584, 28
layers, 28 / 4 heads, MLP 18944, vocabulary 152064; ViT depth 32, width 1280, 16 heads).

Requests: real checkpoints use their own processor with the Qwen chat format; tiny presets the
Qwen-VL image processor for pixels and the word tokenizer for text. Video frames are normalised
by the same image processor and grouped into temporal patches here (``video_patches``), because
the library's video processor needs torchvision.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from ipcv.families.qwen_vl import QWEN2_5_VL, QWEN2_VL, QwenVLFamily
from pipeline.models.family import ModelFamily, Requirements, VisionDims
from pipeline.models.requests import AnswerDecoding, RequestSpec, TinyTokenizer, VisionInput

PATCH, TEMPORAL, MERGE = 14, 2, 2
GEOMETRY = dict(patch_size=PATCH, temporal_patch_size=TEMPORAL, spatial_merge_size=MERGE)
REQUIREMENTS = Requirements(PATCH * MERGE, TEMPORAL, f"Qwen-VL patch {PATCH} x merge {MERGE}")

_TINY_TEXT = dict(
    hidden_size=64, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128,
    vocab_size=512, rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
)
_TINY_TOKENS = dict(image_token_id=500, video_token_id=501, vision_start_token_id=502, vision_end_token_id=503)
_SPECIAL = dict(bos_token_id=0, eos_token_id=1, pad_token_id=2)

# The published architectures (config.json of the Qwen/Qwen2-VL-* and Qwen/Qwen2.5-VL-* Instruct
# checkpoints): what latency, memory and FLOPs depend on. Built with random weights, for costs.
_QWEN_TOKENS = dict(image_token_id=151655, video_token_id=151656, vision_start_token_id=151652,
                    vision_end_token_id=151653)


def _qwen_text(hidden: int, layers: int, heads: int, kv_heads: int, intermediate: int, vocab: int,
               tied: bool) -> dict[str, Any]:
    return dict(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                intermediate_size=intermediate, vocab_size=vocab, tie_word_embeddings=tied, rms_norm_eps=1e-6,
                rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]})


def _qwen2_vl_size(text: dict[str, Any]) -> dict[str, Any]:
    vision = dict(depth=32, embed_dim=1280, num_heads=16, mlp_ratio=4, hidden_size=text["hidden_size"])
    return dict(text=text, vision=vision, tokens=_QWEN_TOKENS)


def _qwen2_5_vl_size(text: dict[str, Any]) -> dict[str, Any]:
    vision = dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=text["hidden_size"],
                  window_size=112, fullatt_block_indexes=[7, 15, 23, 31], tokens_per_second=2)
    return dict(text=text, vision=vision, tokens=_QWEN_TOKENS)


QWEN2_VL_SIZES: dict[str, dict[str, Any]] = {
    "tiny": dict(
        text=_TINY_TEXT,
        vision=dict(depth=12, embed_dim=64, num_heads=4, mlp_ratio=4, hidden_size=64),
        tokens=_TINY_TOKENS,
    ),
    "small": dict(
        text=dict(hidden_size=512, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=2,
                  intermediate_size=1536, vocab_size=8192,
                  rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [8, 12, 12]}),
        vision=dict(depth=16, embed_dim=512, num_heads=8, mlp_ratio=4, hidden_size=512),
        tokens=dict(image_token_id=8000, video_token_id=8001, vision_start_token_id=8002, vision_end_token_id=8003),
    ),
    "2b": _qwen2_vl_size(_qwen_text(1536, 28, 12, 2, 8960, 151936, tied=True)),
    "7b": _qwen2_vl_size(_qwen_text(3584, 28, 28, 4, 18944, 152064, tied=False)),
    "72b": _qwen2_vl_size(_qwen_text(8192, 80, 64, 8, 29568, 152064, tied=False)),
}
QWEN2_5_VL_SIZES: dict[str, dict[str, Any]] = {
    "tiny": dict(
        text=_TINY_TEXT,
        vision=dict(depth=12, hidden_size=64, intermediate_size=128, num_heads=4, out_hidden_size=64,
                    window_size=112, fullatt_block_indexes=[3, 7, 11]),
        tokens=_TINY_TOKENS,
    ),
    "3b": _qwen2_5_vl_size(_qwen_text(2048, 36, 16, 2, 11008, 151936, tied=True)),
    "7b": _qwen2_5_vl_size(_qwen_text(3584, 28, 28, 4, 18944, 152064, tied=False)),
    "32b": _qwen2_5_vl_size(_qwen_text(5120, 64, 40, 8, 27648, 152064, tied=False)),
    "72b": _qwen2_5_vl_size(_qwen_text(8192, 80, 64, 8, 29568, 152064, tied=False)),
}


def image_processor(resolution: int):
    """The Qwen-VL image processor, pinned to exactly ``resolution``^2 pixels."""
    try:
        from transformers import Qwen2VLImageProcessorPil as Processor
    except ImportError:  # older transformers without the PIL-backend class name
        from transformers import Qwen2VLImageProcessor as Processor
    pixels = resolution * resolution
    return Processor(min_pixels=pixels, max_pixels=pixels)


def random_patches(grid_thw: list[tuple[int, int, int]], seed: int = 0) -> VisionInput:
    """Random ``pixel_values`` in the Qwen-VL patch layout for any grid, for encoder-only
    measurements and tests."""
    grid = torch.tensor(grid_thw, dtype=torch.long)
    n = int(grid.prod(dim=-1).sum())
    generator = torch.Generator().manual_seed(seed)
    patch_inputs = 3 * TEMPORAL * PATCH * PATCH
    return VisionInput(torch.randn(n, patch_inputs, generator=generator), grid, f"random patches, grid {grid_thw}")


def video_patches(frames: list[Image.Image], resolution: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``pixel_values_videos [t*h*w, 3*2*14*14]`` and ``video_grid_thw [[t, h, w]]`` for frames."""
    processed = image_processor(resolution)(images=frames, return_tensors="np")
    # the processor returned each frame as its own image (frame duplicated over the temporal
    # patch); take one copy of each frame's pixels back out and pair consecutive frames instead
    per_frame = processed["pixel_values"].reshape(len(frames), -1, 3, TEMPORAL, PATCH, PATCH)[:, :, :, 0]
    grid_h = grid_w = resolution // PATCH
    # per_frame: [F, h*w (merge-grouped order), C, P, P] -> [F, C, H, W]
    blocks = per_frame.reshape(len(frames), grid_h // MERGE, grid_w // MERGE, MERGE, MERGE, 3, PATCH, PATCH)
    images = blocks.transpose(0, 5, 1, 3, 6, 2, 4, 7).reshape(len(frames), 3, grid_h * PATCH, grid_w * PATCH)
    return _patchify(images), torch.tensor([[len(frames) // TEMPORAL, grid_h, grid_w]])


def _patchify(frames: np.ndarray) -> torch.Tensor:
    """The Qwen-VL patch layout of ``frames [T, C, H, W]`` (T a multiple of the temporal patch)."""
    t, c, height, width = frames.shape
    gt, gh, gw = t // TEMPORAL, height // PATCH, width // PATCH
    x = frames.reshape(gt, TEMPORAL, c, gh // MERGE, MERGE, PATCH, gw // MERGE, MERGE, PATCH)
    x = x.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)
    return torch.from_numpy(np.ascontiguousarray(x).reshape(gt * gh * gw, c * TEMPORAL * PATCH * PATCH))


class QwenRequestBuilder(AnswerDecoding):
    """Turns a ``RequestSpec`` into Qwen-VL model inputs (the ``preprocess`` stage)."""

    def __init__(self, model: nn.Module, processor: Any | None = None) -> None:
        """``processor``: the checkpoint's processor; or its tokenizer alone (where the processor
        cannot load, e.g. transformers 5's video processor without torchvision), the pixels then
        from the family's image processor; ``None`` for random weights (a small word tokenizer)."""
        from transformers import PreTrainedTokenizerBase

        cfg = model.config
        self.image_token = cfg.image_token_id
        self.video_token = cfg.video_token_id
        self.start, self.end = cfg.vision_start_token_id, cfg.vision_end_token_id
        self.text_tokenizer = processor if isinstance(processor, PreTrainedTokenizerBase) else None
        self.processor = None if self.text_tokenizer is not None else processor
        if self.text_tokenizer is not None:
            placeholders = [self.start, self.end, self.image_token, self.video_token]
            names = self.text_tokenizer.convert_ids_to_tokens(placeholders)
            if None in names or self.text_tokenizer.convert_tokens_to_ids(names) != placeholders:
                raise ValueError(f"the checkpoint's tokenizer does not hold its vision placeholder tokens "
                                 f"(ids {placeholders} in config.json)")
        from pipeline.evaluation.synthetic import answer_vocabulary

        self.eos = cfg.get_text_config().eos_token_id
        self.tokenizer = TinyTokenizer(min(self.image_token, self.video_token, self.start, self.end),
                                       tuple(answer_vocabulary()))

    def __call__(self, spec: RequestSpec) -> dict[str, torch.Tensor]:
        if self.processor is not None:
            return self._with_processor(spec)
        if spec.video_frames:
            pixels, grid = video_patches(spec.video_frames, spec.resolution)
            vision = {"pixel_values_videos": pixels, "video_grid_thw": grid}
            spans, token, kind = grid, self.video_token, 2
        else:
            batch = image_processor(spec.resolution)(images=spec.images, return_tensors="pt")
            vision = {"pixel_values": batch["pixel_values"], "image_grid_thw": batch["image_grid_thw"]}
            spans, token, kind = batch["image_grid_thw"], self.image_token, 1
        if self.text_tokenizer is not None:
            return {**self._with_tokenizer(spec, spans, token), **vision}
        ids, types = [], []
        for t, h, w in spans.tolist():
            n = t * h * w // (MERGE * MERGE)
            ids += [self.start] + [token] * n + [self.end]
            types += [0] + [kind] * n + [0]
        text = self.tokenizer(spec.prompt)
        input_ids = torch.tensor([ids + text])
        return {
            "input_ids": input_ids,
            "attention_mask": torch.ones_like(input_ids),
            "mm_token_type_ids": torch.tensor([types + [0] * len(text)]),
            **vision,
        }

    def _with_tokenizer(self, spec: RequestSpec, spans: torch.Tensor, token: int) -> dict[str, torch.Tensor]:
        """The chat the processor would write, placeholders expanded to the merged-token count of
        each image / video, through the checkpoint's tokenizer."""
        tok = self.text_tokenizer
        start, end, pad = tok.convert_ids_to_tokens([self.start, self.end, token])
        spans_text = "".join(start + pad * (t * h * w // (MERGE * MERGE)) + end for t, h, w in spans.tolist())
        text = f"<|im_start|>user\n{spans_text}{spec.prompt}<|im_end|>\n<|im_start|>assistant\n"
        input_ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
        kinds = {self.image_token: 1, self.video_token: 2}
        return {
            "input_ids": input_ids,
            "attention_mask": torch.ones_like(input_ids),
            "mm_token_type_ids": torch.tensor([[kinds.get(i, 0) for i in input_ids[0].tolist()]]),
        }

    def _with_processor(self, spec: RequestSpec) -> dict[str, torch.Tensor]:
        placeholder = "<|vision_start|><|video_pad|><|vision_end|>" if spec.video_frames else (
            "<|vision_start|><|image_pad|><|vision_end|>" * len(spec.images)
        )
        text = f"<|im_start|>user\n{placeholder}{spec.prompt}<|im_end|>\n<|im_start|>assistant\n"
        media = {"videos": [spec.video_frames]} if spec.video_frames else {"images": spec.images}
        return dict(self.processor(text=[text], return_tensors="pt", **media))


class QwenVL(ModelFamily):
    """The study's adapter of one Qwen-VL generation (the two differ in classes, sizes and the
    vision MLP)."""

    requirements = REQUIREMENTS
    varlen_vision = True

    def __init__(self, key: str, method: QwenVLFamily, classes: tuple[str, str, str], sizes: dict[str, dict[str, Any]],
                 dims: Callable[[Any], VisionDims], name_hints: tuple[str, ...], presets: dict[str, str]) -> None:
        self.key = key
        self.method = method
        self._classes = classes  # (config, model, vision config) class names in transformers
        self._sizes = sizes
        self._dims = dims
        self.model_types = (key,)
        self.name_hints = name_hints
        self.presets = presets

    def sizes(self) -> tuple[str, ...]:
        return tuple(self._sizes)

    def size_spec(self, size: str) -> dict[str, Any]:
        if size not in self._sizes:
            raise ValueError(f"{self.label}: unknown size {size!r}; sizes: {', '.join(self._sizes)}")
        return self._sizes[size]

    def size_depths(self, size: str) -> tuple[int, int]:
        spec = self.size_spec(size)
        return spec["vision"]["depth"], spec["text"]["num_hidden_layers"]

    def depths(self, config: dict[str, Any]) -> tuple[int, int] | None:
        vision = (config.get("vision_config") or {}).get("depth")
        layers = (config.get("text_config") or {}).get("num_hidden_layers") or config.get("num_hidden_layers")
        return (int(vision), int(layers)) if vision and layers else None

    def config(self, size: str, vision: dict[str, Any] | None = None, text: dict[str, Any] | None = None) -> Any:
        import transformers

        spec = self.size_spec(size)
        vision_cfg = {**spec["vision"], **GEOMETRY, **(vision or {})}
        text_cfg = {**spec["text"], **_SPECIAL, **(text or {})}
        config_cls = getattr(transformers, self._classes[0])
        return config_cls(vision_config=vision_cfg, text_config=text_cfg,
                          tie_word_embeddings=text_cfg.get("tie_word_embeddings", False), **spec["tokens"])

    def build(self, size: str, vision: dict[str, Any] | None = None, text: dict[str, Any] | None = None) -> nn.Module:
        import transformers

        return getattr(transformers, self._classes[1])(self.config(size, vision, text))

    def build_tower(self, size: str) -> nn.Module:
        import transformers

        vision_config = getattr(transformers, self._classes[2])(**{**self.size_spec(size)["vision"], **GEOMETRY})
        tower_class = next(c for c in _tower_classes() if c.__name__ in self.method.tower_classes)
        return tower_class(vision_config)

    def vision_dims(self, model: nn.Module) -> VisionDims:
        return self._dims(self.tower(model).config)

    def vision_tokens(self, model: nn.Module, request: dict[str, torch.Tensor]) -> tuple[int, int, int]:
        patches = int(self._grid(request).prod(dim=-1).sum())
        return patches, patches, patches // (MERGE * MERGE)

    def layout_modules(self, model: nn.Module) -> tuple[list[tuple[nn.Module, nn.Module]], nn.Module, nn.Module]:
        tower = self.tower(model)
        blocks = [self.method.attention_and_mlp(b) for b in self.method.blocks(tower)]
        return blocks, tower.patch_embed, tower.merger

    def attention_segments(self, hidden: torch.Tensor, args: tuple, kwargs: dict) -> list[int]:
        cu = kwargs.get("cu_seqlens", args[1] if len(args) > 1 else None)
        bounds = [int(x) for x in cu.tolist()]
        return [b - a for a, b in zip(bounds[:-1], bounds[1:])]

    def request_builder(self, model: nn.Module, processor: Any | None = None) -> QwenRequestBuilder:
        return QwenRequestBuilder(model, processor)

    def vision_input(self, images: list, resolution: int) -> VisionInput:
        batch = image_processor(resolution)(images=images, return_tensors="pt")
        return VisionInput(batch["pixel_values"], batch["image_grid_thw"], f"{len(images)} image(s) {resolution}x{resolution}")

    def vision_input_call(self, inp: VisionInput) -> tuple[tuple, dict[str, Any]]:
        return (inp.pixel_values,), {"grid_thw": inp.grid_thw}

    def host_layout_call(self, tower: nn.Module, inp: VisionInput) -> tuple[tuple, dict[str, Any]]:
        """The tower pops precomputed layout values from its keyword arguments (transformers'
        ``vision_utils``): ``cu_seqlens`` (and Qwen2.5-VL's window boundaries) stay on the host,
        where transformers' sdpa path reads them in every block, positions and the window order go
        to the device. On a flash (varlen) attention the boundaries go to the device, where the
        kernel reads them, with their longest segment (the tower would read it from the device).
        ``grid_thw`` stays on the host for IPCV's patch, which reads it."""
        from transformers.utils.generic import is_flash_attention_requested
        from transformers.vision_utils import get_vision_cu_seqlens, get_vision_position_ids, get_vision_window_index

        grid, device, cfg = inp.grid_thw.cpu(), inp.pixel_values.device, tower.config
        varlen = is_flash_attention_requested(cfg)

        def bounds(cu: torch.Tensor, name: str) -> dict[str, Any]:
            if not varlen:
                return {name: cu}
            longest = "max_seqlen" if name == "cu_seqlens" else "max_window_seqlen"
            return {name: cu.to(device), longest: int((cu[1:] - cu[:-1]).max())}

        kwargs: dict[str, Any] = {
            "grid_thw": grid, **bounds(get_vision_cu_seqlens(grid), "cu_seqlens"),
            "position_ids": get_vision_position_ids(grid, cfg.spatial_merge_size).to(device),
        }
        if getattr(cfg, "fullatt_block_indexes", None) is not None:  # Qwen2.5-VL's window attention
            order, window_cu = get_vision_window_index(grid, spatial_merge_size=cfg.spatial_merge_size,
                                                       window_size=cfg.window_size, patch_size=cfg.patch_size)
            kwargs.update(window_index=order.to(device), **bounds(window_cu, "cu_window_seqlens"))
        return (inp.pixel_values,), kwargs

    def _grid(self, request: dict[str, torch.Tensor]) -> torch.Tensor:
        return request.get("image_grid_thw", request.get("video_grid_thw"))

    def tower_call(self, request: dict[str, torch.Tensor]) -> tuple[tuple, dict[str, Any]]:
        pixels = request.get("pixel_values", request.get("pixel_values_videos"))
        return (pixels,), {"grid_thw": self._grid(request)}

    def features(self, tower_output: Any) -> torch.Tensor:
        return tower_output.pooler_output


def _tower_classes() -> tuple[type, ...]:
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel
    from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VisionTransformerPretrainedModel

    return Qwen2VisionTransformerPretrainedModel, Qwen2_5_VisionTransformerPretrainedModel


def _patch_inputs(cfg: Any) -> int:
    return cfg.in_channels * cfg.temporal_patch_size * cfg.patch_size**2


def _qwen2_vl_dims(cfg: Any) -> VisionDims:
    # Qwen2-VL: embed_dim is the ViT width, hidden_size the LLM's (the merger's output)
    return VisionDims(cfg.embed_dim, int(cfg.embed_dim * cfg.mlp_ratio), 2, _patch_inputs(cfg),
                      cfg.spatial_merge_size**2, cfg.hidden_size)


def _qwen2_5_vl_dims(cfg: Any) -> VisionDims:
    # Qwen2.5-VL: gated MLP (gate, up, down)
    return VisionDims(cfg.hidden_size, cfg.intermediate_size, 3, _patch_inputs(cfg), cfg.spatial_merge_size**2,
                      cfg.out_hidden_size)


QWEN2_VL_STUDY = QwenVL(
    "qwen2_vl", QWEN2_VL, ("Qwen2VLConfig", "Qwen2VLForConditionalGeneration", "Qwen2VLVisionConfig"),
    QWEN2_VL_SIZES, _qwen2_vl_dims, ("qwen2-vl", "qwen2_vl"), {"tiny-qwen2-vl": "tiny"},
)
QWEN2_5_VL_STUDY = QwenVL(
    "qwen2_5_vl", QWEN2_5_VL,
    ("Qwen2_5_VLConfig", "Qwen2_5_VLForConditionalGeneration", "Qwen2_5_VLVisionConfig"),
    QWEN2_5_VL_SIZES, _qwen2_5_vl_dims, ("qwen2.5-vl", "qwen2_5_vl"), {"tiny-qwen2.5-vl": "tiny"},
)
