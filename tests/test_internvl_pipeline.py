"""InternVL3 in the study: the adapter, InternVL's tiling in requests, FLOPs by three routes and
by hand, the stage profiler's token counts, and sweep cells (presets and a published architecture)."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from PIL import Image

import ipcv
from pipeline.measure.flop_count import PREFILL, VISION, flop_counter_flops, fvcore_flops
from pipeline.measure.stages import MeasureSettings, measure_request
from pipeline.models import build_tiny, family_for_name, family_of, load_model, synthetic_spec
from pipeline.models.requests import RequestSpec, synthetic_image
from pipeline.sweep.driver import run_sweep
from pipeline.sweep.grid import expand
from pipeline.sweep.spec import ProfileError, parse_spec
from tests.test_flop_count import analytic

PRESETS = ["tiny-internvl3", "tiny-internvl3-qknorm"]
CONTEXT, START, END = 500, 502, 503
N, PER_TILE = 1024, 256  # patch tokens per 448² tile (32 x 32 patches of 14²), LLM tokens per tile


def wide_image(seed: int = 0) -> Image.Image:
    """A 448 x 896 picture (width 896): InternVL cuts it into 1 x 2 tiles plus a thumbnail."""
    left, right = synthetic_image(448, seed), synthetic_image(448, seed + 1)
    image = Image.new("RGB", (896, 448))
    image.paste(left, (0, 0))
    image.paste(right, (448, 0))
    return image


def runs_of(ids: list[int], token: int) -> list[int]:
    runs, length = [], 0
    for i in ids + [None]:
        if i == token:
            length += 1
        elif length:
            runs.append(length)
            length = 0
    return runs


def test_the_adapter_finds_the_stages_and_names_the_family():
    model = build_tiny("tiny-internvl3")
    family = family_of(model)
    assert family.key == "internvl" and family_for_name("tiny-internvl3") is family
    assert family_for_name("OpenGVLab/InternVL3-38B-hf") is family
    tower, projector = model.model.vision_tower, model.model.multi_modal_projector
    assert family.tower(model) is tower and family_of(tower) is family
    assert family.vision_span(model) == (tower, projector)
    assert family.stage_modules(model)["vision"] == [tower, projector]
    assert family.language_model(model) is model.model.language_model
    assert family.vision_token_ids(model) == (CONTEXT,)
    qk = build_tiny("tiny-internvl3-qknorm").model.vision_tower.config
    assert (qk.use_qk_norm, qk.norm_type, qk.attention_bias) == (True, "rms_norm", False)  # InternViT-6B's layout


@pytest.mark.parametrize("images, tiles", [
    ([synthetic_image(448, 0)], [1]),
    ([synthetic_image(224, 0)], [1]),  # smaller than a tile: resized up to one tile
    ([synthetic_image(896, 0)], [5]),  # square: 2 x 2 tiles + thumbnail
    ([synthetic_image(1344, 0)], [10]),  # 3 x 3 + thumbnail
    ([wide_image(), synthetic_image(448, 3)], [3, 1]),  # 1 x 2 + thumbnail; 1
])
def test_requests_tile_images_as_internvl_does(images, tiles):
    model = build_tiny("tiny-internvl3")
    builder = family_of(model).request_builder(model)
    request = builder(RequestSpec(images, [], "What is shown?", 448))
    assert request["pixel_values"].shape == (sum(tiles), 3, 448, 448)
    ids = request["input_ids"][0].tolist()
    assert runs_of(ids, CONTEXT) == [PER_TILE * t for t in tiles]  # one run per image, 256 per tile
    assert ids.count(START) == ids.count(END) == len(tiles)
    with torch.no_grad():  # the model accepts it: placeholders == features
        model(**request, logits_to_keep=1)


def test_a_video_is_one_tile_per_frame():
    model = build_tiny("tiny-internvl3")
    request = family_of(model).request_builder(model)(synthetic_spec(672, video_frames=4))
    assert request["pixel_values"].shape == (4, 3, 448, 448)
    assert runs_of(request["input_ids"][0].tolist(), CONTEXT) == [PER_TILE] * 4


SETTINGS = [
    {},
    {"vision": ipcv.IPCVConfig(prune_layer=7, as_layers=3, reduction_ratio=0.65)},
    {"vision": ipcv.IPCVConfig(neighbor_scope="same_image"), "llm": ipcv.LLMPruneConfig(method="dart")},
    {"llm": ipcv.LLMPruneConfig(method="fastv", layer=2, reduction_ratio=0.65)},
    {"vision": ipcv.IPCVConfig(prune_layer=7, as_layers=3, reduction_ratio=0.65, as_queries="kept")},
]


@pytest.mark.parametrize("preset, setting", [("tiny-internvl3", i) for i in range(len(SETTINGS))]
                         + [("tiny-internvl3-qknorm", 0), ("tiny-internvl3-qknorm", 1), ("tiny-internvl3-qknorm", 4)])
def test_analytic_flops_match_fvcore_and_flop_counter(preset, setting):
    """Eager attention: FlopCounterMode counts 0 for sdpa on CPU and does not count cdist."""
    model = build_tiny(preset, attn_implementation="eager")
    request = family_of(model).request_builder(model)(RequestSpec([wide_image()], [], "What is shown?", 448))
    handle = ipcv.apply(model, **SETTINGS[setting]) if SETTINGS[setting] else None
    expected = analytic(model, request, handle)
    counted, skipped = fvcore_flops(model, request)
    counter = flop_counter_flops(model, request)
    overhead = handle.vision_stats.neighbor_search_flops if handle and handle.vision_stats else 0
    if handle:
        handle.remove()
    assert set(skipped) <= {"aten::upsample_bicubic2d"}  # position-embedding interpolation: elementwise
    assert counted == {VISION: expected[VISION], PREFILL: expected[PREFILL]}
    assert counter == {VISION: expected[VISION] - overhead, PREFILL: expected[PREFILL]}


def test_ipcv_saves_the_hand_counted_vision_flops():
    """fvcore's count of the whole vision stage (tower + projector), unpatched minus IPCV, equals
    the saving written out from the published rule: per tile CLS + floor(1024 (1 - r)) tokens kept
    after block K-1, AS blocks attend over the full tile, neighbours searched over every tile."""
    model = build_tiny("tiny-internvl3")
    request = family_of(model).request_builder(model)(RequestSpec([wide_image()], [], "What is shown?", 448))
    tiles, L, D, H, depth = 3, 1 + N, 64, 128, 12
    K, A, r_percent = 7, 3, 65
    base, _ = fvcore_flops(model, request)
    with ipcv.apply(model, vision=ipcv.IPCVConfig(prune_layer=K, as_layers=A, reduction_ratio=r_percent / 100)):
        cut, _ = fvcore_flops(model, request)
    k = 1 + N * (100 - r_percent) // 100

    def block(attn_len: int, mlp_len: int) -> int:  # per tile, 2 FLOPs per multiply-add
        return 2 * (attn_len * 4 * D * D + 2 * attn_len * attn_len * D + mlp_len * 2 * D * H)

    removed, candidates = tiles * (L - k), tiles * k  # every removed token against every kept one
    saved = tiles * (depth * block(L, L) - K * block(L, L) - A * block(L, k) - (depth - K - A) * block(k, k))
    assert base[VISION] - cut[VISION] == saved - 2 * removed * candidates * D


def test_the_stage_profiler_counts_tiles_cls_and_pixel_shuffle():
    model = build_tiny("tiny-internvl3")
    settings = MeasureSettings(warmup=0, repeats=1, max_new_tokens=2, count_flops=True)
    report = measure_request(model, synthetic_spec(896), model_name="tiny-internvl3", settings=settings,
                             vision=ipcv.IPCVConfig(prune_layer=7, as_layers=3, reduction_ratio=0.65),
                             llm=ipcv.LLMPruneConfig(method="fastv", layer=2, reduction_ratio=0.5))
    tiles = 5
    assert report.stages["vision"].tokens == {
        "patches_in": tiles * (1 + N), "kept_after_prune_layer": tiles * (1 + N * 35 // 100),
        "to_merger": tiles * N, "visual_tokens_out": tiles * PER_TILE,
    }
    prefill = report.stages["prefill"].tokens
    assert prefill["visual_tokens_in"] == tiles * PER_TILE and prefill["visual_tokens_kept"] == tiles * PER_TILE // 2
    for stage in ("vision", "prefill"):
        flops = report.stages[stage].flops
        assert flops["analytic"] == flops["fvcore"]


def _profile(model: dict, ipcv_grid: dict | None = None) -> dict:
    return {
        "name": "internvl-test", "output_dir": "unused", "models": [model],
        "inputs": {"images": {"resolutions": [448]}},
        "methods": {"baseline": True, "ipcv": ipcv_grid or {"prune_layer": [2], "as_layers": [1],
                                                             "reduction_ratio": [0.5]}},
        "measurement": {"warmup": 0, "repeats": 1, "max_new_tokens": 2, "count_flops": False},
        "tracking": {"mode": "disabled"},
    }


def test_a_profile_refuses_a_per_image_budget_and_blocks_internvl_lacks():
    with pytest.raises(ProfileError, match="budget per_image is not served on InternVL"):
        expand(parse_spec(_profile({"name": "tiny-internvl3"}, {"budget": ["global", "per_image"]})))
    with pytest.raises(ProfileError, match="model OpenGVLab/InternVL3-8B-hf"):  # 24 blocks, known from the name
        expand(parse_spec(_profile({"name": "OpenGVLab/InternVL3-8B-hf", "weights": "random"},
                                   {"prune_layer": [23], "as_layers": [3]})))
    with pytest.raises(ProfileError, match="prune_layer"):  # the reduced depth of the overrides counts
        expand(parse_spec(_profile({"name": "OpenGVLab/InternVL3-1B-hf", "weights": "random",
                                    "overrides": {"vision": {"num_hidden_layers": 2}}})))


def test_a_reduced_depth_published_architecture_runs_cells_end_to_end(tmp_path):
    """InternVL3-1B's widths with 3 ViT blocks and 1 decoder layer: the cells run, the rows say the
    weights are random, and the vision FLOPs are the hand-written count (tower + projector)."""
    overrides = {"vision": {"num_hidden_layers": 3}, "text": {"num_hidden_layers": 1}}
    spec = parse_spec(_profile({"name": "OpenGVLab/InternVL3-1B-hf", "weights": "random", "dtype": "float32",
                                "overrides": overrides}))
    summary = run_sweep(spec, tmp_path, progress=False, executor="local")
    rows = pd.read_parquet(summary.results).set_index("method")
    assert summary.ok == 2 and (rows.status == "ok").all(), rows.error
    assert (rows.weights == "random (architecture)").all()
    L, d, mlp, llm, depth = 1 + N, 1024, 4096, 896, 3  # one 448² tile
    embed = 2 * N * (3 * 14 * 14) * d
    block = 2 * L * d * (4 * d + 2 * mlp) + 2 * 2 * L * L * d
    projector = 2 * PER_TILE * (4 * d) * llm + 2 * PER_TILE * llm * llm
    assert rows.loc["baseline", "vision_flops"] == embed + depth * block + projector
    model = load_model("OpenGVLab/InternVL3-1B-hf", dtype="float32", weights="random", overrides=overrides)
    assert model.config.text_config.vocab_size == 151674 and model.config.vision_config.hidden_size == 1024
