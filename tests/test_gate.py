"""The efficiency gate: baselines that differ in known ways, a validated baseline document, the
cost decisions, and instruction counts that count."""

import copy
import json

import pytest
import yaml
from typer.testing import CliRunner

from pipeline import gate
from pipeline.cli import app
from pipeline.gate.decide import confirm, finish, judge
from pipeline.measure import instructions
from pipeline.measure.time_ratios import RatioEstimate, estimate
from pipeline.sweep.spec import parse_spec

PROFILE = {
    "name": "gate-test",
    "models": [{"name": "tiny-qwen2-vl", "dtype": "float32"}],
    "inputs": {"images": {"resolutions": [224]}},
    "methods": {"baseline": True, "ipcv": {"reduction_ratio": [0.65]}, "llm": {"method": ["dart"]}},
    "measurement": {"warmup": 0, "repeats": 1, "max_new_tokens": 2, "count_flops": False},
    "tracking": {"mode": "disabled"},
}
runner = CliRunner()


@pytest.fixture(scope="module")
def measured():
    spec = parse_spec(PROFILE)
    return spec, gate.measure(spec, "time")


def document_of(spec, figures, tmp_path, tolerances=None):
    path = tmp_path / "baseline.json"
    gate.write(path, spec.name, "time", figures, tolerances)
    return gate.load(path, spec), path


def test_unchanged_tree_passes(measured, tmp_path):
    spec, first = measured
    document, _ = document_of(spec, first.figures, tmp_path)
    again = gate.measure(spec, "time")
    result = gate.compare(document, again.figures, again.estimates)
    assert result.regressions == [] and result.version_notes == []
    assert "tiny-qwen2-vl|image224|ipcv|vision_flops" in first.figures
    assert set(first.figures) == gate.expected_figures(gate.gate_cells(spec), "time")
    low, high = first.estimates["tiny-qwen2-vl|image224|ipcv|vision_time_ratio"].low, \
        first.estimates["tiny-qwen2-vl|image224|ipcv|vision_time_ratio"].high
    assert low <= first.figures["tiny-qwen2-vl|image224|ipcv|vision_time_ratio"] <= high


def test_switching_pruning_off_fails_naming_the_figures(measured, tmp_path):
    spec, first = measured
    document, _ = document_of(spec, first.figures, tmp_path)
    off = copy.deepcopy(PROFILE)
    off["methods"]["ipcv"]["reduction_ratio"] = [0.0]
    result = gate.compare(document, gate.measure(parse_spec(off), "time").figures)
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
    spec, first = measured
    figures = dict(first.figures)
    key = f"tiny-qwen2-vl|image224|{figure}"
    figures[key] += change  # the tree now differs from the baseline by -change
    document, _ = document_of(spec, figures, tmp_path)
    assert [d.key for d in gate.compare(document, first.figures).regressions] == [key]


def test_the_instruction_band_and_stages_a_method_cannot_change():
    key = "m|image224|ipcv|vision_instructions_ratio"
    assert not judge(key, 0.90, 0.90 * 1.04, "work_ratio", 0.05, "higher").regression
    assert judge(key, 0.90, 0.90 * 1.06, "work_ratio", 0.05, "higher").regression
    assert judge(key, 0.90, 0.80, "work_ratio", 0.05, "higher").note == "better"
    # DART leaves the vision tower alone: its vision ratio is held to 1.0, not to the baseline's
    # value, so a slowdown committed into the baseline is still caught
    dart = "m|image224|dart|vision_instructions_ratio"
    assert judge(dart, 1.20, 1.20, "work_ratio", 0.05, "higher").regression
    assert not judge(dart, 1.00, 1.03, "work_ratio", 0.05, "higher").regression
    # IPCV hands the LLM every visual token: its prefill ratio is a "did not get slower" check
    assert judge("m|image224|ipcv|prefill_time_ratio", 1.5, 1.5, "time_ratio", 0.25, "higher",
                 RatioEstimate(1.5, 1.4, 1.6, 15)).note == "suspect"


def test_a_time_ratio_counts_only_when_its_interval_clears_the_band_every_time():
    base = {"format": 2, "profile": "p", "costs": "time", "versions": {}, "figures": {},
            "tolerances": gate.baseline.default_tolerances("time")}
    document = gate.BaselineDocument.model_validate(base)
    key = "m|image224|ipcv|vision_time_ratio"
    wide = judge(key, 0.8, 1.3, "time_ratio", 0.25, "higher", RatioEstimate(1.3, 0.9, 1.7, 15))
    assert wide.note == "" and not wide.regression  # the point is above the band, the interval is not
    narrow = judge(key, 0.8, 1.3, "time_ratio", 0.25, "higher", RatioEstimate(1.3, 1.2, 1.4, 15))
    assert narrow.note == "suspect" and not narrow.regression
    cleared = gate.GateResult(deltas=[narrow])
    confirm(cleared, {key: RatioEstimate(0.82, 0.78, 0.86, 15)}, document)
    finish(cleared)
    assert cleared.regressions == [] and cleared.remeasured == [key]
    confirmed = gate.GateResult(deltas=[judge(key, 0.8, 1.3, "time_ratio", 0.25, "higher", RatioEstimate(1.3, 1.2, 1.4, 15))])
    confirm(confirmed, {key: RatioEstimate(1.31, 1.21, 1.39, 15)}, document)
    finish(confirmed)
    assert [d.key for d in confirmed.regressions] == [key]


def test_the_bootstrap_interval_by_hand():
    same = estimate([1.1] * 9)
    assert (same.ratio, same.low, same.high) == (1.1, 1.1, 1.1)
    spread = estimate([0.9, 1.0, 1.1, 1.2, 1.3, 1.0, 1.1, 1.2, 1.1])
    assert spread.ratio == 1.1 and 0.9 <= spread.low <= 1.1 <= spread.high <= 1.3
    assert estimate([0.9, 1.0, 1.1, 1.2, 1.3, 1.0, 1.1, 1.2, 1.1]) == spread  # seeded: same samples, same interval


def _edit(path, change):
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d["figures"].pop(next(iter(d["figures"]))), "figure(s) of the profile missing"),
        (lambda d: d.update(figures={}), "figure(s) of the profile missing"),
        (lambda d: d["figures"].update({"tiny-qwen2-vl|image224|ipcv|vision_flopz": 1.0}),
         "figures.tiny-qwen2-vl|image224|ipcv|vision_flopz"),
        (lambda d: d["figures"].update({"tiny-qwen2-vl|image224|fastv|vision_flops": 1.0}), "the profile does not produce"),
        (lambda d: d["tolerances"]["vision_flops"].update(tolerance=1e12), "tolerances.vision_flops.tolerance: 1e+12 is above the bound 0"),
        (lambda d: d["tolerances"]["fidelity_first_token_kl"].update(tolerance=0.5), "above the bound 0.01"),
        (lambda d: d["tolerances"]["vision_flops"].update(kind="ratio"), "tolerances.vision_flops.kind"),
        (lambda d: d["tolerances"]["vision_flops"].update(kind="close"), "vision_flops is a exact figure, not close"),
        (lambda d: d["tolerances"].pop("kv_cache_bytes"), "tolerances: missing kv_cache_bytes"),
        (lambda d: d.update(profile="other"), "made for profile 'other', not 'gate-test'"),
        (lambda d: d.pop("figures"), "figures: Field required"),
        (lambda d: d["figures"].update({next(iter(d["figures"])): "1.0"}), "Input should be a valid"),
        (lambda d: d["figures"].update({next(iter(d["figures"])): True}), "Input should be a valid"),
    ],
)
def test_an_edited_baseline_is_refused_before_measuring(measured, tmp_path, change, message):
    spec, first = measured
    _, path = document_of(spec, first.figures, tmp_path)
    _edit(path, change)
    with pytest.raises(gate.BaselineError) as err:
        gate.load(path, spec)
    assert str(path) in str(err.value) and message in str(err.value), str(err.value)


def test_unreadable_baselines_name_the_file(tmp_path):
    spec = parse_spec(PROFILE)
    for text, message in [("{not json", "not valid JSON"), ("[1, 2]", "expected a JSON object"),
                          ('{"format": 1, "figures": {}}', "format 1 is not the gate's format 2")]:
        path = tmp_path / "b.json"
        path.write_text(text)
        with pytest.raises(gate.BaselineError, match=message) as err:
            gate.load(path, spec)
        assert str(path) in str(err.value)


def test_cli_refuses_a_bad_baseline_before_measuring_and_reports_regressions(measured, tmp_path):
    spec, first = measured
    profile = tmp_path / "gate.yaml"
    profile.write_text(yaml.safe_dump(PROFILE))
    _, path = document_of(spec, first.figures, tmp_path)
    _edit(path, lambda d: d["tolerances"]["vision_flops"].update(tolerance=1e12))
    result = runner.invoke(app, ["check", str(profile), "--baseline", str(path)])
    assert result.exit_code == 2 and "above the bound" in result.output and "measuring" not in result.output

    _, path = document_of(spec, first.figures, tmp_path)
    _edit(path, lambda d: (d["versions"].update(torch="1.0.0"),
                           d["figures"].update({"tiny-qwen2-vl|image224|ipcv|vision_flops":
                                                d["figures"]["tiny-qwen2-vl|image224|ipcv|vision_flops"] - 1})))
    result = runner.invoke(app, ["check", str(profile), "--baseline", str(path)])
    assert result.exit_code == 1, result.output
    assert "baseline made with torch 1.0.0" in result.output
    assert "ipcv|vision_flops" in result.output and "REGRESSION" in result.output
    # --update refuses figures made with other versions than the baseline's, unless forced
    refused = runner.invoke(app, ["check", str(profile), "--baseline", str(path), "--update"])
    assert refused.exit_code == 2 and "torch 1.0.0 ->" in refused.output and "--force" in refused.output
    _edit(path, lambda d: d["tolerances"]["vision_time_ratio"].update(tolerance=0.9))
    forced = runner.invoke(app, ["check", str(profile), "--baseline", str(path), "--update", "--force"])
    assert forced.exit_code == 0 and "baseline updated" in forced.output, forced.output
    data = json.loads(path.read_text())
    assert data["versions"]["torch"] != "1.0.0" and data["tolerances"]["vision_time_ratio"]["tolerance"] == 0.9
    strict = runner.invoke(app, ["check", str(profile), "--baseline", str(path), "--strict-versions"])
    assert strict.exit_code == 0, strict.output  # same versions now


@pytest.mark.skipif(instructions.available() is not None, reason=str(instructions.available()))
def test_instruction_counts_are_deterministic_and_count_work():
    job = instructions.Job(
        model={"name": "tiny-qwen2-vl", "dtype": "float32", "attn_implementation": "sdpa", "seed": 0},
        input={"resolution": 56, "images": 1, "video_frames": 0, "prompt": "Describe it."},
        measurements=[instructions.Measurement("once", "forward"), instructions.Measurement("twice", "forward", repeat=2),
                      instructions.Measurement("again", "forward"), instructions.Measurement("tower", "vision")])
    counts = instructions.count([job])
    assert counts["twice"] / counts["once"] == pytest.approx(2.0, rel=0.01)  # twice the work, twice the count
    assert counts["again"] / counts["once"] == pytest.approx(1.0, abs=0.01)
    assert 0 < counts["tower"] < counts["once"]  # the tower is part of the forward
