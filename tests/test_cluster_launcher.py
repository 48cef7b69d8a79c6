"""The documented cluster recipe, for real: `ray up` with Ray's local (on-premise) provider over SSH on
127.0.0.1, `ray submit` of the launch script from another directory, `ray rsync-down`, `ray down`.

The SSH server is Debian's openssh-server, started by this test on a loopback port with a
throwaway key and its own configuration (no system file changes). Every session it serves runs
through a wrapper that gives it a home of the test's own, so the cluster's files land there, and a
`ray` whose `stop` (run by `ray down`) stops only this test's Ray (the processes that carry its
temporary directory), never the machine's other Ray clusters.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from pipeline.sweep.grid import expand
from pipeline.sweep.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.ray, pytest.mark.slow]
SSHD = shutil.which("sshd") or "/usr/sbin/sshd"

RELAY = """
import os, socket, sys, threading
conn = socket.create_connection((sys.argv[1], int(sys.argv[2])))
def up():
    while True:
        data = os.read(0, 65536)
        if not data:
            conn.shutdown(socket.SHUT_WR)
            return
        conn.sendall(data)
threading.Thread(target=up, daemon=True).start()
while True:
    data = conn.recv(65536)
    if not data:
        break
    os.write(1, data)
"""

STOP_OURS = """
import os, sys, psutil
marker = sys.argv[1]
me = {os.getpid(), *(p.pid for p in psutil.Process().parents())}
mine = [p for p in psutil.process_iter(["cmdline"])
        if p.pid not in me and marker in " ".join(p.info["cmdline"] or [])]
for p in mine:
    try:
        p.terminate()
    except psutil.NoSuchProcess:
        pass
gone, alive = psutil.wait_procs(mine, timeout=20)
for p in alive:
    p.kill()
print(f"stopped {len(mine)} process(es) of this test")
"""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _stop_marked(marker: str) -> None:
    subprocess.run([sys.executable, "-c", STOP_OURS, marker], capture_output=True, timeout=60, check=True)


def _marked(marker: str) -> list[int]:
    import psutil

    return [p.pid for p in psutil.process_iter(["cmdline"])
            if p.pid != os.getpid() and marker in " ".join(p.info["cmdline"] or [])]


@pytest.mark.skipif(os.geteuid() != 0, reason="sshd must run as root to serve root's sessions")
@pytest.mark.skipif(not (Path(SSHD).exists() and shutil.which("rsync")), reason="needs openssh-server and rsync")
def test_ray_up_submit_rsync_down_down_on_loopback(tmp_path):
    base = Path(tempfile.mkdtemp(prefix="ipcvssh"))  # short paths: sockets and Ray's temp dir live here
    ray_temp = base / "ray"
    marker = f"{ray_temp}/session"  # in the command line of every process of the test's Ray, and no other
    home, bin_dir = base / "home", base / "bin"
    home.mkdir()
    bin_dir.mkdir()
    key = base / "key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(base / "host_key")], check=True)
    (base / "authorized_keys").write_text((base / "key.pub").read_text())
    (base / "relay.py").write_text(RELAY)
    (base / "stop_ours.py").write_text(STOP_OURS)
    venv_bin = Path(sys.executable).parent
    # the sessions' `ray`: `ray stop` stops this test's Ray only
    (bin_dir / "ray").write_text(f'#!/bin/bash\nif [ "$1" = stop ]; then exec {sys.executable} {base}/stop_ours.py '
                                 f'{marker}; fi\nexec {venv_bin}/ray "$@"\n')
    (bin_dir / "ray").chmod(0o755)
    profile_lines = (f"export PATH={bin_dir}:{venv_bin}:$PATH RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 "
                     "RAY_AUTH_MODE=disabled WANDB_MODE=disabled HF_HUB_OFFLINE=1\n")
    (home / ".bash_profile").write_text(profile_lines)
    (home / ".bashrc").write_text(profile_lines)
    wrapper = base / "session.sh"
    wrapper.write_text(f'#!/bin/bash\nexport HOME={home}\ncd {home}\nexec bash -c "$SSH_ORIGINAL_COMMAND"\n')
    wrapper.chmod(0o755)
    port = _free_port()
    (base / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {base}/host_key\nPidFile {base}/sshd.pid\n"
        f"AuthorizedKeysFile {base}/authorized_keys\nPermitRootLogin prohibit-password\nPasswordAuthentication no\n"
        f"UsePAM no\nStrictModes no\nForceCommand {wrapper}\nSubsystem sftp internal-sftp\n")
    Path("/run/sshd").mkdir(exist_ok=True)  # the privilege-separation directory sshd expects
    sshd = subprocess.Popen([SSHD, "-D", "-e", "-f", str(base / "sshd_config")], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    ray_port, dash_port = _free_port(), _free_port()
    cluster = base / "cluster.yaml"
    cluster.write_text(yaml.safe_dump({
        "cluster_name": f"ipcv-loopback-{port}",
        "provider": {"type": "local", "head_ip": "127.0.0.1", "worker_ips": []},
        "auth": {"ssh_user": "root", "ssh_private_key": str(key),
                 "ssh_proxy_command": f"{sys.executable} {base}/relay.py 127.0.0.1 {port}"},
        "file_mounts": {"~/ipcv-study": str(ROOT / "profiles")},
        "setup_commands": [],
        "head_start_ray_commands": [
            f"ray start --head --node-ip-address=127.0.0.1 --port={ray_port} --dashboard-host=127.0.0.1 "
            f"--dashboard-port={dash_port} --num-cpus=2 --disable-usage-stats --temp-dir={ray_temp}"],
        "worker_start_ray_commands": [],
    }))
    env = {**os.environ, "RAY_ADDRESS": "", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    ray_bin = str(venv_bin / "ray")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    try:
        for _ in range(50):
            if (base / "sshd.pid").exists():
                break
            time.sleep(0.2)
        up = subprocess.run([ray_bin, "up", str(cluster), "-y", "--no-config-cache"], env=env, cwd=elsewhere,
                            capture_output=True, text=True, timeout=600)
        assert up.returncode == 0, (up.stdout + up.stderr)[-3000:]
        assert (home / "ipcv-study" / "tiny-test.yaml").exists()  # the file mount arrived over SSH (rsync)
        out = f"{home}/results/tiny"
        submit = subprocess.run(
            [ray_bin, "submit", str(cluster), str(ROOT / "scripts" / "launch_sweep.py"), "--", "tiny-test",
             "--out", out, "--address", f"127.0.0.1:{ray_port}", "--node-ip-address", "127.0.0.1"],
            env=env, cwd=elsewhere, capture_output=True, text=True, timeout=900)
        assert submit.returncode == 0, (submit.stdout + submit.stderr)[-3000:]
        fetched = tmp_path / "fetched"
        down_files = subprocess.run([ray_bin, "rsync-down", str(cluster), out + "/", str(fetched)], env=env,
                                    cwd=elsewhere, capture_output=True, text=True, timeout=300)
        assert down_files.returncode == 0, (down_files.stdout + down_files.stderr)[-2000:]
        table = pd.read_parquet(fetched / "results.parquet")
        cells = expand(load_spec(ROOT / "profiles" / "tiny-test.yaml"))
        assert sorted(table.cell_id) == sorted(c.id for c in cells) and (table.status == "ok").all()
        assert _marked(marker)  # the test's Ray runs
        teardown = subprocess.run([ray_bin, "down", str(cluster), "-y"], env=env, cwd=elsewhere, capture_output=True,
                                  text=True, timeout=300)
        assert teardown.returncode == 0, (teardown.stdout + teardown.stderr)[-2000:]
        deadline = time.time() + 30
        while _marked(marker) and time.time() < deadline:
            time.sleep(1)
        assert not _marked(marker)  # `ray down` stopped this test's Ray (and only it: see the session's `ray`)
    finally:
        # everything this test started carries its folder in its command line: the test's Ray, the
        # sshd, the SSH control masters and their relays
        _stop_marked(str(base))
        if sshd.poll() is None:
            sshd.send_signal(signal.SIGTERM)
        sshd.wait(timeout=30)
        shutil.rmtree(base, ignore_errors=True)
        for state in Path("/tmp").glob(f"cluster-ipcv-loopback-{port}.*"):  # the local provider's state file
            state.unlink(missing_ok=True)
