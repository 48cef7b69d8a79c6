"""Models for the study: the family adapters, presets with random weights, real checkpoints.

``family_of(model)`` is the entry to everything family-specific (where the stages are, patch
geometry, requests, FLOPs parameters); ``load_model`` gives a preset or a checkpoint.
"""

from pipeline.models.family import LLMDims, ModelFamily, Requirements, VisionDims
from pipeline.models.loading import (
    DTYPES,
    PRESETS,
    Preset,
    build_random,
    build_tiny,
    check_device,
    is_preset,
    load_model,
    load_processor,
    parse_dtype,
    to_device,
)
from pipeline.models.registry import (
    FAMILIES,
    family_for_name,
    family_named,
    family_of,
    model_depths,
    requirements_for,
    supported_requirements,
)
from pipeline.models.requests import RequestSpec, VisionInput, synthetic_spec


def request_builder(model, processor=None):
    """The request builder of ``model``'s family."""
    return family_of(model).request_builder(model, processor)


__all__ = [
    "DTYPES", "FAMILIES", "LLMDims", "ModelFamily", "PRESETS", "Preset", "RequestSpec", "Requirements",
    "VisionDims", "VisionInput", "build_random", "build_tiny", "check_device", "family_for_name",
    "family_named", "family_of", "is_preset", "load_model", "model_depths", "load_processor", "parse_dtype",
    "request_builder", "requirements_for", "supported_requirements", "synthetic_spec", "to_device",
]
