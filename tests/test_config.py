import pytest
import torch

import ipcv
from tests.conftest import tiny, tower_of


@pytest.mark.parametrize(
    "field, value, expected",
    [
        ("prune_layer", 1, ">= 2"),
        ("prune_layer", 2.5, "integer"),
        ("reduction_ratio", 1.0, "[0, 1)"),
        ("reduction_ratio", -0.1, "[0, 1)"),
        ("reduction_ratio", "0.5", "[0, 1)"),
        ("as_layers", -1, ">= 0"),
        ("neighbors", 0, ">= 1"),
        ("selection", "attention", "'feature_diff', 'random'"),
        ("restore", "linear", "'ngr', 'frozen'"),
        ("budget", "per_frame", "'global', 'per_image'"),
        ("neighbor_scope", "local", "'global', 'same_image'"),
        ("seed", -3, ">= 0"),
    ],
)
def test_bad_values_name_field_value_and_range(field, value, expected):
    with pytest.raises(ValueError) as err:
        ipcv.IPCVConfig(**{field: value})
    message = str(err.value)
    assert f"IPCVConfig.{field}" in message
    assert repr(value) in message
    assert expected in message


@pytest.mark.parametrize("k, a", [(12, 0), (3, 10), (11, 2)])
def test_blocks_beyond_depth_fail_before_patching(k, a):
    model = tiny("tiny-qwen2-vl")  # 12 vision blocks
    with pytest.raises(ValueError, match="depth \\(12\\)"):
        ipcv.apply(model, vision=ipcv.IPCVConfig(prune_layer=k, as_layers=a))
    assert all("forward" not in block.__dict__ for block in tower_of(model).blocks)
    assert not tower_of(model)._forward_pre_hooks
    ipcv.apply(model, vision=ipcv.IPCVConfig(prune_layer=3, as_layers=7)).remove()


def test_unsupported_model_names_supported_families():
    with pytest.raises(TypeError) as err:
        ipcv.apply(torch.nn.Linear(2, 2), vision=ipcv.IPCVConfig())
    message = str(err.value)
    assert "Linear" in message and "Qwen2-VL" in message and "Qwen2.5-VL" in message


def test_double_apply_is_refused_until_removed():
    model = tiny("tiny-qwen2-vl")
    handle = ipcv.apply(model, vision=ipcv.IPCVConfig())
    with pytest.raises(RuntimeError, match="already patched"):
        ipcv.apply(model, vision=ipcv.IPCVConfig())
    with pytest.raises(RuntimeError, match="already patched"):
        ipcv.apply(tower_of(model), vision=ipcv.IPCVConfig())
    handle.remove()
    ipcv.apply(model, vision=ipcv.IPCVConfig()).remove()
