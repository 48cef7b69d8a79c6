"""A sweep on an autoscaling cluster that starts with no GPU node: it asks for GPUs, waits, runs
on the nodes that come, and withdraws its request so they scale down (Ray's fake multi-node
provider: real raylets on this machine, started by the autoscaler)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pandas as pd
import pytest
import ray
import yaml

from pipeline.sweep.driver import run_sweep
from pipeline.sweep.grid import expand
from pipeline.sweep.spec import parse_spec
from tests.ray_heads import fake_autoscaling_config, local_head

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.ray, pytest.mark.slow]
PORT = 6393


def gpu_nodes() -> int:
    return sum(1 for n in ray.nodes() if n["Alive"] and n["Resources"].get("GPU", 0) > 0)


def test_a_sweep_asks_an_autoscaling_cluster_for_gpus_and_gives_them_back(tmp_path):
    if ray.is_initialized():
        ray.shutdown()
    env = {**os.environ, "RAY_ADDRESS": "", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled",
           "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1"}
    config = fake_autoscaling_config(tmp_path / "autoscaler.json", PORT, gpu_nodes=2, gpus_per_node=2)
    data = yaml.safe_load((ROOT / "profiles" / "tiny-test.yaml").read_text())
    data["models"] = [{**m, "gpus": 1} for m in data["models"]]
    data["tracking"] = {"mode": "disabled"}
    data["cluster"] = {"request_gpus": 2, "wait_s": 300}
    spec = parse_spec(data)
    with local_head(env, PORT, extra=[f"--autoscaling-config={config}", "--num-gpus=0"]):
        ray.init(address=f"127.0.0.1:{PORT}", _node_ip_address="127.0.0.1", log_to_driver=False)
        try:
            assert ray.cluster_resources().get("GPU", 0) == 0  # no GPU node at the start
            summary = run_sweep(spec, tmp_path / "out", progress=False)
            table = pd.read_parquet(summary.results)
            assert len(table) == len(expand(spec)) == table.cell_id.nunique() and (table.status == "ok").all()
            head = next(n["NodeID"] for n in ray.nodes() if n["Resources"].get("GPU", 0) == 0 and n["Alive"])
            assert head not in set(table.node_id)  # every cell ran on a GPU node the autoscaler started
            deadline = time.time() + 120  # the request is withdrawn: idle GPU nodes go away
            while gpu_nodes() and time.time() < deadline:
                time.sleep(2)
            assert gpu_nodes() == 0
        finally:
            ray.shutdown()
