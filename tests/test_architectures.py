"""Published architectures with random weights: the built models are the published ones (parameter
counts), profiles name them by hub id, and a reduced-depth build runs cells end to end on CPU."""

from __future__ import annotations

from decimal import Decimal

import pandas as pd
import pytest
import torch

from pipeline.models import load_model
from pipeline.models.architectures import ARCHITECTURES, architecture_for
from pipeline.sweep.driver import run_sweep
from pipeline.sweep.grid import expand
from pipeline.sweep.spec import ProfileError, parse_spec


@pytest.mark.parametrize("arch", ARCHITECTURES, ids=lambda a: a.checkpoint)
def test_every_shipped_architecture_has_the_published_parameter_count(arch):
    """Built on the meta device (no memory), the count rounds to the model card's figure: within
    half a unit of its last displayed digit."""
    with torch.device("meta"):
        model = arch.family.build(arch.size)
    count = sum(p.numel() for p in model.parameters())
    if arch.card_params is None:
        pytest.skip(f"{arch.checkpoint}: no published count at hand ({count / 1e9:.3f}B built)")
    shown = Decimal(arch.card_params.rstrip("B"))
    half_unit = Decimal(1).scaleb(shown.as_tuple().exponent) / 2
    assert abs(Decimal(count) / Decimal(10**9) - shown) <= half_unit, (count, arch.card_params)


def test_checkpoint_names_resolve_whatever_their_case_or_suffix():
    assert architecture_for("qwen/qwen2-vl-7b").size == "7b"
    assert architecture_for("Qwen/Qwen2.5-VL-72B-Instruct").family.key == "qwen2_5_vl"
    with pytest.raises(ValueError, match="Qwen/Qwen2-VL-2B-Instruct"):  # the message lists what there is
        architecture_for("Qwen/Qwen3-VL-8B-Instruct")


def _profile(model: dict) -> dict:
    return {
        "name": "arch-test", "output_dir": "unused", "models": [model],
        "inputs": {"images": {"resolutions": [56]}},
        "methods": {"baseline": True, "ipcv": {"prune_layer": [2], "as_layers": [1], "reduction_ratio": [0.5]}},
        "measurement": {"warmup": 0, "repeats": 1, "max_new_tokens": 2}, "tracking": {"mode": "disabled"},
    }


def test_profiles_reject_random_weights_of_an_unknown_architecture_and_stray_overrides():
    with pytest.raises(ProfileError, match="no built-in architecture"):
        parse_spec(_profile({"name": "someone/some-vlm", "weights": "random"}))
    with pytest.raises(ProfileError, match="overrides apply to random-weight architectures"):
        parse_spec(_profile({"name": "Qwen/Qwen2-VL-2B-Instruct", "overrides": {"text": {"num_hidden_layers": 1}}}))


def test_adding_the_weights_fields_left_existing_cell_ids_alone():
    """Cells that do not use ``weights`` / ``overrides`` keep the ids they had before the fields existed."""
    spec = parse_spec(_profile({"name": "tiny-qwen2-vl", "dtype": "float32"}))
    config = expand(spec)[0].config()
    assert set(config["model"]) == {"name", "dtype", "attn_implementation", "gpus", "batch", "seed"}


def test_a_reduced_depth_architecture_runs_cells_end_to_end(tmp_path):
    """Qwen2-VL-2B's widths with 4 ViT blocks and 1 decoder layer: the cells run, the rows say the
    weights are random, and the vision FLOPs are the hand-written count for those widths."""
    overrides = {"vision": {"depth": 4}, "text": {"num_hidden_layers": 1}}
    spec = parse_spec(_profile({"name": "Qwen/Qwen2-VL-2B-Instruct", "weights": "random", "dtype": "float32",
                                "overrides": overrides}))
    summary = run_sweep(spec, tmp_path, progress=False, executor="local")
    rows = pd.read_parquet(summary.results).set_index("method")
    assert summary.ok == 2 and (rows.status == "ok").all(), rows.error
    assert (rows.weights == "random (architecture)").all()
    # 56² = 4 x 4 patches of 14²; ViT width 1280, merger 4 x 1280 -> 1536
    n, d, out, depth = 16, 1280, 1536, 4
    embed = 2 * n * (3 * 2 * 14 * 14) * d
    block = 2 * n * d * (3 * d + d + 2 * 4 * d) + 2 * 2 * n * n * d  # qkv, proj, MLP; QK^T and AV
    merger = 2 * (n // 4) * (4 * d) ** 2 + 2 * (n // 4) * 4 * d * out
    assert rows.loc["baseline", "vision_flops"] == embed + depth * block + merger
    model = load_model("Qwen/Qwen2-VL-2B-Instruct", dtype="float32", weights="random", overrides=overrides)
    assert model.config.text_config.vocab_size == 151936 and model.config.text_config.hidden_size == 1536
    assert model.lm_head.weight.data_ptr() == model.model.language_model.embed_tokens.weight.data_ptr()  # tied


def test_a_model_too_big_for_the_gpu_is_refused_with_its_sizes():
    from pipeline.models.loading import check_fits

    gib = 2**30
    with pytest.raises(ValueError, match=r"73.41B parameters take 136.7 GiB in bfloat16, more than the 130.0 GiB free"):
        check_fits("Qwen/Qwen2-VL-72B-Instruct", 73_405_560_320, "bfloat16", torch.device("cuda:0"),
                   free_bytes=130 * gib, total_bytes=140 * gib)
    check_fits("Qwen/Qwen2-VL-7B-Instruct", 8_291_375_616, "bfloat16", torch.device("cuda:0"),
               free_bytes=130 * gib, total_bytes=140 * gib)  # fits: no error
