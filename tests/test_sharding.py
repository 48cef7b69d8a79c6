"""Models larger than one GPU: the device-map plan on the published architectures (meta device,
GPU budgets given), and the sharded path on the CPU as a stand-in (every planned part placed on
the CPU, accelerate's hooks attached) against the same weights unsharded."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

import ipcv
from pipeline.measure.stages import MeasureSettings, StageReport, _PeakMemory, measure_request
from pipeline.models import build_random, family_named, synthetic_spec
from pipeline.models.architectures import architecture_for
from pipeline.models.loading import build_sharded
from pipeline.models.sharding import GiB, plan_device_map
from pipeline.sweep.spec import ProfileError, parse_spec

BF16 = torch.bfloat16


def _meta(checkpoint: str) -> tuple[torch.nn.Module, object]:
    arch = architecture_for(checkpoint)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(BF16)
    try:
        with torch.device("meta"):
            return arch.family.build(arch.size), arch.family
    finally:
        torch.set_default_dtype(previous)


def _device_of(name: str, device_map: dict) -> object:
    """The device the map gives a parameter: its longest matching module prefix."""
    matches = [p for p in device_map if p == "" or name == p or name.startswith(p + ".")]
    return device_map[max(matches, key=len)]


@pytest.mark.parametrize("checkpoint, gpus, budget_gib", [
    ("OpenGVLab/InternVL3-38B-hf", 2, 70),  # 71.5 GiB of weights; an 80 GB card less room for activations
    ("Qwen/Qwen2-VL-72B-Instruct", 3, 50),  # 136.7 GiB
])
def test_the_plan_spreads_a_published_architecture_over_the_gpus_it_needs(checkpoint, gpus, budget_gib):
    model, family = _meta(checkpoint)
    budget = budget_gib * GiB
    weights = sum(p.numel() for p in model.parameters()) * 2
    with pytest.raises(ValueError, match=r"GiB in bfloat16, more than the worker's"):
        plan_device_map(model, family, {i: budget for i in range(gpus - 1)}, BF16)
    device_map = plan_device_map(model, family, {i: budget for i in range(gpus)}, BF16)
    placed: Counter = Counter()
    for name, param in model.named_parameters():
        placed[_device_of(name, device_map)] += param.numel() * 2
    assert sum(placed.values()) == weights and set(placed) == set(range(gpus))  # every weight, every GPU used
    assert all(placed[d] <= budget for d in placed)
    first, last = family.vision_span(model)
    names = {m: n for n, m in model.named_modules()}
    for module in (first, last):  # the vision stage whole on the first GPU
        assert _device_of(names[module] + ".x", device_map) == 0 and names[module] in device_map
    layers = [_device_of(f"{names[family.language_model(model)]}.layers.{i}.x", device_map)
              for i in range(len(family.language_model(model).layers))]
    assert layers == sorted(layers)  # decoder layers in order over the GPUs


@pytest.mark.parametrize("key", ["internvl", "qwen2_vl"])
def test_the_sharded_path_on_a_cpu_stand_in_equals_the_same_weights_unsharded(key):
    family = family_named(key)
    with torch.device("meta"):
        shell = family.build("tiny")
    vision = sum(p.numel() for p in family.tower(shell).parameters()) * 4
    total = sum(p.numel() for p in shell.parameters()) * 4
    sharded = build_sharded(family, "tiny", {0: int(vision * 1.2), 1: total}, seed=0, dtype="float32",
                            stand_in="cpu")
    assert set(sharded.planned_device_map.values()) == {0, 1}  # the plan did split the model
    assert any(hasattr(m, "_hf_hook") for m in sharded.modules())  # accelerate's hooks are on
    plain = build_random(family, "tiny", seed=1)
    plain.load_state_dict(sharded.state_dict())
    request = family.request_builder(plain)(synthetic_spec(448))
    settings = dict(vision=ipcv.IPCVConfig(prune_layer=3, as_layers=3), llm=ipcv.LLMPruneConfig(method="dart"))
    out = {}
    for name, model in (("sharded", sharded), ("plain", plain)):
        with torch.no_grad():
            logits = model(**request, logits_to_keep=1).logits
            with ipcv.apply(model, **settings):
                generated = model.generate(**request, max_new_tokens=3, do_sample=False)
        out[name] = (logits, generated)
    assert torch.equal(out["sharded"][0], out["plain"][0]) and torch.equal(out["sharded"][1], out["plain"][1])
    measured = measure_request(sharded, synthetic_spec(448), model_name=key, settings=MeasureSettings(0, 1, 2, False),
                               **settings)
    expected = measure_request(plain, synthetic_spec(448), model_name=key, settings=MeasureSettings(0, 1, 2, False),
                               **settings)
    for stage in ("vision", "prefill"):
        assert measured.stages[stage].tokens == expected.stages[stage].tokens
        assert measured.stages[stage].flops == expected.stages[stage].flops


def test_sharded_weights_follow_the_seed():
    family = family_named("internvl")
    a, b, c = (build_sharded(family, "tiny", {"cpu": GiB}, seed=s, dtype="float32") for s in (0, 0, 1))
    same = [torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values())]
    differ = [torch.equal(x, y) for x, y in zip(a.state_dict().values(), c.state_dict().values())]
    assert all(same) and not all(differ)


def test_a_stage_on_several_gpus_reports_each_peak_and_their_sum():
    peaks = _PeakMemory({}, [])
    report = StageReport()
    peaks.record(report, [{"cuda:0": 5, "cuda:1": 7}, {"cuda:0": 9, "cuda:1": 2}])  # two calls of the stage
    assert report.peak_memory_by_device == {"cuda:0": 9, "cuda:1": 7} and report.peak_memory_bytes == 16
    single = StageReport()
    peaks.record(single, [{"cuda:0": 5}, {"cuda:0": 3}])
    assert single.peak_memory_bytes == 5 and single.peak_memory_by_device is None


def test_profiles_take_whole_gpus_to_shard():
    base = {"name": "t", "inputs": {"images": {"resolutions": [448]}}, "tracking": {"mode": "disabled"}}
    assert parse_spec({**base, "models": [{"name": "OpenGVLab/InternVL3-38B-hf", "gpus": 2}]}).models[0].gpus == 2
    with pytest.raises(ProfileError, match="whole number"):
        parse_spec({**base, "models": [{"name": "OpenGVLab/InternVL3-38B-hf", "gpus": 1.5}]})
