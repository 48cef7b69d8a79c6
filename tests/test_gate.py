"""The efficiency gate against baselines that differ in known ways."""

import copy
import json

import pytest
import yaml
from typer.testing import CliRunner

from pipeline import gate
from pipeline.cli import app
from pipeline.sweep.spec import parse_spec

PROFILE = {
    "name": "gate-test",
    "models": [{"name": "tiny-qwen2-vl", "dtype": "float32"}],
    "inputs": {"images": {"resolutions": [224]}},
    "methods": {"baseline": True, "ipcv": {"reduction_ratio": [0.65]}, "llm": {"method": ["dart"]}},
    "measurement": {"warmup": 1, "repeats": 2, "max_new_tokens": 2, "count_flops": False},
    "tracking": {"mode": "disabled"},
}
WIDE = {"vision_time_ratio": {"kind": "ratio", "tolerance": 100.0, "worse": "higher"},
        "prefill_time_ratio": {"kind": "ratio", "tolerance": 100.0, "worse": "higher"}}


@pytest.fixture(scope="module")
def measured():
    spec = parse_spec(PROFILE)
    return spec, gate.measure(spec)


def baseline_of(spec, figures, tmp_path, tolerances=WIDE):
    path = tmp_path / "baseline.json"
    gate.write_baseline(path, spec, figures, tolerances)
    return json.loads(path.read_text())


def test_unchanged_tree_passes(measured, tmp_path):
    spec, figures = measured
    again = gate.measure(spec)
    result = gate.compare(baseline_of(spec, figures, tmp_path), again)
    assert result.regressions == [] and result.version_notes == []
    assert "tiny-qwen2-vl|image224|ipcv|vision_flops" in figures
    assert "tiny-qwen2-vl|image224|ipcv|vision_time_ratio" in figures


def test_switching_pruning_off_fails_naming_the_figures(measured, tmp_path):
    spec, figures = measured
    off = copy.deepcopy(PROFILE)
    off["methods"]["ipcv"]["reduction_ratio"] = [0.0]
    result = gate.compare(baseline_of(spec, figures, tmp_path), gate.measure(parse_spec(off)))
    named = {d.key for d in result.regressions}
    assert "tiny-qwen2-vl|image224|ipcv|vision_flops" in named
    assert "tiny-qwen2-vl|image224|ipcv|vision_tokens_kept" in named
    flops = next(d for d in result.regressions if d.key.endswith("ipcv|vision_flops"))
    assert flops.current > flops.baseline and flops.note == "worse"


@pytest.mark.parametrize(
    "figure, change",
    [("dart|prefill_flops", -1000.0), ("ipcv|vision_tokens_kept", 5.0), ("dart|llm_visual_tokens_kept", -3.0)],
)
def test_a_moved_deterministic_figure_fails(measured, tmp_path, figure, change):
    spec, figures = measured
    baseline = baseline_of(spec, figures, tmp_path)
    key = f"tiny-qwen2-vl|image224|{figure}"
    baseline["figures"][key] += change  # the tree now differs from the baseline by -change
    result = gate.compare(baseline, figures)
    assert [d.key for d in result.regressions] == [key]


def test_the_ratio_band(measured, tmp_path):
    spec, figures = measured
    key = "tiny-qwen2-vl|image224|ipcv|vision_time_ratio"
    tight = {"vision_time_ratio": {"kind": "ratio", "tolerance": 0.5, "worse": "higher"}, "prefill_time_ratio": WIDE["prefill_time_ratio"]}
    baseline = baseline_of(spec, figures, tmp_path, tight)
    baseline["figures"][key] = figures[key] / 2  # the method now looks twice as slow relative to baseline
    assert [d.key for d in gate.compare(baseline, figures).regressions] == [key]
    baseline["figures"][key] = figures[key] / 1.3  # inside the 50% band
    assert gate.compare(baseline, figures).regressions == []
    baseline["figures"][key] = figures[key] * 3  # faster than before: reported, not a failure
    assert gate.compare(baseline, figures).regressions == []


def test_cli_reports_other_versions_and_regressions(measured, tmp_path):
    spec, figures = measured
    profile = tmp_path / "gate.yaml"
    profile.write_text(yaml.safe_dump(PROFILE))
    baseline = baseline_of(spec, figures, tmp_path)
    baseline["versions"]["torch"] = "1.0.0"
    baseline["figures"]["tiny-qwen2-vl|image224|ipcv|vision_flops"] -= 1
    path = tmp_path / "baseline.json"
    path.write_text(json.dumps(baseline))
    runner = CliRunner()
    result = runner.invoke(app, ["check", str(profile), "--baseline", str(path)])
    assert result.exit_code == 1, result.output
    assert "baseline made with torch 1.0.0" in result.output
    assert "ipcv|vision_flops" in result.output and "REGRESSION" in result.output
    updated = runner.invoke(app, ["check", str(profile), "--baseline", str(path), "--update"])
    assert updated.exit_code == 0 and "baseline updated" in updated.output
    data = json.loads(path.read_text())
    assert data["versions"]["torch"] != "1.0.0" and data["tolerances"]["vision_time_ratio"]["tolerance"] == 100.0
    strict = runner.invoke(app, ["check", str(profile), "--baseline", str(path), "--strict-versions"])
    assert strict.exit_code == 0, strict.output  # same versions now
