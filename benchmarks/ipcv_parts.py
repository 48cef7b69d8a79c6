"""IPCV's own steps timed one by one at the sizes of real inputs, each against the alternatives
weighed for it: which implementation of a step pays on this device?

Steps, on random bf16 states of width D (the Qwen2-VL-7B encoder's 1280 by default) for N tokens
with r of them removed and k neighbours:

- ``neighbours``: the distance product and the top-k as the code runs them (``find_neighbors``),
  with the kept side padded to a multiple of 8 rows (``Kernels.padded_product``), and as one
  Triton kernel (``Kernels.fused_search``, CUDA with triton only) at several tile sizes and shares
  of the kept side per program; the product
  alone (as run: bf16 inputs, float32 output; padded; in bf16 throughout; in float32 on TF32
  tensor cores), the top-k alone, without sorting its k results, over the padded rows, and in
  two stages (the k smallest of every 256 columns, then of those);
- ``rebuild``: one NGR rebuild as the code runs it (``Reconstruction.full``), the fused Triton
  rebuild (``Kernels.fused_rebuild``, CUDA with triton only) at three column blocks and with
  per-neighbour weights, the gather-sum alone (half precision: gather the rows, sum in float32),
  the float32 ``embedding_bag`` it replaced, a dense product with a 0/1 neighbour matrix in bf16
  and float32 accumulation, and the scatter alone.

Medians of CUDA-event times (ms) over ``--repeats`` calls after ``--warmup``; CPU runs use
``perf_counter`` and are labelled so. Nothing here changes what IPCV computes: this script only
measures candidates.

    python benchmarks/ipcv_parts.py --device cuda --tokens 1024,4096,9216,8192 --out docs/results/ipcv_parts_h200
"""

from __future__ import annotations

import argparse
import json
import traceback
from pathlib import Path

import torch

from ipcv import algorithm as alg
from pipeline.measure.timing import provenance, time_call


def _tf32_product(removed: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """The distance product in float32 on TF32 tensor cores (exact products for bf16 values,
    whose 8-bit significands fit TF32's 11): a candidate, not what the code runs."""
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        return removed.float() @ kept.float().T
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous


def _two_stage_topk(dist: torch.Tensor, k: int, group: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """The k smallest of each row as the k smallest of each group of ``group`` columns, then of
    those: the same set (up to ties), many short top-k slices instead of one long one per row. A
    candidate, not what the code runs."""
    rows, cols = dist.shape
    pad = -cols % group
    padded = torch.nn.functional.pad(dist, (0, pad), value=float("inf")).view(rows, -1, group)
    values, index = torch.topk(padded, min(k, group), dim=2, largest=False, sorted=False)
    index = index + torch.arange(0, cols + pad, group, device=dist.device)[:, None]
    best_values, best = torch.topk(values.reshape(rows, -1), k, dim=1, largest=False)
    return best_values, index.reshape(rows, -1).gather(1, best)


def _with(choice: alg.Kernels, fn):
    """``fn`` run with ``choice`` of IPCV's kernels."""
    def call():
        with alg.use_kernels(choice):
            return fn()
    return call


def neighbour_candidates(removed: torch.Tensor, kept: torch.Tensor, k: int) -> dict:
    norms = kept.float().square().sum(dim=1)
    dist = torch.add(norms, alg._dot_float32(removed, kept), alpha=-2.0)
    kept_padded, norms_padded = alg.pad_kept_side(kept, norms)
    pad = kept_padded.shape[0] - kept.shape[0]
    dist_padded = torch.add(norms_padded, alg._dot_float32(removed, kept_padded), alpha=-2.0)
    fused = {}
    if removed.is_cuda:
        try:
            from ipcv import search_kernel
        except ImportError as err:
            print(f"fused search not timed: {err}")
        else:
            fused["find_neighbors (fused search)"] = _with(alg.Kernels(fused_search=True),
                                                           lambda: alg.find_neighbors(removed, kept, k))
            for block_m, block_n, splits, warps in ((64, 64, 1, 8), (64, 64, None, 8), (64, 128, None, 8),
                                                    (128, 64, None, 8)):
                share = "kept side unsplit" if splits == 1 else "kept side split to fill the GPU"
                fused[f"fused search only ({block_m}x{block_n} tiles, {share}, {warps} warps)"] = (
                    lambda m=block_m, n=block_n, s=splits, w=warps: search_kernel.nearest(removed, kept, norms, k, s,
                                                                                          m, n, w))
    return {
        "find_neighbors (as run)": lambda: alg.find_neighbors(removed, kept, k),
        "find_neighbors (padded product)": _with(alg.Kernels(padded_product=True),
                                                 lambda: alg.find_neighbors(removed, kept, k)),
        **fused,
        "product only (mm, float32 out, as run)": lambda: torch.add(norms, alg._dot_float32(removed, kept), alpha=-2.0),
        f"product only (kept side padded by {pad}, float32 out)":
            lambda: torch.add(norms_padded, alg._dot_float32(removed, kept_padded), alpha=-2.0),
        "product only (bf16 mm, bf16 out)": lambda: removed @ kept.T,
        "product only (TF32 float32 mm)": lambda: _tf32_product(removed, kept),
        "top-k only (sorted)": lambda: torch.topk(dist, k, dim=1, largest=False),
        "top-k only (unsorted)": lambda: torch.topk(dist, k, dim=1, largest=False, sorted=False),
        "top-k only (padded rows, sorted)": lambda: torch.topk(dist_padded, k, dim=1, largest=False),
        "top-k in two stages (groups of 256 columns)": lambda: _two_stage_topk(dist, k),
    }


def rebuild_candidates(kept_states: torch.Tensor, removed_states: torch.Tensor, kept: torch.Tensor,
                       removed: torch.Tensor, index: torch.Tensor, weight: torch.Tensor) -> dict:
    recon = alg.Reconstruction(kept_states, removed_states, index, weight, uniform=True)
    before = alg.Reconstruction(kept_states, removed_states, index, weight)  # float32 embedding_bag
    n_removed, width = index.shape
    ones = torch.zeros(n_removed, kept_states.shape[0], dtype=kept_states.dtype, device=kept_states.device)
    ones.scatter_(1, index, 1.0)
    offset = recon.offset

    def dense():
        summed = alg._dot_float32(ones, kept_states.T)  # ones @ kept_states, float32 accumulation
        return torch.add(offset, summed, alpha=1.0 / width).to(kept_states.dtype)

    fused = {}
    if kept_states.is_cuda:
        try:
            from ipcv import rebuild_kernel
        except ImportError as err:
            print(f"fused rebuild not timed: {err}")
        else:
            args = (recon.offset, index, None)
            for block in (128, 256, 512):
                fused[f"rebuild fused (Triton, {block} columns per program)"] = (
                    lambda b=block: rebuild_kernel.rebuild_full(kept_states, *args, kept, removed, block=b))
            with alg.use_kernels(alg.Kernels(fused_rebuild=True)):
                weighted = alg.Reconstruction(kept_states, removed_states, index, weight)  # as a scoped search's
            fused["rebuild fused (Triton, weighted)"] = lambda: weighted.full(kept_states, kept, removed)
    return {
        "rebuild (as run)": lambda: recon.full(kept_states, kept, removed),
        **fused,
        f"gather-sum (as run: {'gather then sum' if recon.gather else 'embedding_bag'})": lambda: recon(kept_states),
        "gather-sum float32 embedding_bag": lambda: before(kept_states),
        "dense 0/1 product": dense,
        "scatter only": lambda: alg.scatter_full(kept_states, removed_states, kept, removed),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tokens", default="1024,4096,9216", help="comma list of N (one image: 448² = 1024)")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--ratio", type=float, default=0.65)
    parser.add_argument("--neighbors", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    rows = []
    for n in (int(t) for t in args.tokens.split(",")):
        g = torch.Generator(device=device).manual_seed(n)
        states = torch.randn(n, args.width, device=device, dtype=dtype, generator=g)
        scores = torch.rand(n, device=device, generator=g)
        keep = alg.kept_count(n, args.ratio)
        kept, removed = alg.select_and_split(scores, [n], [keep])
        kept_states, removed_states = states.index_select(0, kept), states.index_select(0, removed)
        index, weight = alg.find_neighbors(removed_states, kept_states, args.neighbors)
        steps = {"selection (as run)": lambda s=scores, n=n, k=keep: alg.select_and_split(s, [n], [k])}
        steps.update(neighbour_candidates(removed_states, kept_states, args.neighbors))
        steps.update(rebuild_candidates(kept_states, removed_states, kept, removed, index, weight))
        for name, fn in steps.items():
            try:  # a candidate that fails (e.g. a kernel this Triton cannot compile) costs its own row only
                timing = time_call(fn, device, args.warmup, args.repeats).to_dict()
            except Exception as err:
                traceback.print_exc()
                timing = {"error": f"{type(err).__name__}: {err}"[:160]}
            rows.append({"tokens": n, "kept": keep, "step": name, **timing})
            print(json.dumps(rows[-1]), flush=True)
    lines = [f"IPCV steps, {dtype}, width {args.width}, r={args.ratio}, k={args.neighbors}; "
             f"{provenance(device)['device']}; median [p10, p90] ms over {args.repeats} after {args.warmup} warm-up", "",
             "| tokens → kept | step | ms |", "|---|---|---|"]
    lines += [f"| {r['tokens']} → {r['kept']} | {r['step']} | " + (
                  f"failed: {r['error']} |" if "error" in r else
                  f"{r['median_ms']:.3f} [{r['p10_ms']:.3f}, {r['p90_ms']:.3f}] |") for r in rows]
    table = "\n".join(lines)
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".json").write_text(json.dumps({"provenance": provenance(device), "rows": rows}, indent=1))
        args.out.with_suffix(".md").write_text(table + "\n")


if __name__ == "__main__":
    main()
