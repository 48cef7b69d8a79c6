"""The stage profiler on tiny models (CPU): timings, tokens, FLOPs routes, what is missing, errors."""

import json

import pytest
import torch
from typer.testing import CliRunner

import ipcv
from pipeline.cli import app
from pipeline.measure.stages import STAGES, MeasureSettings, StageError, measure_request
from pipeline.models import synthetic_spec
from pipeline.models.qwen_vl import image_processor, video_patches
from tests.conftest import tiny

FAST = MeasureSettings(warmup=1, repeats=2, max_new_tokens=3)


@pytest.mark.parametrize(
    "settings",
    [{}, {"vision": ipcv.IPCVConfig()}, {"vision": ipcv.IPCVConfig(), "llm": ipcv.LLMPruneConfig(method="dart")}],
)
def test_stages_are_measured_and_add_up(family, settings):
    model = tiny(family)
    report = measure_request(model, synthetic_spec(224, images=2), model_name=family, settings=FAST, **settings)
    times = {name: report.stages[name].time for name in STAGES}
    assert all(t is not None and t.median_ms > 0 and t.repeats == 2 for t in times.values())
    parts = sum(times[n].median_ms for n in ("preprocess", "vision", "prefill", "decode"))
    assert parts <= times["e2e"].median_ms * 1.05  # medians of parts of the same runs, timer noise
    assert report.decode_per_token is not None and report.decode_per_token.repeats == 2 * (FAST.max_new_tokens - 1)
    vision, prefill = report.stages["vision"], report.stages["prefill"]
    assert vision.tokens["patches_in"] == 2 * 16 * 16 and vision.tokens["to_merger"] == 512
    assert prefill.tokens["visual_tokens_in"] == 128
    if "vision" in settings:
        assert vision.tokens["kept_after_prune_layer"] == 512 * 35 // 100
        assert set(report.ipcv_overhead_ms) == {"selection", "neighbors", "restoration"}
    if "llm" in settings:
        assert prefill.tokens["visual_tokens_kept"] < 128
    for stage in (vision, prefill):
        assert stage.flops["fvcore"] == pytest.approx(stage.flops["analytic"], rel=0.01)
    # CPU: memory is reported as not measured, never as 0
    assert all(report.stages[n].peak_memory_bytes is None for n in STAGES)
    assert any("peak memory" in line for line in report.not_measured)
    assert report.kv_cache_bytes > 0
    assert json.loads(report.to_json())["provenance"]["attn_implementation"] == "sdpa"


def test_video_request_and_patch_layout():
    spec = synthetic_spec(112, video_frames=4)
    pixels, grid = video_patches(spec.video_frames, 112)
    assert grid.tolist() == [[2, 8, 8]] and pixels.shape == (2 * 64, 1176)
    # a frame paired with itself is exactly what the image processor makes of one image
    same, _ = video_patches([spec.video_frames[0]] * 2, 112)
    reference = image_processor(112)(images=[spec.video_frames[0]], return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(same, reference)
    report = measure_request(tiny("tiny-qwen2.5-vl"), spec, model_name="tiny", vision=ipcv.IPCVConfig(budget="per_image"), settings=FAST)
    assert report.stages["vision"].tokens["patches_in"] == 128
    assert report.stages["vision"].tokens["kept_after_prune_layer"] == 2 * (64 * 35 // 100)


def test_out_of_memory_names_the_stage_and_shapes(monkeypatch):
    model = tiny("tiny-qwen2-vl")

    def no_memory(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(model.model.visual, "forward", no_memory)
    with pytest.raises(StageError) as err:
        measure_request(model, synthetic_spec(224), model_name="tiny", settings=FAST)
    message = str(err.value)
    assert "stage 'prefill'" in message and "pixel_values (256, 1176)" in message and "20.00 GiB" in message


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="repeats >= 1"):
        MeasureSettings(repeats=0)
    with pytest.raises(ValueError, match="even number"):
        synthetic_spec(224, video_frames=3)


runner = CliRunner()


def test_cli_profile_defaults_run_and_write_json(tmp_path):
    out = tmp_path / "profile.json"
    result = runner.invoke(app, ["profile", "--repeats", "1", "--max-new-tokens", "2", "--json", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert set(data["stages"]) == set(STAGES)
    assert data["vision"]["prune_layer"] == 3 and data["llm"] is None
    assert "not measured" in result.output


def test_cli_profile_bad_arguments():
    for args, message in [
        (["profile", "--llm-method", "sparsevlm"], "--llm-method"),
        (["profile", "--llm-method", "dart", "--llm-ratio", "1.2"], "LLMPruneConfig.reduction_ratio"),
        (["profile", "--video-frames", "3"], "even number"),
        (["profile", "--image", "/nonexistent.png"], "not found"),
        (["profile", "--resolution", "30"], "multiple of 28"),
        (["profile", "--prune-layer", "1"], "IPCVConfig.prune_layer"),
    ]:
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output, (args, result.output)
