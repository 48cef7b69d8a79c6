"""A sweep submitted as a Ray job to a local head (`ray start --head` on 127.0.0.1) completes.

In its own module so that no simulated cluster of another test module is alive meanwhile.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import ray

from pipeline.sweep.grid import expand
from pipeline.sweep.spec import load_spec
from tests.ray_heads import local_head

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.ray


@pytest.mark.slow
def test_jobs_submitted_to_a_local_head_complete_from_any_directory(tmp_path):
    """`ray job submit` of the launch script, and `ipcv-study submit` (this checkout's code as the
    job's working directory), both run from another directory with a bare profile name and an
    absolute --out: the results are there when the jobs end."""
    if ray.is_initialized():
        ray.shutdown()
    # one machine, loopback only: no cluster address resolution and no token auth between our own processes
    env = {**os.environ, "RAY_ADDRESS": "", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled",
           "WANDB_MODE": "disabled"}
    env.pop("IPCV_KERNELS", None)
    # the head's workers and a job's `python` entrypoint are this interpreter's, activated or not
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    cells = len(expand(load_spec(ROOT / "profiles" / "tiny-test.yaml")))
    with local_head(env, 6391, dashboard_port=8291) as ray_bin:
        out = tmp_path / "job"
        job = subprocess.run(
            [ray_bin, "job", "submit", "--address", "http://127.0.0.1:8291", "--",
             sys.executable, str(ROOT / "scripts" / "launch_sweep.py"), "tiny-test", "--out", str(out),
             "--node-ip-address", "127.0.0.1"],
            env=env, cwd=elsewhere, capture_output=True, text=True, timeout=600,
        )
        assert job.returncode == 0, (job.stdout + job.stderr)[-1500:]
        assert "succeeded" in (job.stdout + job.stderr).lower()
        table = pd.read_parquet(out / "results.parquet")
        assert len(table) == cells and (table.status == "ok").all() and set(table.ipcv_kernels) == {"none"}

        submitted = tmp_path / "submitted"
        ipcv_study = str(Path(sys.executable).parent / "ipcv-study")
        job = subprocess.run([ipcv_study, "submit", "tiny-test", "--address", "http://127.0.0.1:8291",
                              "--out", str(submitted), "--wandb-mode", "disabled"],
                             env={**env, "IPCV_KERNELS": "padded_product"}, cwd=elsewhere, capture_output=True,
                             text=True, timeout=600)
        assert job.returncode == 0, (job.stdout + job.stderr)[-2000:]
        assert "SUCCEEDED" in job.stdout and f"results: {submitted}" in job.stdout
        assert "6 ok, 0 failed" in job.stdout  # the job's own log, streamed
        table = pd.read_parquet(submitted / "results.parquet")
        assert len(table) == cells and (table.status == "ok").all()
        # the submitter's IPCV kernel choice reached the workers (the head was started without it)
        assert set(table.ipcv_kernels) == {"padded_product"}


def test_cli_run_prints_a_summary_and_resumes(tmp_path):
    """The main job's command: a local Ray on 127.0.0.1, a summary table, the results path; a
    second run skips every finished cell."""
    from typer.testing import CliRunner

    from pipeline.cli import app

    if ray.is_initialized():
        ray.shutdown()
    runner = CliRunner()
    args = ["run", str(ROOT / "profiles" / "tiny-test.yaml"), "--out", str(tmp_path), "--wandb-mode", "disabled"]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    assert "6 ok, 0 failed, 0 already done (of 6)" in first.output
    assert f"results: {tmp_path / 'results.parquet'}" in first.output
    assert "Sweep summary" in first.output
    second = runner.invoke(app, args)
    assert second.exit_code == 0 and "0 ok, 0 failed, 6 already done (of 6)" in second.output
    bad = runner.invoke(app, ["run", str(tmp_path / "missing.yaml")])
    assert bad.exit_code == 2 and "no such profile file" in bad.output


@pytest.mark.slow
def test_a_local_sweep_listens_on_the_loopback_address_only(tmp_path):
    """README's main command, without the tests' Ray settings: every socket the sweep's Ray opens
    for listening is on 127.0.0.1."""
    script = tmp_path / "probe.py"
    script.write_text(f"""
import json, psutil
from pipeline.sweep.driver import run_sweep
from pipeline.sweep.spec import load_spec
def listening():  # sockets of this process and its descendants (the machine may run other Rays)
    me = psutil.Process()
    ours = {{me.pid, *(p.pid for p in me.children(recursive=True))}}
    return {{(c.laddr.ip, c.laddr.port) for c in psutil.net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN and c.pid in ours}}
before = listening()
seen = set()
run_sweep(load_spec({str(ROOT / "profiles" / "tiny-test.yaml")!r}), {str(tmp_path / "out")!r}, progress=False,
          on_row=lambda row: seen.update(listening() - before))
print(json.dumps(sorted(seen)))
""")
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "RAY_ADDRESS")}
    env["WANDB_MODE"] = "disabled"
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    opened = json.loads(done.stdout.strip().splitlines()[-1])
    assert opened, "the probe saw no listening socket of the sweep's Ray"
    assert all(ip in ("127.0.0.1", "::ffff:127.0.0.1", "::1") for ip, _ in opened), opened
