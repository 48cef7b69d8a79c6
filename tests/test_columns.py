"""One column schema, one method registry: every row column is described, labels and grids are
what the configs say, and the executor gives the same rows in process as on Ray."""

from __future__ import annotations

import dataclasses

import pytest

import ipcv
from ipcv import algorithm as alg
from pipeline import columns, gate, methods
from pipeline.report import pareto
from pipeline.sweep.executor import CellExecutor
from pipeline.sweep.grid import expand
from pipeline.sweep.rows import base_row
from pipeline.sweep.spec import IPCVGrid, LLMGrid, ProfileError, parse_spec

BASE = {"name": "t", "models": [{"name": "tiny-qwen2-vl", "dtype": "float32"}]}


def test_every_column_of_a_real_row_is_described():
    spec = parse_spec({
        **BASE, "inputs": {"images": {"resolutions": [56]}},
        "methods": {"baseline": False, "stacked": True, "ipcv": {"reduction_ratio": [0.5]},
                    "llm": {"method": ["fastv"]}},
        "measurement": {"warmup": 0, "repeats": 1, "max_new_tokens": 2, "count_flops": True},
        "evaluation": {"tasks": [{"task": "pope", "limit": 2}, {"task": "mvbench", "limit": 1, "frames": 2}],
                       "max_new_tokens": 2},
    })
    cell = next(c for c in expand(spec) if c.method == "ipcv+fastv")
    executor = CellExecutor(spec.models[0])
    row = executor.run(cell, executor.reference(cell.reference_input, 2, cell.evaluation))
    assert row["status"] == "ok", row["error"]
    row.pop("predictions")
    undescribed = [name for name in row if not columns.is_described(name)]
    assert undescribed == []
    # what the gate, the Pareto analysis and the summary read is in such rows (or derived by the report)
    assert set(columns.ROW_GATED) <= set(row)
    assert set(columns.SUMMARY) <= set(row)
    assert set(columns.QUALITY) | set(columns.COSTS) - {"peak_bytes"} <= set(row)
    assert {"acc_pope_f1", "fidelity_mvbench_top1_agreement"} <= set(row)
    assert row["ipcv_kernels"] == alg.KERNELS.names()  # the worker's kernel choice, so mixed runs show


def test_an_undescribed_column_is_refused_with_the_schema_file():
    with pytest.raises(KeyError, match="pipeline/columns.py"):
        columns.get("vision_mss")
    with pytest.raises(KeyError):
        columns.get("acc_vqav9")  # not a task of pipeline/evaluation/tasks.py
    pope = columns.get("acc_pope")
    assert pope.better == "higher" and pope.label == "pope accuracy"


def test_gate_rules_and_directions_come_from_the_schema():
    # by hand: FLOPs and tokens must not change; fidelity must not fall (KL must not rise); costs must not rise
    rules = {name: tuple(t.values()) for name, t in gate.baseline.default_tolerances("instructions").items()}
    assert rules["vision_flops"] == ("exact", 0.0, "higher")
    assert rules["llm_visual_tokens_kept"] == ("exact", 0.0, "higher")
    assert rules["fidelity_feature_cosine"] == ("close", 1e-4, "lower")
    assert rules["fidelity_first_token_kl"] == ("close", 1e-3, "higher")
    assert rules["vision_instructions_ratio"] == ("work_ratio", 0.05, "higher")
    assert "vision_time_ratio" not in rules and "prefill_time_ratio" in gate.baseline.default_tolerances("time")
    assert pareto.COST["total_flops"].scale == 1e9 and not pareto.COST["e2e_ms"].higher_is_better
    assert not pareto.QUALITY["fidelity_first_token_kl"].higher_is_better


def test_profile_grids_are_the_config_fields_with_their_defaults():
    vision = {f.name: f.default for f in dataclasses.fields(ipcv.IPCVConfig) if f.name != "seed"}
    assert IPCVGrid().model_dump() == {name: [value] for name, value in vision.items()}
    defaults = ipcv.LLMPruneConfig()
    assert LLMGrid().model_dump() == {"method": [defaults.method], "layer": [defaults.layer],
                                      "reduction_ratio": [defaults.reduction_ratio]}
    with pytest.raises(ProfileError, match="methods.ipcv.selection.0"):
        parse_spec({**BASE, "inputs": {"images": {"resolutions": [56]}},
                    "methods": {"ipcv": {"selection": ["attention"]}}})
    with pytest.raises(ProfileError, match="methods.ipcv.seed"):  # the seed is not swept
        parse_spec({**BASE, "inputs": {"images": {"resolutions": [56]}}, "methods": {"ipcv": {"seed": [1]}}})


def test_every_llm_method_of_the_config_is_registered_alone_and_stacked():
    for name in ipcv.config.LLM_METHODS:
        assert methods.METHODS[name].llm == name and not methods.METHODS[name].vision
        assert methods.METHODS[f"ipcv+{name}"].llm == name and methods.METHODS[f"ipcv+{name}"].vision
    assert list(methods.METHODS)[:3] == ["baseline", "ipcv", "random"] and list(methods.METHODS)[-1] == "downsample"
    # colours stay matplotlib's tab10 in the registry's order; unknown methods get one of two spares
    assert methods.method_colour("baseline") == "#1f77b4" and methods.method_colour("downsample") == "#7f7f7f"
    assert methods.method_colour("sparsevlm") in ("#bcbd22", "#17becf")


def test_labels_are_written_with_each_row():
    spec = parse_spec({
        **BASE, "inputs": {"images": {"resolutions": [112, 224], "count": 2}, "videos": {"frames": [4], "resolutions": [56]}},
        "methods": {"baseline": True, "ipcv": {"reduction_ratio": [0.5], "as_layers": [7, 4], "budget": ["per_image"],
                                               "as_queries": ["all", "kept"]},
                    "llm": {"method": ["fastv"]}, "stacked": True, "random_selection": True,
                    "downsample": {"resolutions": [112]}},
    })
    labels = {(r["input"], r["setting"]) for r in map(base_row, expand(spec))}
    for expected in [
        ("image 224px x2", "baseline"),
        ("image 224px x2", "ipcv K=3 r=0.5 per_image"),
        ("image 224px x2", "ipcv K=3 r=0.5 A=4 per_image"),
        ("image 224px x2", "ipcv K=3 r=0.5 A=4 per_image kept-queries"),
        ("image 224px x2", "random K=3 r=0.5 per_image"),
        ("image 224px x2", "fastv K'=2 r'=0.778"),
        ("image 224px x2", "ipcv K=3 r=0.5 A=4 per_image + fastv K'=2 r'=0.778"),
        ("image 224px x2", "downsample 112px"),  # grouped with the resolution it stands in for
        ("video 56px x4f", "baseline"),
    ]:
        assert expected in labels
