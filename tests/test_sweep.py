"""The sweep: profiles, grid, Ray workers on a simulated multi-node cluster, resume, W&B offline."""

from __future__ import annotations

import json
import os
import socket
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest
import ray
import yaml

from pipeline.sweep.driver import run_sweep
from pipeline.sweep.grid import expand
from pipeline.sweep.resources import plan_workers
from pipeline.sweep.spec import ModelSpec, ProfileError, load_spec, parse_spec
from tests.wandb_offline import read_runs

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.ray
DETERMINISTIC = ["vision_flops", "prefill_flops", "vision_tokens_kept", "llm_visual_tokens_kept",
                 "fidelity_answer_match", "fidelity_first_token_kl", "kv_cache_bytes"]


def tiny_profile(**overrides) -> dict:
    data = yaml.safe_load((ROOT / "profiles" / "tiny-test.yaml").read_text())
    data.update(overrides)
    return data


def test_ray_cluster_yaml_validates_against_rays_schema():
    import jsonschema

    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    jsonschema.validate(yaml.safe_load((ROOT / "ray_cluster.yaml").read_text()), schema)


def test_shipped_profiles_load_and_expand():
    for path in sorted((ROOT / "profiles").glob("*.yaml")):
        spec = load_spec(path)
        cells = expand(spec)
        assert len({c.id for c in cells}) == len(cells) > 0, path
    smoke = expand(load_spec(ROOT / "profiles" / "smoke.yaml"))
    assert {"baseline", "ipcv", "random", "dart", "fastv", "ipcv+dart", "ipcv+fastv", "downsample"} <= {c.method for c in smoke}


def test_bad_profiles_name_file_key_and_expectation(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({
        "name": "x",
        "models": [{"name": "tiny-qwen2-vl", "dtype": "fp8"}],
        "inputs": {"images": {"resolutions": [100]}},
        "methods": {"ipcv": {"reduction_ratio": [0.5, "much"]}},
        "surprise": 1,
    }))
    with pytest.raises(ProfileError) as err:
        load_spec(bad)
    message = str(err.value)
    assert str(bad) in message
    assert "models.0.dtype" in message and "'float32', 'bfloat16' or 'float16'" in message
    assert "inputs.images.resolutions" in message and "multiple of 28" in message
    assert "methods.ipcv.reduction_ratio.1" in message
    assert "surprise" in message and "not permitted" in message
    with pytest.raises(ProfileError, match="methods.ipcv: IPCVConfig.reduction_ratio must be a number in \\[0, 1\\), got 1.5"):
        expand(parse_spec(tiny_profile(methods={"ipcv": {"reduction_ratio": [1.5]}})))
    with pytest.raises(ProfileError, match="no such profile file"):
        load_spec(tmp_path / "missing.yaml")
    (tmp_path / "broken.yaml").write_text("name: [unclosed")
    with pytest.raises(ProfileError, match="not valid YAML"):
        load_spec(tmp_path / "broken.yaml")


def test_cell_ids_are_stable_and_follow_the_config():
    a = [c.id for c in expand(parse_spec(tiny_profile()))]
    b = [c.id for c in expand(parse_spec(tiny_profile()))]
    changed = tiny_profile()
    changed["measurement"]["max_new_tokens"] = 3
    c = [c.id for c in expand(parse_spec(changed))]
    assert a == b and not set(a) & set(c)


def test_a_setting_added_later_keeps_the_ids_of_cells_at_its_default():
    """``as_queries`` came after outputs existed: at its default a cell keeps the id it had
    without the field (its folder resumes), set to "kept" it is another cell."""
    from dataclasses import replace

    cells = [c for c in expand(parse_spec(tiny_profile())) if c.vision]
    assert cells and all(c.vision["as_queries"] == "all" for c in cells)
    for cell in cells:
        before = replace(cell, vision={k: v for k, v in cell.vision.items() if k != "as_queries"})
        assert cell.id == before.id
        assert replace(cell, vision={**cell.vision, "as_queries": "kept"}).id != cell.id


def test_worker_plan_shares_gpus_and_keeps_a_cpu_for_the_driver():
    # a worker of 2 GPUs (a sharded model) is refused by profiles until sharding exists; the plan
    # already shares the GPUs for it
    models = {"a": ModelSpec(name="a", gpus=1), "b": ModelSpec.model_construct(name="b", gpus=2), "c": ModelSpec(name="c")}
    plan = plan_workers(models, {"a": 30, "b": 10, "c": 5}, {"GPU": 8, "CPU": 4})
    assert plan == {"a": 6, "b": 1, "c": 3}
    with pytest.raises(RuntimeError, match="needs 2"):
        plan_workers(models, {"a": 1, "b": 1, "c": 1}, {"GPU": 1, "CPU": 4})


@pytest.fixture(scope="module")
def cluster():
    """Three simulated nodes on 127.0.0.1: a head without GPUs, two workers with 2 fake GPUs each."""
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 0, "node_ip_address": "127.0.0.1"})
    for _ in range(2):
        c.add_node(num_cpus=2, num_gpus=2, node_ip_address="127.0.0.1")
    ray.init(address=c.address, _node_ip_address="127.0.0.1", log_to_driver=False)
    yield c
    ray.shutdown()
    c.shutdown()


def gpu_profile(**overrides) -> dict:
    data = tiny_profile(models=[{"name": "tiny-qwen2-vl", "dtype": "float32", "gpus": 1},
                               {"name": "tiny-qwen2.5-vl", "dtype": "float32", "gpus": 1}],
                        inputs={"images": {"resolutions": [56, 112]}})
    data.update(overrides)
    return data


def test_sweep_on_a_multi_node_cluster(cluster, tmp_path):
    spec = parse_spec(gpu_profile())
    summary = run_sweep(spec, tmp_path, progress=False)
    table = pd.read_parquet(summary.results)
    cells = expand(spec)
    assert sorted(table.cell_id) == sorted(c.id for c in cells)  # exactly one row per cell
    assert (table.status == "ok").all(), table[table.status != "ok"][["method", "error"]]
    assert table.groupby("worker_id").model.nunique().max() == 1  # one model per worker
    assert (table.worker_loads == 1).all()  # each worker loaded its model once
    assert table.node_id.nunique() == 2  # cells spread over both GPU nodes
    # W&B offline runs hold one run per cell with its config and summary (read back from the files)
    runs = {r["config"]["cell_id"]: r for r in read_runs(tmp_path / "wandb")}
    assert set(runs) == set(table.cell_id)
    for _, row in table.iterrows():
        run = runs[row.cell_id]
        assert run["group"] == "tiny-test"
        assert run["config"]["method"] == row.method
        assert run["summary"]["vision_flops"] == row.vision_flops
        assert run["summary"]["status"] == "ok"


def test_a_killed_worker_loses_no_cell_and_duplicates_none(cluster, tmp_path):
    spec = parse_spec(gpu_profile())
    killed = []

    def kill_once(row):
        if not killed:
            killed.append(row["cell_id"])
            ray.kill(row["_actor"], no_restart=False)  # it has its next cell in flight

    summary = run_sweep(spec, tmp_path, progress=False, on_row=kill_once)
    table = pd.read_parquet(summary.results)
    assert killed and len(table) == len(expand(spec)) == table.cell_id.nunique()
    assert (table.status == "ok").all()
    # the cell in flight on the killed worker ran again on its restarted process (a new worker id)
    assert table.worker_id.nunique() == 4 + 1


def test_the_local_executor_writes_the_rows_ray_writes(cluster, tmp_path):
    spec = parse_spec(gpu_profile(tracking={"mode": "disabled"}))
    on_ray = pd.read_parquet(run_sweep(spec, tmp_path / "ray", progress=False).results)
    local = run_sweep(spec, tmp_path / "local", progress=False, executor="local")
    table = pd.read_parquet(local.results)
    assert local.ok == len(expand(spec))
    # every cell ran in this process (no actor), each model loaded once
    assert set(table.worker_id) == {f"{socket.gethostname()}:{os.getpid()}"} and (table.worker_loads == 1).all()
    a = on_ray.set_index("cell_id").sort_index()
    b = table.set_index("cell_id").sort_index()
    exact = [c for c in DETERMINISTIC if c != "fidelity_first_token_kl"] + ["setting", "input"]
    pd.testing.assert_frame_equal(a[exact], b[exact], check_exact=True)
    # a Ray actor's torch runs on the threads its CPUs give it, this process on every core: float
    # reductions in another order move the KL in its fifth digit, nothing more
    pd.testing.assert_series_equal(a.fidelity_first_token_kl, b.fidelity_first_token_kl, rtol=1e-3, atol=1e-9)


def test_a_worker_killed_while_computing_a_reference_loses_nothing(cluster, tmp_path):
    """The reference dies with its worker: the driver computes it again on the restarted worker
    instead of handing the dead object to cell after cell (which stalled for minutes)."""
    spec = parse_spec(gpu_profile(tracking={"mode": "disabled"}))
    killed = []

    def kill_once(actor):
        if not killed:
            killed.append(actor)
            ray.kill(actor, no_restart=False)  # the reference just submitted to it dies with it

    started = time.time()
    summary = run_sweep(spec, tmp_path, progress=False, on_reference=kill_once)
    table = pd.read_parquet(summary.results)
    assert killed and len(table) == len(expand(spec)) == table.cell_id.nunique()
    assert (table.status == "ok").all(), table[table.status != "ok"][["method", "error"]]
    assert time.time() - started < 240  # nothing waited out a timeout


def test_interrupted_sweep_resumes_to_the_same_table(cluster, tmp_path):
    spec = parse_spec(gpu_profile(tracking={"mode": "disabled"}))
    full = pd.read_parquet(run_sweep(spec, tmp_path / "full", progress=False).results)
    partial = run_sweep(spec, tmp_path / "resumed", progress=False, stop_after=3)
    assert partial.ok == 3
    resumed = run_sweep(spec, tmp_path / "resumed", progress=False)
    assert resumed.skipped == 3
    table = pd.read_parquet(resumed.results)
    a = full.set_index("cell_id").sort_index()[DETERMINISTIC]
    b = table.set_index("cell_id").sort_index()[DETERMINISTIC]
    pd.testing.assert_frame_equal(a, b)


def test_a_failing_cell_is_recorded_and_the_rest_finish(cluster, tmp_path):
    data = gpu_profile(tracking={"mode": "disabled"})
    data["models"].append({"name": str(tmp_path / "no-such-checkpoint"), "dtype": "float32", "gpus": 1})
    summary = run_sweep(parse_spec(data), tmp_path / "out", progress=False)
    table = pd.read_parquet(summary.results)
    bad = table[table.model.str.endswith("no-such-checkpoint")]
    assert len(bad) > 0 and (bad.status == "failed").all()
    assert bad.error.str.contains("model load failed").all()
    assert (table[~table.model.str.endswith("no-such-checkpoint")].status == "ok").all()
    # a rerun retries the failed cells and skips the finished ones
    again = run_sweep(parse_spec(data), tmp_path / "out", progress=False)
    assert again.skipped == (table.status == "ok").sum() and again.failed == len(bad)


def test_a_wandb_failure_keeps_local_results(tmp_path, cluster):
    (tmp_path / "wandb").write_text("a file where W&B wants a folder")
    summary = run_sweep(parse_spec(gpu_profile(inputs={"images": {"resolutions": [56]}})), tmp_path, progress=False)
    assert summary.wandb_failures == summary.total and summary.ok == summary.total
    assert len(pd.read_parquet(summary.results)) == summary.total


def test_downsampling_cells_share_the_full_resolution_reference():
    data = tiny_profile(inputs={"images": {"resolutions": [112, 224]}},
                        methods={"baseline": True, "downsample": {"resolutions": [112]}})
    cells = expand(parse_spec(data))
    down = [c for c in cells if c.method == "downsample"]
    base = {c.input.resolution: c for c in cells if c.method == "baseline" and c.model == down[0].model}
    assert down and all(c.input.resolution == 112 and c.reference_input.resolution == 224 for c in down)
    assert down[0].reference_key == base[224].reference_key != base[112].reference_key


def test_benchmark_accuracy_and_report_on_a_sweep(cluster, tmp_path):
    evaluation = {"tasks": [{"task": "pope", "limit": 4}, {"task": "mvbench", "limit": 2, "frames": 4}],
                  "max_new_tokens": 3}
    spec = parse_spec(gpu_profile(inputs={"images": {"resolutions": [56]}}, evaluation=evaluation,
                                  methods={"baseline": True, "ipcv": {"reduction_ratio": [0.5]}, "llm": {"method": ["fastv"]},
                                           "downsample": {"resolutions": [28]}}))
    rendered_before = set(Path(tempfile.gettempdir()).glob("ipcv-synthetic-*"))
    summary = run_sweep(spec, tmp_path, progress=False)
    # the workers rendered the synthetic benchmark into temporary folders and removed them
    assert set(Path(tempfile.gettempdir()).glob("ipcv-synthetic-*")) <= rendered_before
    table = pd.read_parquet(summary.results)
    assert (table.status == "ok").all(), table.error.tolist()
    assert (table.acc_pope_samples == 4).all() and (table.acc_mvbench_samples == 2).all()
    assert table.accuracy.between(0, 1).all()
    assert table.accuracy.tolist() == ((table.acc_pope + table.acc_mvbench) / 2).tolist()
    base = table[table.method == "baseline"]
    assert (base.fidelity_pope_answer_match == 1).all() and (base.fidelity_mvbench_top1_agreement == 1).all()
    assert (table.weights == "random (tiny preset)").all()
    # every answer is kept beside its row, and its score agrees with the row's accuracy
    answers = pd.read_parquet(next((tmp_path / "predictions").glob("*.parquet")))
    assert len(list((tmp_path / "predictions").glob("*.parquet"))) == len(table)
    assert sorted(answers.task.unique()) == ["mvbench", "pope"] and len(answers) == 6
    row = table.set_index("cell_id").loc[answers.cell_id.iloc[0]]
    assert answers[answers.task == "pope"].score.mean() == row.acc_pope
    assert answers[answers.task == "mvbench"].score.mean() == row.acc_mvbench

    # the Pareto report of this sweep: every file, fidelity as the quality of random weights
    from pipeline.report import build_report

    report = build_report(tmp_path)
    assert report.quality.column == "fidelity_benchmark_answer_match"
    written = {p.name for p in report.files}
    assert {"report.md", "report.html", "frontier.csv", "speedup.csv", "stages.csv", "stages.png",
            "quality_vs_ratio.png", "frontier_e2e_ms.png", "frontier_total_flops.png", "wandb_report.json"} <= written
    assert all(p.stat().st_size > 0 for p in report.files)
    speedup = pd.read_csv(tmp_path / "report" / "speedup.csv")
    assert set(speedup.method) == {"ipcv", "fastv", "downsample"} and len(speedup) == 2 * 3  # per model
    runs = read_runs(tmp_path / "wandb")
    assert sum(r["config"].get("kind") == "report" for r in runs) == 1  # the summary run, beside the cell runs


def test_a_wrong_benchmark_path_stops_the_sweep_before_it_starts(tmp_path):
    spec = parse_spec(tiny_profile(evaluation={"tasks": [{"task": "textvqa", "source": str(tmp_path / "nope.jsonl")}]}))
    from pipeline.evaluation import DataError

    with pytest.raises(DataError, match="nope.jsonl: no such file"):
        run_sweep(spec, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()  # nothing written, no worker started
