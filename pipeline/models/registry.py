"""The model families the study supports, and finding the family of a model, a preset or a name.

Adding a family: its adapter module in this folder (a ``ModelFamily``), one entry in
``FAMILIES``, the method-side adapter in ``ipcv/families/``, and tests.
"""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from pipeline.models.family import ModelFamily, Requirements
from pipeline.models.internvl import INTERNVL3_STUDY
from pipeline.models.qwen_vl import QWEN2_5_VL_STUDY, QWEN2_VL_STUDY

FAMILIES: tuple[ModelFamily, ...] = (QWEN2_VL_STUDY, QWEN2_5_VL_STUDY, INTERNVL3_STUDY)


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


def _local_config(name: str) -> dict | None:
    path = Path(name).expanduser() / "config.json"
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def model_depths(name: str, overrides: dict[str, dict] | None = None) -> tuple[int, int] | None:
    """(vision blocks, decoder layers) of a preset, a local checkpoint or a published checkpoint's
    hub id (with a random-weight build's ``overrides``), without loading it; None when they cannot
    be known here (another hub id)."""
    from pipeline.models.architectures import architecture_for, has_architecture

    for family in FAMILIES:
        if name in family.presets:
            return family.size_depths(family.presets[name])
    family, config = family_for_name(name), _local_config(name)
    if family and config:
        return family.depths(config)
    if config is None and has_architecture(name):  # a published checkpoint's hub id: its architecture's depths
        arch = architecture_for(name)
        spec, overrides = arch.family.size_spec(arch.size), overrides or {}
        return arch.family.depths({"vision_config": {**spec["vision"], **overrides.get("vision", {})},
                                   "text_config": {**spec["text"], **overrides.get("text", {})}})
    return None


def family_for_name(name: str) -> ModelFamily | None:
    """The family a preset, a local checkpoint (its config.json) or a hub id names, without
    loading anything; ``None`` when it cannot be told (the model's own classes decide at load)."""
    for family in FAMILIES:
        if name in family.presets:
            return family
    config = _local_config(name)
    if config is not None:
        for family in FAMILIES:
            if config.get("model_type") in family.model_types:
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
