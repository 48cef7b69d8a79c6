"""The family adapters: telling a model's family, what inputs it accepts, and where its stages are."""

from __future__ import annotations

import json

import pytest
import torch

from pipeline.measure.vision_flops import vision_dims
from pipeline.models import (
    FAMILIES,
    Requirements,
    family_for_name,
    family_of,
    requirements_for,
    supported_requirements,
)
from pipeline.sweep.spec import ProfileError, parse_spec
from tests.conftest import tiny


def test_the_family_of_a_preset_a_checkpoint_folder_and_a_hub_id(tmp_path):
    assert family_for_name("tiny-qwen2-vl").key == "qwen2_vl"
    assert family_for_name("tiny-qwen2.5-vl").key == "qwen2_5_vl"
    assert family_for_name("Qwen/Qwen2-VL-7B-Instruct").key == "qwen2_vl"
    assert family_for_name("Qwen/Qwen2.5-VL-72B-Instruct").key == "qwen2_5_vl"
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2_5_vl"}))
    assert family_for_name(str(tmp_path)).key == "qwen2_5_vl"  # the folder's name says nothing
    assert family_for_name("my-org/some-finetune") is None


def test_requirements_combine_by_least_common_multiple():
    a, b = Requirements(28, 2, "a"), Requirements(32, 1, "b")
    both = Requirements.all_of([a, b])
    assert (both.resolution_multiple, both.frame_multiple) == (224, 2)
    assert both.check_resolution(448) == 448
    with pytest.raises(ValueError, match="multiple of 224"):
        both.check_resolution(28 * 4)
    with pytest.raises(ValueError, match="even number"):
        a.check_frames(3)
    assert supported_requirements().resolution_multiple == 28  # Qwen-VL: patch 14 x merge 2
    assert requirements_for("my-org/some-finetune") == supported_requirements()


def test_a_profile_checks_inputs_against_its_models_families():
    base = {"name": "t", "inputs": {"images": {"resolutions": [42]}}}
    for name in ("tiny-qwen2-vl", "my-org/some-finetune"):  # unknown family: what every family accepts
        with pytest.raises(ProfileError, match="inputs.images.resolutions.0.*multiple of 28"):
            parse_spec({**base, "models": [{"name": name}]})


@pytest.mark.parametrize("name", ["tiny-qwen2-vl", "tiny-qwen2.5-vl"])
def test_the_adapter_finds_the_stages_and_sizes(name):
    model = tiny(name)
    family = family_of(model)
    assert family is family_for_name(name) and family in FAMILIES
    assert family.tower(model) is model.model.visual and family_of(model.model.visual) is family
    assert family.language_model(model) is model.model.language_model and family.lm_head(model) is model.lm_head
    assert family.vision_token_ids(model) == (500, 501)
    request = {"image_grid_thw": torch.tensor([[1, 16, 16], [2, 4, 4]])}
    assert family.vision_tokens(model, request) == (288, 288, 72)  # 2 x 2 patches merge into one LLM token
    dims = vision_dims(model)
    assert (dims.width, dims.patch_inputs, dims.merge_unit) == (64, 3 * 2 * 14 * 14, 4)
    assert dims.mlp_matrices == (3 if "2.5" in name else 2)  # Qwen2.5-VL's MLP is gated
