"""The model families IPCV supports: one adapter each (``base.VisionFamily`` subclasses).

Adding a family: a module here with its adapter, one entry in ``FAMILIES``, and its tests.
"""

from __future__ import annotations

from torch import nn

from ipcv.families.base import FrameLayout, KeptQueries, LanguageSide, VisionFamily
from ipcv.families.internvl import INTERNVL
from ipcv.families.qwen_vl import QWEN2_5_VL, QWEN2_VL

FAMILIES: tuple[VisionFamily, ...] = (QWEN2_VL, QWEN2_5_VL, INTERNVL)


def supported_description() -> str:
    return "; ".join(f.describe() for f in FAMILIES)


def family_of(model: nn.Module) -> VisionFamily:
    """The adapter of a whole model, its multimodal part or its vision tower."""
    for family in FAMILIES:
        if family.matches(model):
            return family
    raise TypeError(
        f"IPCV does not support {type(model).__name__}. Supported families: {supported_description()}"
    )


__all__ = ["FAMILIES", "FrameLayout", "KeptQueries", "LanguageSide", "VisionFamily", "family_of", "supported_description"]
