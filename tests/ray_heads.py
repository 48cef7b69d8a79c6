"""Ray heads a test owns: started in a process group and a temporary directory of their own, and
stopped by signalling that group (never ``ray stop``, which stops every Ray on the machine)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def local_head(env: dict, port: int, dashboard_port: int | None = None, extra: list[str] | None = None,
               num_cpus: int = 2) -> Iterator[str]:
    """``ray start --head --block`` on 127.0.0.1; yields the ``ray`` executable's path."""
    temp = tempfile.mkdtemp(prefix="ray-t")  # short: Ray's socket paths live under it
    ray_bin = str(Path(sys.executable).parent / "ray")
    dashboard = ([f"--dashboard-port={dashboard_port}", "--dashboard-host=127.0.0.1", "--include-dashboard=true"]
                 if dashboard_port else ["--include-dashboard=false"])
    head = subprocess.Popen(
        [ray_bin, "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}", f"--num-cpus={num_cpus}",
         "--disable-usage-stats", f"--temp-dir={temp}", *dashboard, *(extra or [])],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 120
        while not _answers(port, dashboard_port):
            if head.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"the test's Ray head did not start (exit {head.poll()})")
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


def _answers(port: int, dashboard_port: int | None) -> bool:
    if dashboard_port:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{dashboard_port}/api/version", timeout=2)
            return True
        except OSError:
            return False
    with socket.socket() as probe:
        probe.settimeout(2)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def fake_autoscaling_config(path: Path, gcs_port: int, gpu_nodes: int, gpus_per_node: int) -> Path:
    """An autoscaler config for Ray's fake multi-node provider: a head without GPUs and up to
    ``gpu_nodes`` worker nodes of ``gpus_per_node`` fake GPUs, started on this machine on demand."""
    config = {
        "cluster_name": "ipcv-fake", "max_workers": gpu_nodes, "upscaling_speed": 1.0, "idle_timeout_minutes": 0.05,
        "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                     "disable_launch_config_check": True, "gcs_address": f"127.0.0.1:{gcs_port}"},
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 2}, "node_config": {}, "max_workers": 0},
            "gpu_node": {"resources": {"CPU": 2, "GPU": gpus_per_node, "object_store_memory": 200 * 2**20},
                         "node_config": {}, "min_workers": 0, "max_workers": gpu_nodes},
        },
        "head_node_type": "ray.head.default", "auth": {}, "docker": {}, "initialization_commands": [],
        "setup_commands": [], "head_setup_commands": [], "worker_setup_commands": [], "head_start_ray_commands": [],
        "worker_start_ray_commands": [], "file_mounts": {}, "cluster_synced_files": [],
        "file_mounts_sync_continuously": False, "rsync_exclude": [], "rsync_filter": [],
    }
    path.write_text(json.dumps(config))
    return path
