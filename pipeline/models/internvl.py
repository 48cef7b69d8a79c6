"""InternVL3 in the study: sizes, tiling, requests, FLOPs parameters.

An image is resized and cut into 448² tiles (InternVL's dynamic tiling: the grid of at most
``MAX_TILES`` tiles closest to the image's aspect ratio, plus a thumbnail tile when there is more
than one); a video frame is one tile. Each tile is a batch row of the vision tower: 1 CLS token +
(448 / 14)² = 1024 patch tokens. After the tower the CLS token is dropped, a pixel shuffle merges
2 x 2 patches into one LLM token (256 per tile) and a projector (LayerNorm, Linear, GELU, Linear)
maps them to the LLM's width. The projector lives outside the tower
(``model.model.multi_modal_projector``): the vision stage here spans tower and projector.

Architecture sizes (random weights): ``tiny`` (InternViT-300M's layout at width 64: 448² tiles,
patch 14, CLS, LayerNorm, attention bias; 12 blocks, so the published K=7, A=3 fit) and
``tiny_qknorm`` (InternViT-6B's layout at width 64: RMSNorm, q/k-norm, no attention bias), both
with the Qwen2.5 decoder of the InternVL3 LLMs at width 64; ``tiny_112`` (``tiny`` with 112²
tiles: the efficiency gate's preset, cheap under callgrind); and the published InternVL3
architectures ``1b`` .. ``78b`` (config.json of ``OpenGVLab/InternVL3-*-hf``: InternViT-300M with
Qwen2.5-0.5B / 1.5B / 7B / 14B, InternViT-6B (45 blocks) with Qwen2.5-32B / 72B).

Requests: real checkpoints use their processor (or, where it cannot load, their tokenizer with
this module's tiling) and the InternVL chat format; presets the same tiling and the word
tokenizer for text.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ipcv.families.internvl import CLS, INTERNVL
from pipeline.models.family import ModelFamily, Requirements, VisionDims
from pipeline.models.requests import AnswerDecoding, RequestSpec, TinyTokenizer, VisionInput

TILE, PATCH = 448, 14
MAX_TILES = 12  # the InternVL3 processors' default (the published IPCV runs used at most 6)
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
REQUIREMENTS = Requirements(1, 1, "InternVL resizes images into 448² tiles")
GEOMETRY = dict(image_size=[TILE, TILE], patch_size=[PATCH, PATCH])
# the special tokens the InternVL3 tokenizer writes around each tile run
START, END, CONTEXT = "<img>", "</img>", "<IMG_CONTEXT>"

_VIT_300M = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                 norm_type="layer_norm", use_qk_norm=False, attention_bias=True)
_VIT_6B = dict(hidden_size=3200, num_hidden_layers=45, num_attention_heads=25, intermediate_size=12800,
               norm_type="rms_norm", use_qk_norm=True, attention_bias=False)
_TINY_TEXT = dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                  intermediate_size=128, vocab_size=512, tie_word_embeddings=False)
_TINY_TOKENS = dict(image_token_id=500, start_image_token_id=502, end_image_token_id=503)
_SPECIAL = dict(bos_token_id=0, eos_token_id=1, pad_token_id=2)
_TOKENS = dict(image_token_id=151667, start_image_token_id=151665, end_image_token_id=151666)


def _qwen2_5(hidden: int, layers: int, heads: int, kv_heads: int, intermediate: int) -> dict[str, Any]:
    return dict(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                intermediate_size=intermediate, vocab_size=151674, tie_word_embeddings=False, rms_norm_eps=1e-6,
                rope_theta=1000000.0)


SIZES: dict[str, dict[str, Any]] = {
    "tiny": dict(vision=dict(_VIT_300M, hidden_size=64, num_hidden_layers=12, num_attention_heads=4,
                             intermediate_size=128), text=_TINY_TEXT, tokens=_TINY_TOKENS),
    "tiny_qknorm": dict(vision=dict(_VIT_6B, hidden_size=64, num_hidden_layers=12, num_attention_heads=4,
                                    intermediate_size=128), text=_TINY_TEXT, tokens=_TINY_TOKENS),
    # tiles of 112² (8 x 8 patches + CLS, 16 LLM tokens): the efficiency gate's size, where counting
    # instructions under callgrind costs seconds per forward instead of minutes at 448²
    "tiny_112": dict(vision=dict(_VIT_300M, hidden_size=64, num_hidden_layers=12, num_attention_heads=4,
                                 intermediate_size=128, image_size=[112, 112]), text=_TINY_TEXT, tokens=_TINY_TOKENS),
    "1b": dict(vision=_VIT_300M, text=_qwen2_5(896, 24, 14, 2, 4864), tokens=_TOKENS),
    "2b": dict(vision=_VIT_300M, text=_qwen2_5(1536, 28, 12, 2, 8960), tokens=_TOKENS),
    "8b": dict(vision=_VIT_300M, text=_qwen2_5(3584, 28, 28, 4, 18944), tokens=_TOKENS),
    "14b": dict(vision=_VIT_300M, text=_qwen2_5(5120, 48, 40, 8, 13824), tokens=_TOKENS),
    "38b": dict(vision=_VIT_6B, text=_qwen2_5(5120, 64, 40, 8, 27648), tokens=_TOKENS),
    "78b": dict(vision=_VIT_6B, text=_qwen2_5(8192, 80, 64, 8, 29568), tokens=_TOKENS),
}


def image_processor(tile: int = TILE, max_tiles: int = MAX_TILES, crop: bool = True):
    """InternVL's tiling and normalisation (the PIL backend: no torchvision needed)."""
    from transformers import GotOcr2ImageProcessorPil

    return GotOcr2ImageProcessorPil(crop_to_patches=crop, min_patches=1, max_patches=max_tiles,
                                    size={"height": tile, "width": tile}, image_mean=IMAGENET_MEAN,
                                    image_std=IMAGENET_STD)


def tile_images(images: list, tile: int = TILE) -> tuple[torch.Tensor, list[int]]:
    """``pixel_values [tiles, 3, tile, tile]`` of ``images`` and the tile count of each."""
    out = image_processor(tile)(images=images, return_tensors="pt")
    return out["pixel_values"], [int(n) for n in out["num_patches"]]


def frame_tiles(frames: list, tile: int = TILE) -> torch.Tensor:
    """One tile per video frame (resized, not cut), as InternVL's video processor does."""
    return image_processor(tile, crop=False)(images=frames, return_tensors="pt")["pixel_values"]


class InternVLRequestBuilder(AnswerDecoding):
    """Turns a ``RequestSpec`` into InternVL model inputs (the ``preprocess`` stage)."""

    def __init__(self, model: nn.Module, processor: Any | None = None) -> None:
        """``processor``: the checkpoint's processor, or its tokenizer alone (pixels then tiled
        here); ``None`` for random weights (a small word tokenizer)."""
        from transformers import PreTrainedTokenizerBase

        from pipeline.evaluation.synthetic import answer_vocabulary

        cfg = model.config
        self.per_tile = int(cfg.image_seq_length)
        self.tile = _tile_side(cfg.vision_config)
        self.context = int(cfg.image_token_id)
        self.text_tokenizer = processor if isinstance(processor, PreTrainedTokenizerBase) else None
        self.processor = None if self.text_tokenizer is not None else processor
        if self.text_tokenizer is not None:
            ids = self.text_tokenizer.convert_tokens_to_ids([START, END, CONTEXT])
            if ids[2] != self.context or self.text_tokenizer.unk_token_id in ids:
                raise ValueError(f"the checkpoint's tokenizer does not hold InternVL's tile tokens {START} {END} "
                                 f"{CONTEXT} (image_token_id {self.context} in config.json)")
        # the tile tokens around the context ids: those of the architecture with this image token
        tokens = {s["tokens"]["image_token_id"]: s["tokens"] for s in SIZES.values()}.get(self.context, _TINY_TOKENS)
        self.start, self.end = tokens["start_image_token_id"], tokens["end_image_token_id"]
        self.eos = cfg.get_text_config().eos_token_id
        self.tokenizer = TinyTokenizer(min(self.context, self.start, self.end), tuple(answer_vocabulary()))

    def __call__(self, spec: RequestSpec) -> dict[str, torch.Tensor]:
        if self.processor is not None:
            return self._with_processor(spec)
        if spec.video_frames:
            pixels = frame_tiles(spec.video_frames, self.tile)
            runs = [(f"Frame{i + 1}:", 1) for i in range(len(spec.video_frames))]
        else:
            pixels, counts = tile_images(spec.images, self.tile)
            runs = [("", n) for n in counts]
        if self.text_tokenizer is not None:
            ids = self._with_tokenizer(spec, runs)
        else:
            ids = []
            for label, tiles in runs:
                ids += self.tokenizer(label) + [self.start] + [self.context] * (self.per_tile * tiles) + [self.end]
            ids += self.tokenizer(spec.prompt)
        input_ids = torch.tensor([ids])
        return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "pixel_values": pixels}

    def _with_tokenizer(self, spec: RequestSpec, runs: list[tuple[str, int]]) -> list[int]:
        """The chat the InternVL processor would write, through the checkpoint's tokenizer."""
        media = "".join(f"{label + ' ' if label else ''}{START}{CONTEXT * (self.per_tile * tiles)}{END}\n"
                        for label, tiles in runs)
        text = f"<|im_start|>user\n{media}{spec.prompt}<|im_end|>\n<|im_start|>assistant\n"
        return self.text_tokenizer(text, add_special_tokens=False)["input_ids"]

    def _with_processor(self, spec: RequestSpec) -> dict[str, torch.Tensor]:
        placeholder = "<video>\n" if spec.video_frames else f"{CONTEXT}\n" * len(spec.images)
        text = f"<|im_start|>user\n{placeholder}{spec.prompt}<|im_end|>\n<|im_start|>assistant\n"
        media = {"videos": [spec.video_frames]} if spec.video_frames else {"images": spec.images}
        return dict(self.processor(text=[text], return_tensors="pt", **media))


def _tile_side(vision_config: Any) -> int:
    size = vision_config.image_size
    return int(size[0] if isinstance(size, (list, tuple)) else size)


def _patches_per_tile(vision_config: Any) -> int:
    patch = vision_config.patch_size
    patch = patch[0] if isinstance(patch, (list, tuple)) else patch
    return (_tile_side(vision_config) // int(patch)) ** 2


class InternVL3(ModelFamily):
    """The study's adapter of InternVL3 (``InternVLForConditionalGeneration``)."""

    key = "internvl"
    method = INTERNVL
    requirements = REQUIREMENTS
    model_types = ("internvl",)
    name_hints = ("internvl",)
    presets = {"tiny-internvl3": "tiny", "tiny-internvl3-qknorm": "tiny_qknorm", "tiny-internvl3-112": "tiny_112"}

    @property
    def label(self) -> str:
        return "InternVL3"

    # -- building with random weights ---------------------------------------------------------
    def sizes(self) -> tuple[str, ...]:
        return tuple(SIZES)

    def size_spec(self, size: str) -> dict[str, Any]:
        if size not in SIZES:
            raise ValueError(f"{self.label}: unknown size {size!r}; sizes: {', '.join(SIZES)}")
        return SIZES[size]

    def size_depths(self, size: str) -> tuple[int, int]:
        spec = self.size_spec(size)
        return spec["vision"]["num_hidden_layers"], spec["text"]["num_hidden_layers"]

    def check_vision_settings(self, values: dict[str, Any]) -> None:
        if values.get("budget") == "per_image":
            raise ValueError("budget per_image is not served on InternVL: an image's tiles would keep different "
                             "numbers of tokens, and tiles are rows of one tensor (use budget global: per tile, "
                             "as published)")

    def depths(self, config: dict[str, Any]) -> tuple[int, int] | None:
        vision = (config.get("vision_config") or {}).get("num_hidden_layers")
        layers = (config.get("text_config") or {}).get("num_hidden_layers")
        return (int(vision), int(layers)) if vision and layers else None

    def config(self, size: str, vision: dict[str, Any] | None = None, text: dict[str, Any] | None = None) -> Any:
        from transformers import InternVLConfig

        spec = self.size_spec(size)
        text_cfg = {"model_type": "qwen2", **spec["text"], **_SPECIAL, **(text or {})}
        vision_cfg = {**GEOMETRY, **spec["vision"], **(vision or {})}
        tile, patch = vision_cfg["image_size"][0], vision_cfg["patch_size"][0]
        return InternVLConfig(vision_config=vision_cfg, text_config=text_cfg,
                              tie_word_embeddings=text_cfg["tie_word_embeddings"],
                              image_token_id=spec["tokens"]["image_token_id"],
                              image_seq_length=(tile // patch) ** 2 // 4)  # after the 2 x 2 pixel shuffle

    def build(self, size: str, vision: dict[str, Any] | None = None, text: dict[str, Any] | None = None) -> nn.Module:
        from transformers import InternVLForConditionalGeneration

        model = InternVLForConditionalGeneration(self.config(size, vision, text))
        self.finish_random_init(model)
        return model

    def build_tower(self, size: str) -> nn.Module:
        from transformers import InternVLVisionConfig, InternVLVisionModel

        tower = InternVLVisionModel(InternVLVisionConfig(**{**GEOMETRY, **self.size_spec(size)["vision"]}))
        self.finish_random_init(tower)
        return tower

    def finish_random_init(self, model: nn.Module) -> None:
        """Layer scales drawn in [0.2, 1) instead of their constant initial value: a constant would
        hide a swapped or missing scale from the tests that compare against the unpatched model."""
        with torch.no_grad():
            for block in INTERNVL.blocks(self.tower(model)):
                block.lambda_1.uniform_(0.2, 1.0)
                block.lambda_2.uniform_(0.2, 1.0)

    # -- where the stages are -------------------------------------------------------------------
    def projector(self, model: nn.Module) -> nn.Module | None:
        """The projector after the pixel shuffle (absent when ``model`` is the tower alone)."""
        container = getattr(model, "model", model)
        projector = getattr(container, "multi_modal_projector", None)
        return projector if isinstance(projector, nn.Module) else None

    def vision_span(self, model: nn.Module) -> tuple[nn.Module, nn.Module]:
        return self.tower(model), self.projector(model) or self.tower(model)

    # -- analytic FLOPs parameters --------------------------------------------------------------
    def vision_dims(self, model: nn.Module) -> VisionDims:
        cfg = self.tower(model).config
        projector = self.projector(model)
        out = projector.linear_2.out_features if projector is not None else 0
        patch = cfg.patch_size[0] if isinstance(cfg.patch_size, (list, tuple)) else cfg.patch_size
        return VisionDims(cfg.hidden_size, cfg.intermediate_size, 2, cfg.num_channels * patch * patch,
                          self._merge_unit(model), out, merger_hidden=out)

    def _merge_unit(self, model: nn.Module) -> int:
        ratio = getattr(getattr(model, "config", None), "downsample_ratio", 0.5)
        return round(1 / ratio) ** 2

    def vision_tokens(self, model: nn.Module, request: dict[str, torch.Tensor]) -> tuple[int, int, int]:
        tiles = int(request["pixel_values"].shape[0])
        patches = _patches_per_tile(self.tower(model).config)
        return tiles * (CLS + patches), tiles * patches, tiles * patches // self._merge_unit(model)

    def layout_modules(self, model: nn.Module
                       ) -> tuple[list[tuple[nn.Module, nn.Module]], nn.Module, nn.Module | None]:
        tower = self.tower(model)
        blocks = [self.method.attention_and_mlp(b) for b in self.method.blocks(tower)]
        return blocks, tower.embeddings.patch_embeddings, self.projector(model)

    def attention_segments(self, hidden: torch.Tensor, args: tuple, kwargs: dict) -> list[int]:
        return [int(hidden.shape[1])] * int(hidden.shape[0])  # every tile attends within itself

    # -- requests -------------------------------------------------------------------------------
    def request_builder(self, model: nn.Module, processor: Any | None = None) -> InternVLRequestBuilder:
        return InternVLRequestBuilder(model, processor)

    def vision_input(self, images: list, resolution: int) -> VisionInput:
        pixels, counts = tile_images(images)
        return VisionInput(pixels, None, f"{len(images)} image(s) {resolution}x{resolution}, {sum(counts)} tiles")

    def vision_input_call(self, inp: VisionInput) -> tuple[tuple, dict[str, Any]]:
        return (), {"pixel_values": inp.pixel_values}

    def tower_call(self, request: dict[str, torch.Tensor]) -> tuple[tuple, dict[str, Any]]:
        return (), {"pixel_values": request["pixel_values"]}

    def features(self, tower_output: Any) -> torch.Tensor:
        """The patch tokens' outputs (CLS dropped) that the pixel shuffle and projector receive."""
        hidden = tower_output.last_hidden_state[:, CLS:]
        return hidden.reshape(-1, hidden.shape[-1])


INTERNVL3_STUDY = InternVL3()
