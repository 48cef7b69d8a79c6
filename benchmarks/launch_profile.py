"""Where IPCV's time goes at small inputs: kernel launches, host synchronisations and the
slowest operators of one vision-encoder forward, unpatched vs. IPCV (torch.profiler).

    python benchmarks/launch_profile.py --device cuda --resolution 448
"""

from __future__ import annotations

import argparse

import common
import torch
from torch.profiler import ProfilerActivity, profile

import ipcv
from pipeline.models import parse_dtype
from pipeline.models.qwen_vl import PATCH, random_patches


def summarize(tag: str, prof, device: torch.device) -> None:
    events = prof.key_averages()
    launches = sum(e.count for e in events if e.key in ("cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel"))
    syncs = sum(e.count for e in events if "Synchronize" in e.key or e.key == "cudaMemcpyAsync")
    ops = sum(e.count for e in events if e.key.startswith("aten::"))
    print(f"== {tag}: aten ops {ops}, kernel launches {launches}, synchronising calls (sync + memcpy) {syncs}")
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(events.table(sort_by=sort, row_limit=12, max_name_column_width=48))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--size", choices=common.SIZES, default="7b")
    parser.add_argument("--resolution", type=int, default=448)
    args = parser.parse_args()
    device, dtype = torch.device(args.device), parse_dtype(args.dtype)
    tower = common.build(args.size, args.dtype, device, "sdpa", tower_only=True)
    side = args.resolution // PATCH
    inp = random_patches([(1, side, side)], seed=0).to(device, dtype)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])

    def forward():
        with torch.inference_mode():
            common.encode(tower, inp)

    for tag, cfg in (("unpatched", None), ("IPCV", ipcv.IPCVConfig())):
        handle = ipcv.apply(tower, vision=cfg) if cfg else None
        for _ in range(3):
            forward()
        with profile(activities=activities) as prof:
            forward()
            if device.type == "cuda":
                torch.cuda.synchronize()
        summarize(f"{tag} {args.resolution}^2 {args.size} {args.dtype}", prof, device)
        if handle:
            handle.remove()


if __name__ == "__main__":
    main()
