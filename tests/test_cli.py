import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipeline.cli import app

runner = CliRunner()


def test_demo_reports_kept_tokens_flops_and_fidelity(tmp_path):
    out = tmp_path / "demo.json"
    result = runner.invoke(app, ["demo", "--resolution", "224", "--images", "2", "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "FLOPs" in result.output and "cosine" in result.output
    data = json.loads(out.read_text())
    assert data["tokens_in"] == [256, 256]
    assert sum(data["tokens_kept"]) == 512 * 35 // 100
    assert data["tokens_to_merger"] == [256, 256]
    assert data["flops_ipcv"]["total"] < data["flops_baseline"]["total"]
    assert 0 < data["cosine_mean"] <= 1.0001


def test_demo_per_image_on_qwen25():
    result = runner.invoke(app, ["demo", "--model", "tiny-qwen2.5-vl", "--resolution", "224", "--budget", "per_image"])
    assert result.exit_code == 0, result.output
    assert "89" in result.output  # floor(256 * 0.35) kept in each image


def test_bad_arguments_give_clear_messages():
    cases = [
        (["demo", "--reduction-ratio", "1.5"], "IPCVConfig.reduction_ratio"),
        (["demo", "--budget", "per_frame"], "'per_frame' is not one of"),  # the choices are in --help too
        (["demo", "--resolution", "100"], "multiple of 28"),
        (["demo", "--dtype", "float8"], "'float8' is not one of"),
        (["demo", "--device", "tpu"], "device must be"),
        (["demo", "--model", "/nonexistent/model"], "could not load model"),
    ]
    for args, message in cases:
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output, (args, result.output)


def test_synthesize_and_evaluate_score_a_benchmark(tmp_path):
    result = runner.invoke(app, ["synthesize", str(tmp_path / "data"), "--samples", "3", "--task", "pope"])
    assert result.exit_code == 0, result.output
    answers = tmp_path / "answers.jsonl"
    result = runner.invoke(app, ["evaluate", "pope", "--data", str(tmp_path / "data" / "pope" / "pope.parquet"),
                                 "--resolution", "112", "--reduction-ratio", "0", "--max-new-tokens", "3",
                                 "--out", str(answers)])
    assert result.exit_code == 0, result.output
    assert "acc_pope_f1" in result.output and "chance-level" in result.output
    records = [json.loads(line) for line in answers.read_text().splitlines()]
    assert [r["run"] for r in records] == ["uncompressed"] * 3 + ["compressed"] * 3
    # ratio 0 is the unpatched model: the same answers, so fidelity is perfect
    assert [r["answer"] for r in records[:3]] == [r["answer"] for r in records[3:]]
    assert re.search(r"fidelity_pope_answer_match\s*│\s*-\s*│\s*1\s*│", result.output)


def test_evaluate_bad_data_gives_the_row(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q?", "image": "x.png", "answers": ["a"]}\n{"question": "q?", "image": "x.png"}\n')
    result = runner.invoke(app, ["evaluate", "textvqa", "--data", str(bad)])
    assert result.exit_code == 2 and "row 2: field 'answers' is missing" in result.output
    result = runner.invoke(app, ["evaluate", "vqav9"])
    assert result.exit_code == 2 and "'vqav9' is not one of" in result.output
    result = runner.invoke(app, ["synthesize", str(tmp_path), "--task", "nope"])
    assert result.exit_code == 2 and "unknown task(s) nope" in result.output


def test_run_with_the_local_executor_needs_no_ray(tmp_path):
    import ray

    profile = str(Path(__file__).resolve().parents[1] / "profiles" / "tiny-test.yaml")
    args = ["run", profile, "--out", str(tmp_path), "--wandb-mode", "disabled", "--executor", "local"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "6 ok, 0 failed, 0 already done (of 6)" in result.output and not ray.is_initialized()
    # every row says how it was timed (the profile's warmup: 0, repeats: 1) and by which code
    import pandas as pd

    from pipeline.provenance import cpu_model, git_commit

    rows = pd.read_parquet(tmp_path / "results.parquet")
    assert set(rows.warmup) == {0} and set(rows.repeats) == {1}
    assert set(rows.git_commit.fillna("none")) == {git_commit() or "none"}
    assert set(rows.device) == {cpu_model() or rows.device.iloc[0]}
    assert "Sweep summary, one row per setting" in result.output and "ipcv K=3 r=0.5" in result.output
    again = runner.invoke(app, args)
    assert "0 ok, 0 failed, 6 already done (of 6)" in again.output
    for bad, message in ((["--executor", "dask"], "'dask' is not one of"),
                         (["--executor", "local", "--address", "auto"], "--address needs --executor ray")):
        result = runner.invoke(app, ["run", profile, *bad])
        assert result.exit_code == 2 and message in result.output, result.output


def test_run_exits_1_when_a_cell_fails(tmp_path):
    import yaml

    profile = tmp_path / "p.yaml"
    profile.write_text(yaml.safe_dump({
        "name": "fails", "models": [{"name": str(tmp_path / "no-such-checkpoint"), "dtype": "float32"}],
        "inputs": {"images": {"resolutions": [56]}}, "methods": {"baseline": True},
        "measurement": {"warmup": 0, "repeats": 1, "max_new_tokens": 1, "count_flops": False},
        "tracking": {"mode": "disabled"}}))
    result = runner.invoke(app, ["run", str(profile), "--out", str(tmp_path / "out"), "--executor", "local"])
    assert result.exit_code == 1, result.output
    assert "0 ok, 1 failed" in result.output and "model load failed" in result.output


def test_bad_outputs_and_inputs_end_with_a_message_before_any_work(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    result = runner.invoke(app, ["profile", "--json", str(blocker / "profile.json")])
    assert result.exit_code == 2 and "is not a writable folder" in result.output
    not_image = tmp_path / "notes.png"
    not_image.write_text("not pixels")
    result = runner.invoke(app, ["profile", "--image", str(not_image)])
    assert result.exit_code == 2 and "not an image PIL can read" in result.output
    result = runner.invoke(app, ["demo", "--model", str(tmp_path / "no[data]")])  # brackets are not markup
    assert result.exit_code == 2 and "no[data]" in result.output


def test_an_unexpected_error_is_one_message_unless_debug(monkeypatch, capsys):
    import sys

    from pipeline import cli

    def broken():
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(cli, "app", broken)
    monkeypatch.setattr(sys, "argv", ["ipcv-study", "run", "x.yaml"])
    with pytest.raises(SystemExit) as exit_info:
        cli.entry()
    assert exit_info.value.code == 1
    assert "RuntimeError: disk on fire" in capsys.readouterr().out
    monkeypatch.setattr(sys, "argv", ["ipcv-study", "--debug", "run", "x.yaml"])
    with pytest.raises(RuntimeError, match="disk on fire"):
        cli.entry()


def test_submit_refuses_what_would_fail_on_the_cluster(tmp_path):
    base = ["submit", "tiny-test", "--address", "http://127.0.0.1:9"]
    result = runner.invoke(app, [*base, "--out", "results/x"])
    assert result.exit_code == 2 and "absolute path on the cluster or an object-storage URI" in result.output
    outside = tmp_path / "p.yaml"
    outside.write_text((Path(__file__).resolve().parents[1] / "profiles" / "tiny-test.yaml").read_text())
    result = runner.invoke(app, ["submit", str(outside), "--address", "http://127.0.0.1:9", "--out", "/tmp/x"])
    assert result.exit_code == 2 and "must be inside the checkout" in result.output
    result = runner.invoke(app, [*base, "--out", "/tmp/x"])  # nothing listens there
    assert result.exit_code == 2 and "no Ray job server answers" in result.output, result.output


def test_dry_run_lists_the_cells_writes_nothing_and_warns_about_a_real_model_on_cpu(tmp_path):
    import yaml

    from pipeline.sweep.grid import expand
    from pipeline.sweep.spec import load_spec

    profile = yaml.safe_load(Path("profiles/gpu-quick.yaml").read_text())
    profile["models"][1]["gpus"] = 0  # the Qwen2.5-VL-7B architecture left on the CPU
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(profile))
    out = tmp_path / "out"
    result = runner.invoke(app, ["run", str(path), "--out", str(out), "--dry-run"])
    assert result.exit_code == 0, result.output
    cells = expand(load_spec(path))
    assert f"{len(cells)} cells (dry run" in result.output
    assert all(cell.id in result.output for cell in cells) and not out.exists()
    assert "Qwen/Qwen2.5-VL-7B-Instruct runs on the CPU" in result.output
    assert "Qwen/Qwen2-VL-7B-Instruct runs on the CPU" not in result.output


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and re.fullmatch(r"ipcv-study \S+.*\n", result.output)
