"""``ipcv.apply``: patch a loaded Hugging Face model in place, and undo it."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ipcv.config import IPCVConfig, LLMPruneConfig
from ipcv.families import family_of
from ipcv.llm import LLMPatch, LLMStats
from ipcv.stats import VisionStats
from ipcv.vision import VisionPatch
from ipcv.vision_tiled import TiledVisionPatch

_HANDLE_ATTR = "_ipcv_handle"


class IPCVHandle:
    """What ``apply`` installed on one model. ``remove()`` (or leaving a ``with`` block) undoes it.

    ``vision_stats`` holds the statistics of the last completed call of the vision tower
    (``None`` before the first call and after a call that raised). Set ``time_overhead = True``
    to time IPCV's own steps (adds one CUDA synchronisation per call on GPU). ``llm_stats``
    holds those of the last pruned prefill of the language model.
    """

    def __init__(self, model: nn.Module, family: str, vision: VisionPatch | None, llm: LLMPatch | None = None) -> None:
        self.model = model
        self.family = family
        self._vision = vision
        self._llm = llm
        self.active = True

    @property
    def llm_config(self) -> LLMPruneConfig | None:
        return self._llm.config if self._llm else None

    @property
    def llm_stats(self) -> LLMStats | None:
        return self._llm.last_stats if self._llm else None

    @property
    def vision_config(self) -> IPCVConfig | None:
        return self._vision.config if self._vision else None

    @property
    def vision_stats(self) -> VisionStats | None:
        return self._vision.last_stats if self._vision else None

    @property
    def time_overhead(self) -> bool:
        return bool(self._vision and self._vision.time_overhead)

    @time_overhead.setter
    def time_overhead(self, value: bool) -> None:
        if self._vision:
            self._vision.time_overhead = bool(value)

    def force_llm_selection(self, kept_image_positions: torch.Tensor | None) -> None:
        """Make the next prefills keep exactly these image positions ``[B, n_keep]`` (``None``:
        choose again). For replaying a selection, e.g. to recompute a pruned request without cache."""
        if self._llm is None:
            raise RuntimeError("no LLM-side pruning is installed on this model")
        self._llm.force_kept_image_positions = kept_image_positions

    def remove(self) -> None:
        if not self.active:
            return
        if self._vision:
            self._vision.remove()
        if self._llm:
            self._llm.remove()
        self.model.__dict__.pop(_HANDLE_ATTR, None)
        self.active = False

    def __enter__(self) -> IPCVHandle:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.remove()

    def __repr__(self) -> str:
        state = "active" if self.active else "removed"
        return f"IPCVHandle({self.family}, vision={self.vision_config}, llm={self.llm_config}, {state})"


def apply(
    model: nn.Module, *, vision: IPCVConfig | None = None, llm: LLMPruneConfig | None = None
) -> IPCVHandle:
    """Patch ``model`` (a model of a supported family, or its vision tower) in place.

    ``vision``: IPCV inside the vision encoder; ``llm``: FastV / DART in the language model's
    prefill (needs the whole model). Either or both. Only this instance changes: another model
    of the same class in the process is untouched. Raises ``TypeError`` for an unsupported model
    and ``ValueError`` for settings that do not fit it (e.g. more blocks named than the encoder
    has), before anything is patched.
    """
    if vision is not None and not isinstance(vision, IPCVConfig):
        raise TypeError(f"vision must be an IPCVConfig, got {type(vision).__name__}")
    if llm is not None and not isinstance(llm, LLMPruneConfig):
        raise TypeError(f"llm must be an LLMPruneConfig, got {type(llm).__name__}")
    family = family_of(model)
    family.check_model(model)
    if model.__dict__.get(_HANDLE_ATTR) is not None:
        raise RuntimeError("this model is already patched by ipcv.apply; call .remove() on its handle first")
    language_side = family.find_language_side(model) if llm is not None else None
    if language_side is not None:
        llm.check_depth(len(language_side.language_model.layers))
        if language_side.container.__dict__.get("_ipcv_llm_patch") is not None:
            raise RuntimeError("this language model is already patched by ipcv.apply; remove that patch first")
    patch = None
    if vision is not None:
        try:  # the multimodal part (it sees the prompts, so a batch's requests can be told apart)
            container = family.find_language_side(model).container
        except (TypeError, ValueError):  # the vision tower alone
            container = None
        patch_class = TiledVisionPatch if family.layout == "tiled" else VisionPatch
        patch = patch_class(family, family.find_tower(model), vision, container)
    llm_patch = None
    if language_side is not None:
        llm_patch = LLMPatch(language_side, llm)
    handle = IPCVHandle(model, family.name, patch, llm_patch)
    model.__dict__[_HANDLE_ATTR] = handle
    return handle
