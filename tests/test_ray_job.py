"""A sweep submitted as a Ray job to a local head (`ray start --head` on 127.0.0.1) completes.

In its own module so that no simulated cluster of another test module is alive meanwhile.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
import ray

from pipeline.sweep.grid import expand
from pipeline.sweep.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.ray


@contextlib.contextmanager
def local_head(env: dict, port: int, dashboard_port: int):
    """A Ray head on 127.0.0.1 that this test alone owns: ``ray start --block`` in a process
    group of its own, with a temporary directory of its own, stopped by signalling that group
    (never ``ray stop``, which would stop every Ray on the machine)."""
    temp = tempfile.mkdtemp(prefix="ray-t")  # short: Ray's socket paths live under it
    ray_bin = str(Path(sys.executable).parent / "ray")
    head = subprocess.Popen(
        [ray_bin, "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}", "--num-cpus=2", "--include-dashboard=true",
         "--disable-usage-stats", f"--temp-dir={temp}"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 120
        while True:  # up when its dashboard answers
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{dashboard_port}/api/version", timeout=2)
                break
            except OSError:
                if head.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"the test's Ray head did not start (exit {head.poll()})") from None
                time.sleep(1)
        yield ray_bin
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
        time.sleep(2)  # its children leave with the group; anything left is still ours to stop
        with contextlib.suppress(ProcessLookupError):
            os.killpg(head.pid, signal.SIGKILL)
        shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.slow
def test_job_submitted_to_a_local_head_completes(tmp_path):
    if ray.is_initialized():
        ray.shutdown()
    # one machine, loopback only: no cluster address resolution and no token auth between our own processes
    env = {**os.environ, "RAY_ADDRESS": "", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled"}
    with local_head(env, 6391, 8291) as ray_bin:
        out = tmp_path / "job"
        job = subprocess.run(
            [ray_bin, "job", "submit", "--address", "http://127.0.0.1:8291", "--",
             sys.executable, str(ROOT / "scripts" / "launch_sweep.py"), str(ROOT / "profiles" / "tiny-test.yaml"),
             "--out", str(out), "--node-ip-address", "127.0.0.1"],
            env=env, capture_output=True, text=True, timeout=600,
        )
        assert job.returncode == 0, (job.stdout + job.stderr)[-1500:]
        assert "succeeded" in (job.stdout + job.stderr).lower()
        table = pd.read_parquet(out / "results.parquet")
        assert len(table) == len(expand(load_spec(ROOT / "profiles" / "tiny-test.yaml"))) and (table.status == "ok").all()


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
def listening():
    return {{(c.laddr.ip, c.laddr.port) for c in psutil.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN}}
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
