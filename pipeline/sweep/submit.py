"""``ipcv-study submit``: a sweep as a Ray job on a running cluster, from this checkout.

The job ships this checkout's code (Ray's ``working_dir``, without virtual environments, results
or git data) and runs ``python -m pipeline.cli run PROFILE --address auto --out OUT`` there, so
the code that runs is the code submitted; the cluster provides the dependencies (torch,
transformers, ray: ``ray_cluster.yaml``'s setup commands install them). The job's working
directory is temporary, so ``--out`` must be an absolute path on the cluster or an object-storage
URI. The W&B key is not sent unless asked (``pass_wandb_key``): Ray keeps a job's runtime
environment in its metadata, visible to whoever can see the cluster's dashboard.
"""

from __future__ import annotations

import asyncio
import os
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pipeline.sweep.spec import ProfileError, find_profile, load_spec, project_root

EXCLUDES = [".git", ".venv", ".venv-*", "results", "wandb", "out", "**/__pycache__", "*.parquet", "*.egg-info"]


@dataclass
class Submitted:
    job_id: str
    status: str | None  # None when not waited for
    out: str


def submit(profile: str | Path, address: str, out: str, *, wandb_mode: str | None = None, pass_wandb_key: bool = False,
           wait: bool = True, echo: Callable[[str], None] = print) -> Submitted:
    from ray.job_submission import JobStatus, JobSubmissionClient

    root = project_root()
    if root is None:
        raise ProfileError("submit ships the project checkout, but this installation is not one (no profiles/ "
                           "beside the package); submit from a clone of the project")
    path = find_profile(profile)
    spec = load_spec(path)  # a wrong profile fails here, not on the cluster
    if "://" not in out and not Path(out).is_absolute():
        raise ValueError(f"--out {out}: give an absolute path on the cluster or an object-storage URI "
                         "(the job's working directory is temporary)")
    try:
        relative = path.resolve().relative_to(root)
    except ValueError:
        raise ProfileError(f"{path}: the profile must be inside the checkout that is shipped ({root})") from None
    command = ["python", "-m", "pipeline.cli", "run", str(relative), "--address", "auto", "--out", out]
    if wandb_mode:
        command += ["--wandb-mode", wandb_mode]
    env_vars = {"PYTHONUNBUFFERED": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    if os.environ.get("IPCV_KERNELS"):  # IPCV's kernel choices (ipcv.algorithm.Kernels) go with the job
        from ipcv.algorithm import Kernels

        Kernels.parse(os.environ["IPCV_KERNELS"])  # a typo fails here, not in every worker
        env_vars["IPCV_KERNELS"] = os.environ["IPCV_KERNELS"]
    if pass_wandb_key:
        if not os.environ.get("WANDB_API_KEY"):
            raise ValueError("--pass-wandb-key: WANDB_API_KEY is not set here")
        env_vars["WANDB_API_KEY"] = os.environ["WANDB_API_KEY"]
    client = JobSubmissionClient(address)
    job_id = client.submit_job(entrypoint=shlex.join(command),
                               runtime_env={"working_dir": str(root), "excludes": EXCLUDES, "env_vars": env_vars},
                               metadata={"sweep": spec.name, "profile": str(relative)})
    echo(f"submitted sweep {spec.name} as job {job_id} to {address}; results: {out}")
    if not wait:
        return Submitted(job_id, None, out)

    async def follow() -> None:
        async for lines in client.tail_job_logs(job_id):
            echo(lines.rstrip("\n"))

    asyncio.run(follow())
    status = client.get_job_status(job_id)
    return Submitted(job_id, str(status.value if isinstance(status, JobStatus) else status), out)
