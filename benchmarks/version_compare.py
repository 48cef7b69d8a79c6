"""Two versions of ``ipcv`` on the same tower and inputs: is a change exact?

``dump`` runs the ``ipcv`` package found first on the path (point ``PYTHONPATH`` at another
checkout to run that one) on the Qwen2-VL-7B-size vision tower with seeded random weights, in
float32 and bfloat16, and saves per input the kept set, the neighbour index and the features; on
CUDA it also lists the synchronising calls of one 448² forward (``torch.cuda.set_sync_debug_mode``)
unpatched and with IPCV. ``compare`` reads two dumps and reports, per input: float32 kept sets,
neighbours and outputs equal (bit for bit); in bf16 the kept-set overlap with the float32
selection, and the cosine of the new outputs to the old ones per token.

    git worktree add /tmp/before <commit>
    PYTHONPATH=/tmp/before:. python benchmarks/version_compare.py dump /tmp/before.pt
    PYTHONPATH=. python benchmarks/version_compare.py dump /tmp/after.pt
    python benchmarks/version_compare.py compare /tmp/before.pt /tmp/after.pt --out docs/results/x.json

``--as-queries kept`` dumps the same code with ``IPCVConfig(as_queries="kept")``: comparing it with
a default dump says what computing only the kept queries changes.

(``pipeline`` comes from this checkout in both runs; only ``ipcv`` differs.)
"""

from __future__ import annotations

import argparse
import collections
import json
import warnings
from pathlib import Path

import common
import torch

import ipcv
from ipcv import algorithm as alg
from pipeline.models.qwen_vl import random_patches

GPU_INPUTS = {"448": [(1, 32, 32)], "896": [(1, 64, 64)], "1344": [(1, 96, 96)], "video16x448": [(8, 32, 32)],
              "two_images": [(1, 64, 64), (1, 32, 48)]}
CPU_INPUTS = {"224": [(1, 16, 16)], "video4x112": [(2, 8, 8)], "two_images": [(1, 16, 16), (1, 8, 12)]}


def synchronising_calls(tower, device: torch.device) -> dict:
    """Where one 448² bf16 forward synchronises, unpatched and with IPCV (``file:line`` counts)."""
    inp = random_patches(GPU_INPUTS["448"], seed=1).to(device, torch.bfloat16)
    found = {}
    for label, cfg in (("unpatched", None), ("ipcv", ipcv.IPCVConfig())):
        handle = ipcv.apply(tower, vision=cfg) if cfg else None
        with torch.inference_mode():
            common.encode(tower, inp)
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("warn")
            with warnings.catch_warnings(record=True) as seen:
                warnings.simplefilter("always")
                common.encode(tower, inp)
            torch.cuda.set_sync_debug_mode(0)
        if handle:
            handle.remove()
        where = collections.Counter(f"{w.filename.split('site-packages/')[-1]}:{w.lineno}" for w in seen)
        found[label] = {"count": len(seen), "where": dict(where)}
    return found


def dump(path: Path, device: torch.device, size: str, as_queries: str = "all") -> None:
    neighbours: list[torch.Tensor] = []
    search = alg.find_neighbors

    def recording_search(*args, **kwargs):
        index, weight = search(*args, **kwargs)
        neighbours.append(index.detach().cpu())
        return index, weight

    alg.find_neighbors = recording_search
    inputs = GPU_INPUTS if device.type == "cuda" else CPU_INPUTS
    result: dict = {"ipcv_file": ipcv.__file__, "inputs": {}}
    for dtype in ("float32", "bfloat16"):
        tower = common.build(size, dtype, device, "sdpa", tower_only=True)
        for name, grid in inputs.items():
            inp = random_patches(grid, seed=1).to(device, getattr(torch, dtype))
            config = ipcv.IPCVConfig(as_queries=as_queries) if as_queries != "all" else ipcv.IPCVConfig()
            with torch.inference_mode(), ipcv.apply(tower, vision=config) as handle:
                neighbours.clear()
                features = common.encode(tower, inp)
                stats = handle.vision_stats
            result["inputs"][(dtype, name)] = {"kept": stats.kept_index.cpu(), "neighbours": neighbours[-1],
                                               "out": features.float().cpu(), "tokens_kept": list(stats.tokens_kept)}
        if dtype == "bfloat16" and device.type == "cuda":
            result["syncs"] = synchronising_calls(tower, device)
        del tower
    alg.find_neighbors = search
    torch.save(result, path)
    print(f"dumped {path} ({result['ipcv_file']}): syncs {result.get('syncs')}")


def compare(old_path: Path, new_path: Path) -> dict:
    old, new = torch.load(old_path), torch.load(new_path)

    def overlap(a: torch.Tensor, b: torch.Tensor) -> float:
        a_set, b_set = set(a.tolist()), set(b.tolist())
        return len(a_set & b_set) / max(1, len(a_set))

    def same_rows(a: torch.Tensor, b: torch.Tensor) -> float | None:  # neighbour sets, order aside
        if a.shape != b.shape:
            return None
        return float((a.sort(dim=1).values == b.sort(dim=1).values).all(dim=1).float().mean())

    summary: dict = {"old": old["ipcv_file"], "new": new["ipcv_file"], "syncs_old": old.get("syncs"),
                     "syncs_new": new.get("syncs"), "inputs": {}}
    for name in sorted({n for _, n in old["inputs"]}):
        o32, n32 = old["inputs"][("float32", name)], new["inputs"][("float32", name)]
        o16, n16 = old["inputs"][("bfloat16", name)], new["inputs"][("bfloat16", name)]
        cosine = torch.nn.functional.cosine_similarity(n16["out"], o16["out"], dim=-1)
        same_kept16 = torch.equal(n16["kept"], o16["kept"])
        summary["inputs"][name] = {
            "fp32_kept_equal": torch.equal(o32["kept"], n32["kept"]),
            "fp32_neighbour_rows_equal": same_rows(o32["neighbours"], n32["neighbours"]),
            "fp32_out_bit_identical": torch.equal(o32["out"], n32["out"]),
            "fp32_out_max_abs_diff": float((o32["out"] - n32["out"]).abs().max()),
            "fp32_tokens_kept_equal": o32["tokens_kept"] == n32["tokens_kept"],
            "bf16_kept_equal_old": same_kept16,
            "bf16_kept_overlap_with_old": overlap(n16["kept"], o16["kept"]),
            "bf16_new_kept_overlap_with_fp32": overlap(n16["kept"], n32["kept"]),
            "bf16_old_kept_overlap_with_fp32": overlap(o16["kept"], o32["kept"]),
            "bf16_neighbour_rows_equal_old": same_rows(o16["neighbours"], n16["neighbours"]) if same_kept16 else None,
            "bf16_out_cosine_min": float(cosine.min()), "bf16_out_cosine_median": float(cosine.median()),
            "bf16_out_tokens_below_0.999": int((cosine < 0.999).sum()), "tokens_out": int(cosine.numel()),
        }
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("dump")
    d.add_argument("path", type=Path)
    d.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    d.add_argument("--size", choices=common.SIZES, default="7b")
    d.add_argument("--as-queries", choices=["all", "kept"], default="all",
                   help="IPCVConfig.as_queries (compare an 'all' dump with a 'kept' dump of the same code)")
    c = sub.add_parser("compare")
    c.add_argument("old", type=Path)
    c.add_argument("new", type=Path)
    c.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.command == "dump":
        dump(args.path, torch.device(args.device), args.size, args.as_queries)
        return
    summary = compare(args.old, args.new)
    text = json.dumps(summary, indent=1)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
