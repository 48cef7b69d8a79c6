"""Correctness checks that only a GPU can run: IPCV under bf16/fp16 CUDA kernels and the
FlashAttention backend, at the Qwen2-VL-7B vision-encoder size (random weights).

    python benchmarks/gpu_checks.py
Prints one line per check with PASS/FAIL and the figures behind it; exits non-zero on a failure.
"""

from __future__ import annotations

import sys

import common
import torch

import ipcv
from pipeline.models import build_tiny, family_of
from pipeline.models.qwen_vl import random_patches

failures = 0  # module-level tally


def report(name: str, ok: bool, detail: str) -> None:
    global failures
    failures += not ok
    print(f"{'PASS' if ok else 'FAIL'} {name}: {detail}", flush=True)


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--size", choices=common.SIZES, default="7b", help="7b, or small for a CPU dry run")
    args = parser.parse_args()
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(name, "torch", torch.__version__, flush=True)
    inp = random_patches([(1, 64, 64), (1, 32, 48)], seed=0).to(device, torch.bfloat16)  # 896^2, 448x672
    tower = common.build(args.size, "bfloat16", device, "sdpa", tower_only=True)
    outs, kept, plain = {}, {}, {}
    for attn in ("sdpa", "sdpa-flash") if device.type == "cuda" else ("sdpa", "eager"):
        with common.attention_context(attn), torch.inference_mode():
            reference = common.encode(tower, inp)
            plain[attn] = reference.float()
            with ipcv.apply(tower, vision=ipcv.IPCVConfig(reduction_ratio=0.0)):
                same = common.encode(tower, inp)
            report(f"{args.size} bf16 {attn} ratio 0 bit-identical", torch.equal(same, reference), f"{tuple(same.shape)}")
            with ipcv.apply(tower, vision=ipcv.IPCVConfig()) as handle:
                outs[attn] = common.encode(tower, inp).float()
                kept[attn] = set(handle.vision_stats.kept_index.tolist())
                cos = torch.nn.functional.cosine_similarity(outs[attn], reference.float(), dim=-1)
            report(
                f"{args.size} bf16 {attn} IPCV runs", bool(torch.isfinite(outs[attn]).all()),
                f"kept {handle.vision_stats.tokens_kept} of {handle.vision_stats.tokens_in}, "
                f"cosine to unpatched mean {cos.mean():.4f} min {cos.min():.4f}",
            )
    # Kernels round differently in bf16 and random weights amplify it over 32 blocks: compare the
    # IPCV-patched disagreement between backends with the unpatched one, and the kept sets.
    (name_a, out_a), (name_b, out_b) = outs.items()
    ipcv_cos = torch.nn.functional.cosine_similarity(out_a, out_b, dim=-1)
    plain_cos = torch.nn.functional.cosine_similarity(plain[name_a], plain[name_b], dim=-1)
    overlap = len(kept[name_a] & kept[name_b]) / len(kept[name_a])
    print(
        f"INFO {args.size} bf16 {name_a} vs {name_b}: cosine min/mean unpatched {plain_cos.min():.4f}/"
        f"{plain_cos.mean():.4f}, IPCV {ipcv_cos.min():.4f}/{ipcv_cos.mean():.4f}; kept-set overlap {overlap:.4f}",
        flush=True,
    )
    del tower
    for name in ("tiny-qwen2-vl", "tiny-qwen2.5-vl"):
        for dtype in ("bfloat16", "float16") if device.type == "cuda" else ("bfloat16",):
            model = build_tiny(name, dtype=dtype).to(device)
            visual = family_of(model).tower(model)
            small = random_patches([(1, 16, 16), (2, 8, 8)], seed=1).to(device, getattr(torch, dtype))
            with torch.inference_mode():
                reference = common.encode(visual, small)
                with ipcv.apply(model, vision=ipcv.IPCVConfig(reduction_ratio=0.0)):
                    same = common.encode(visual, small)
                with ipcv.apply(model, vision=ipcv.IPCVConfig(budget="per_image", neighbor_scope="same_image")):
                    out = common.encode(visual, small)
            report(
                f"{name} {dtype} cuda", torch.equal(same, reference) and bool(torch.isfinite(out).all()),
                "ratio 0 identical, per_image/same_image finite",
            )
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
