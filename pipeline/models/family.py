"""A model family as the study sees it: one adapter per family (``ModelFamily`` subclasses).

The method side (``ipcv.families``) knows where the tower, blocks and language model are. The
study side adds what measuring needs: architecture sizes to build with random weights (tiny
presets for tests and the embedded default, real sizes for benchmarks), the inputs a family
accepts (patch geometry), how a request is built (image processor, chat template, placeholder
tokens), how the tower is called on its own, the sizes the analytic FLOP formulas read, and the
modules whose calls are stages. Nothing outside ``pipeline/models/`` names ``model.model.visual``,
a patch size or a merge factor.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ipcv.families import VisionFamily


@dataclass(frozen=True)
class Requirements:
    """The inputs a family accepts: image sides a positive multiple of ``resolution_multiple``
    (its patch grid), video frame counts a positive multiple of ``frame_multiple`` (its temporal
    patch). ``why`` names the geometry, for messages."""

    resolution_multiple: int = 1
    frame_multiple: int = 1
    why: str = ""

    def check_resolution(self, value: int) -> int:
        if value < self.resolution_multiple or value % self.resolution_multiple:
            raise ValueError(f"resolution must be a positive multiple of {self.resolution_multiple}, got {value}"
                             + (f" ({self.why})" if self.why else ""))
        return value

    def check_frames(self, value: int) -> int:
        multiple = self.frame_multiple
        if value < max(2, multiple) or value % multiple:
            what = "an even number >= 2" if multiple == 2 else f"a multiple of {multiple} (>= 2)"
            raise ValueError(f"frame count {value} is not {what}")
        return value

    @staticmethod
    def all_of(requirements: Iterable[Requirements]) -> Requirements:
        """What satisfies every one of ``requirements`` (least common multiples)."""
        items = list(requirements)
        if not items:
            return Requirements()
        why = "; ".join(dict.fromkeys(r.why for r in items if r.why))
        return Requirements(math.lcm(*(r.resolution_multiple for r in items)),
                            math.lcm(*(r.frame_multiple for r in items)), why)


@dataclass(frozen=True)
class VisionDims:
    """The sizes the analytic vision-encoder formula needs (``pipeline/measure/vision_flops.py``)."""

    width: int
    mlp_hidden: int
    mlp_matrices: int  # 2 for a plain MLP (fc1, fc2); 3 for a gated one (gate, up, down)
    patch_inputs: int  # input values of one patch (channels x temporal patch x patch x patch)
    merge_unit: int  # patches merged into one LLM token
    out_width: int  # the merger's output (0: no merger, e.g. an InternViT tower alone)
    merger_hidden: int = 0  # the merger's first projection's output; 0: as wide as its input (Qwen-VL)


@dataclass(frozen=True)
class LLMDims:
    """The sizes the analytic prefill formula needs (``pipeline/measure/llm_flops.py``)."""

    width: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int

    @classmethod
    def from_config(cls, cfg: Any) -> LLMDims:
        """From a decoder config of the Llama / Qwen2 layout (q/k/v/o projections, gated MLP)."""
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        return cls(cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, head_dim,
                   cfg.intermediate_size, cfg.vocab_size)


class ModelFamily:
    """One family of multimodal models. Subclasses fill in the family-specific parts."""

    key: str = ""  # short id, e.g. "qwen2_vl"
    method: VisionFamily  # the method-side adapter (ipcv.families)
    requirements: Requirements = Requirements()
    model_types: tuple[str, ...] = ()  # ``model_type`` in a checkpoint's config.json
    name_hints: tuple[str, ...] = ()  # lower-case fragments that name the family in a hub id or path
    presets: dict[str, str] = {}  # preset name -> architecture size (random weights, built locally)
    # the tower packs its images / frames into one sequence with cu_seqlens, so transformers' varlen
    # (flash) path applies to it (pipeline/models/attention.py: torch_flash_varlen)
    varlen_vision: bool = False

    @property
    def label(self) -> str:
        return self.method.name

    # -- building with random weights ---------------------------------------------------------
    def sizes(self) -> tuple[str, ...]:
        raise NotImplementedError

    def size_spec(self, size: str) -> dict[str, Any]:
        """The settings that make an architecture size (for provenance in benchmark files)."""
        raise NotImplementedError

    def build(self, size: str, vision: dict[str, Any] | None = None, text: dict[str, Any] | None = None) -> nn.Module:
        """The whole model of an architecture size, with weights from the current random state
        (``vision`` / ``text``: settings that override the size's, e.g. a reduced depth)."""
        raise NotImplementedError

    def finish_random_init(self, model: nn.Module) -> None:
        """What a random-weight build draws after the model's own initialisation (a whole model or
        its tower), e.g. values the initialisation sets to a constant that would hide bugs."""

    def build_tower(self, size: str) -> nn.Module:
        """The vision tower alone of an architecture size (for encoder-only benchmarks)."""
        raise NotImplementedError

    def check_vision_settings(self, values: dict[str, Any]) -> None:
        """Refuse (ValueError) IPCV settings this family cannot serve, before a sweep runs."""

    def depths(self, config: dict[str, Any]) -> tuple[int, int] | None:
        """(vision blocks, decoder layers) from a checkpoint's ``config.json`` contents, or None."""
        return None

    def size_depths(self, size: str) -> tuple[int, int]:
        """(vision blocks, decoder layers) of an architecture size."""
        raise NotImplementedError

    # -- where the stages are -------------------------------------------------------------------
    def tower(self, model: nn.Module) -> nn.Module:
        return self.method.find_tower(model)

    def language_model(self, model: nn.Module) -> nn.Module:
        return self.method.find_language_side(model).language_model

    def lm_head(self, model: nn.Module) -> nn.Module | None:
        return self.method.lm_head(model)

    def vision_token_ids(self, model: nn.Module) -> tuple[int, ...]:
        return self.method.find_language_side(model).vision_token_ids

    def vision_span(self, model: nn.Module) -> tuple[nn.Module, nn.Module]:
        """The modules whose first call opens and whose last call closes the vision stage (the
        tower for Qwen-VL; the tower then the projector for families whose merger is outside it)."""
        tower = self.tower(model)
        return tower, tower

    def stage_modules(self, model: nn.Module) -> dict[str, list[nn.Module]]:
        """Modules whose calls make up the vision and prefill stages."""
        head = self.lm_head(model)
        return {"vision": list(dict.fromkeys(self.vision_span(model))),
                "prefill": [self.language_model(model)] + ([head] if head is not None else [])}

    # -- analytic FLOPs parameters --------------------------------------------------------------
    def vision_dims(self, model: nn.Module) -> VisionDims:
        """The vision formula's sizes for a whole model or its tower alone."""
        raise NotImplementedError

    def llm_dims(self, text_config: Any) -> LLMDims:
        return LLMDims.from_config(text_config)

    def vision_tokens(self, model: nn.Module, request: dict[str, torch.Tensor]) -> tuple[int, int, int]:
        """Tokens of a built request's pixels: (entering the encoder, entering the merger, handed to
        the LLM). They differ where an encoder adds tokens the merger drops (InternViT's CLS)."""
        raise NotImplementedError

    def layout_modules(self, model: nn.Module
                       ) -> tuple[list[tuple[nn.Module, nn.Module]], nn.Module, nn.Module | None]:
        """``([(attention, mlp) per block], patch embedding, merger)`` of a whole model or its tower
        alone: where token counts are read (merger ``None`` where the tower alone has none)."""
        raise NotImplementedError

    def attention_segments(self, hidden: torch.Tensor, args: tuple, kwargs: dict) -> list[int]:
        """Lengths of the sequences one attention call attends within (per image, frame or window)."""
        raise NotImplementedError

    # -- requests -------------------------------------------------------------------------------
    def request_builder(self, model: nn.Module, processor: Any | None = None) -> Any:
        """Turns a ``RequestSpec`` into model inputs (``pipeline/models/requests.py``)."""
        raise NotImplementedError

    def vision_input(self, images: list, resolution: int) -> Any:
        """Pixels and layout of images for calling the tower alone (a ``VisionInput``)."""
        raise NotImplementedError

    def vision_input_call(self, inp: Any) -> tuple[tuple, dict[str, Any]]:
        """Arguments that call the tower alone on a ``VisionInput``."""
        raise NotImplementedError

    def tower_call(self, request: dict[str, torch.Tensor]) -> tuple[tuple, dict[str, Any]]:
        """Arguments that call the tower alone on a built request's pixels."""
        raise NotImplementedError

    def host_layout_call(self, tower: nn.Module, inp: Any) -> tuple[tuple, dict[str, Any]]:
        """Arguments that call the tower alone on a ``VisionInput`` (already on the tower's
        device) with every layout value it would derive from the input computed on the host, so
        that the call reads nothing back from the device and can be captured as a CUDA graph
        (``ipcv.cuda_graph``). Families whose tower derives nothing (fixed tiles) use the plain call."""
        return self.vision_input_call(inp)

    def features(self, tower_output: Any) -> torch.Tensor:
        """The visual features the tower hands to the LLM."""
        raise NotImplementedError

    # -- recognising a checkpoint ---------------------------------------------------------------
    def matches_name(self, name: str) -> bool:
        lowered = name.lower()
        return any(hint in lowered for hint in self.name_hints)
