"""Fidelity to the uncompressed model, and benchmark scoring through the cell runner."""

from __future__ import annotations

import pytest

import ipcv
from pipeline.evaluation import get_task
from pipeline.evaluation.runner import fit_pixels, request_for
from pipeline.evaluation.synthetic import answer_vocabulary, write_synthetic
from pipeline.measure import fidelity
from pipeline.models import request_builder
from pipeline.sweep.executor import CellExecutor
from pipeline.sweep.grid import expand
from pipeline.sweep.spec import ProfileError, parse_spec
from tests.conftest import tiny


@pytest.fixture(scope="module")
def mmbench_samples(tmp_path_factory):
    task = get_task("mmbench")
    return task, task.load(str(write_synthetic("mmbench", tmp_path_factory.mktemp("mm"), 4, seed=0)))


@pytest.mark.parametrize("name", ["tiny-qwen2-vl", "tiny-qwen2.5-vl"])
def test_fidelity_is_perfect_at_ratio_zero_and_falls_as_the_ratio_rises(name, mmbench_samples):
    task, samples = mmbench_samples
    model = tiny(name)
    builder = request_builder(model)
    requests = [builder(request_for(task, s, 224, 8)) for s in samples]
    references = [fidelity.collect(model, r, max_new_tokens=2) for r in requests]
    curves = {}
    for ratio in (0.0, 0.3, 0.6, 0.9):
        with ipcv.apply(model, vision=ipcv.IPCVConfig(reduction_ratio=ratio)):
            scores = [fidelity.compare(ref, fidelity.collect(model, r, max_new_tokens=2))
                      for ref, r in zip(references, requests)]
        curves[ratio] = {k: sum(s[k] for s in scores) / len(scores) for k in scores[0]}
    zero = curves[0.0]
    assert zero["fidelity_first_token_kl"] == 0.0 and zero["fidelity_feature_cosine"] == pytest.approx(1.0, abs=1e-6)
    assert zero["fidelity_answer_match"] == 1.0 and zero["fidelity_top1_agreement"] == 1.0
    cosines = [curves[r]["fidelity_feature_cosine"] for r in (0.0, 0.3, 0.6, 0.9)]
    kls = [curves[r]["fidelity_first_token_kl"] for r in (0.0, 0.3, 0.6, 0.9)]
    assert all(a > b for a, b in zip(cosines, cosines[1:])), cosines  # strictly falling
    assert all(a < b for a, b in zip(kls, kls[1:])), kls  # strictly rising


def test_cell_runner_scores_benchmarks_and_agrees_with_itself_at_ratio_zero():
    spec = parse_spec({
        "name": "t", "models": [{"name": "tiny-qwen2-vl", "dtype": "float32"}],
        "inputs": {"images": {"resolutions": [112]}},
        "methods": {"baseline": False, "ipcv": {"reduction_ratio": [0.0, 0.9]}},
        "measurement": {"warmup": 0, "repeats": 1, "max_new_tokens": 2, "count_flops": False},
        "evaluation": {"tasks": [{"task": "mmbench", "limit": 4}, {"task": "textvqa", "limit": 3}],
                       "max_new_tokens": 4},
    })
    cells = expand(spec)
    runner = CellExecutor(spec.models[0])
    reference = runner.reference(cells[0].reference_input, 2, cells[0].evaluation)
    zero, high = (runner.run(c, reference) for c in cells)
    assert zero["status"] == high["status"] == "ok", (zero["error"], high["error"])
    for task in ("mmbench", "textvqa"):
        assert zero[f"fidelity_{task}_answer_match"] == 1.0 and zero[f"fidelity_{task}_top1_agreement"] == 1.0
        assert 0.0 <= high[f"acc_{task}"] <= 1.0
    # accuracy is recomputed from the kept answers with the task's own scorer
    records = zero["predictions"]
    assert len(records) == 7 and {r["task"] for r in records} == {"mmbench", "textvqa"}
    by_task = {t: [r["score"] for r in records if r["task"] == t] for t in ("mmbench", "textvqa")}
    assert zero["acc_mmbench"] == sum(by_task["mmbench"]) / 4
    assert zero["accuracy"] == (zero["acc_mmbench"] + zero["acc_textvqa"]) / 2
    assert all(r["answer"] == r["reference_answer"] for r in records)


def test_a_broken_benchmark_image_fails_the_cell_with_its_row(tmp_path):
    (tmp_path / "t.jsonl").write_text('{"question": "q?", "image": "missing.png", "answers": ["a"]}\n')
    spec = parse_spec({
        "name": "t", "models": [{"name": "tiny-qwen2-vl", "dtype": "float32"}],
        "inputs": {"images": {"resolutions": [56]}},
        "measurement": {"warmup": 0, "repeats": 1, "max_new_tokens": 1, "count_flops": False},
        "evaluation": {"tasks": [{"task": "textvqa", "source": str(tmp_path / "t.jsonl")}]},
    })
    (cell,) = expand(spec)
    runner = CellExecutor(spec.models[0])
    row = runner.run(cell, runner.reference(cell.reference_input, 1, cell.evaluation))
    assert row["status"] == "failed" and "textvqa row 1" in row["error"] and "missing.png" in row["error"]


def test_evaluation_profiles_are_validated_and_keep_other_cell_ids():
    base = {"name": "t", "models": [{"name": "tiny-qwen2-vl"}], "inputs": {"images": {"resolutions": [56]}}}
    with pytest.raises(ProfileError, match="evaluation.tasks.0.task"):
        parse_spec({**base, "evaluation": {"tasks": [{"task": "vqav9"}]}})
    with pytest.raises(ProfileError, match="evaluation.tasks.0.frames"):
        parse_spec({**base, "evaluation": {"tasks": [{"task": "mvbench", "frames": 3}]}})
    plain = expand(parse_spec(base))[0]
    scored = expand(parse_spec({**base, "evaluation": {"tasks": [{"task": "pope"}]}}))[0]
    assert "evaluation" not in plain.config()  # cells without benchmarks keep the ids they had
    assert scored.id != plain.id and scored.reference_key != plain.reference_key
    assert scored.evaluation["tasks"][0]["limit"] == 8  # synthetic data: 8 rows unless told


def test_tiny_tokenizer_decodes_the_answer_words():
    builder = request_builder(tiny("tiny-qwen2-vl"))
    assert builder.tokenizer.collisions == []
    words = sorted(set(answer_vocabulary()))
    assert builder.decode(builder.tokenizer(" ".join(words))) == " ".join(words)
    assert builder.decode([builder.eos, 7]) == "[7]"  # end of sequence dropped, unknown ids shown


def test_fit_pixels_keeps_aspect_and_the_patch_grid():
    from PIL import Image

    assert fit_pixels(Image.new("RGB", (640, 480)), 448).size == (504, 392)  # 448² = 200704 ~ 504 x 392
    assert fit_pixels(Image.new("RGB", (100, 100)), 224).size == (224, 224)
    assert fit_pixels(Image.new("RGB", (1000, 10)), 56).size == (560, 28)
