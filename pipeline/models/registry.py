"""The model families the study supports, and finding the family of a model, a preset or a name.

Adding a family: its adapter module in this folder (a ``ModelFamily``), one entry in
``FAMILIES``, the method-side adapter in ``ipcv/families/``, and tests.
"""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from pipeline.models.family import ModelFamily, Requirements
from pipeline.models.qwen_vl import QWEN2_5_VL_STUDY, QWEN2_VL_STUDY

FAMILIES: tuple[ModelFamily, ...] = (QWEN2_VL_STUDY, QWEN2_5_VL_STUDY)


def family_of(model: nn.Module) -> ModelFamily:
    """The family of a loaded model (or its multimodal part, or its vision tower)."""
    for family in FAMILIES:
        if family.method.matches(model):
            return family
    from ipcv.families import supported_description

    raise TypeError(f"the study does not support {type(model).__name__}; supported: {supported_description()}")


def family_named(key: str) -> ModelFamily:
    """A family by its key (``qwen2_vl``, ``qwen2_5_vl``, ...)."""
    for family in FAMILIES:
        if family.key == key:
            return family
    raise ValueError(f"unknown model family {key!r}; families: {', '.join(f.key for f in FAMILIES)}")


def family_for_name(name: str) -> ModelFamily | None:
    """The family a preset, a local checkpoint (its config.json) or a hub id names, without
    loading anything; ``None`` when it cannot be told (the model's own classes decide at load)."""
    for family in FAMILIES:
        if name in family.presets:
            return family
    config = Path(name).expanduser() / "config.json"
    if config.is_file():
        try:
            model_type = json.loads(config.read_text()).get("model_type")
        except (OSError, ValueError):
            model_type = None
        for family in FAMILIES:
            if model_type in family.model_types:
                return family
    for family in sorted(FAMILIES, key=lambda f: -max((len(h) for h in f.name_hints), default=0)):
        if family.matches_name(name):
            return family
    return None


def supported_requirements() -> Requirements:
    """What every supported family accepts (for checks made before a model is known)."""
    return Requirements.all_of(f.requirements for f in FAMILIES)


def requirements_for(name: str) -> Requirements:
    """What the model called ``name`` accepts; what every family accepts when its family cannot
    be told from the name."""
    family = family_for_name(name)
    return family.requirements if family else supported_requirements()
