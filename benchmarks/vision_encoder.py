"""Vision-encoder benchmark: unpatched vs. IPCV, latency, analytic FLOPs, memory, IPCV overhead.

Default size is the Qwen2-VL-7B vision encoder (depth 32, width 1280, 16 heads, MLP ratio 4,
merger to 3584) with random weights: speed does not depend on trained values. ``--size small``
(depth 16, width 512, 8 heads) is for CPUs, and every table says which size and clock it used.

Attention implementations: ``eager``, ``sdpa`` (PyTorch picks the kernel), ``sdpa-flash`` (sdpa
forced to PyTorch's FlashAttention backend), ``flash_attention_2`` (needs the flash-attn
package; recorded as unavailable where it is missing), ``torch_flash_varlen`` (PyTorch's varlen
flash kernel, ``pipeline/models/attention.py``; CUDA, half precision, Qwen-VL). The last two take
every segment of a call (a video's frames) in one kernel call; ``eager`` and the sdpa ones take
one call per segment from transformers' Python loop, in both towers.

    python benchmarks/vision_encoder.py --device cuda --dtype bfloat16 --attn sdpa,sdpa-flash
    python benchmarks/vision_encoder.py --device cuda --dtype bfloat16 --attn sdpa --resolutions 448,896,1344 --videos 16x448

``--family internvl`` measures InternViT instead (``--size internvit-300m``, the encoder of
InternVL3-1B..14B, or ``internvit-6b``, of InternVL3-38B / 78B; ``tiny`` on a CPU): an image of
side S becomes the 448² tiles InternVL's tiling cuts it into (1, 5, 10 tiles at 448², 896², 1344²),
each 1 + 1024 tokens; a video one tile per frame. IPCV defaults to the published InternVL3-38B
setting there (K=7, r=0.65, A=3, k=10).

    python benchmarks/vision_encoder.py --device cuda --dtype bfloat16 --family internvl --size internvit-6b --videos 8x448

``--videos FxS``: a video of F frames at S² (Qwen-VL pairs frames into temporal patches: F/2
grid steps of (S/14)² patches, one attention segment each). ``--float32-neighbour-search`` runs
the neighbour search of half-precision features through float32 ``cdist`` as before issue 17 (an
ablation: that lever's share of a change). ``--as-queries kept`` computes only the kept tokens'
queries in the Attention-Stabilization blocks (``IPCVConfig.as_queries``). ``--kernels
none,fused_rebuild+padded_product`` times IPCV with each choice of ``ipcv.algorithm.Kernels``
(half precision on CUDA; the fused rebuild and the fused search need triton) against the same
baseline.

``--cuda-graph`` (CUDA only) also times both towers captured as CUDA graphs (``ipcv.cuda_graph``),
each called with its layout computed on the host (the same call for both), and checks that a
replay gives the eager call's output; a layout IPCV cannot capture (a video under the global
budget on sdpa or eager) is recorded as such. Graphed figures are compared only with each other.

    python benchmarks/vision_encoder.py --device cuda --dtype bfloat16 --attn sdpa --resolutions 448,896,1344 \
        --videos 16x448 --as-queries all,kept --cuda-graph
    python benchmarks/vision_encoder.py --device cpu --size small --resolutions 224,448 --repeats 3
"""

from __future__ import annotations

import json
import statistics
import traceback

import common
import torch

import ipcv
from ipcv import algorithm as alg
from ipcv.cuda_graph import GraphedCall
from pipeline.measure.timing import provenance, time_call
from pipeline.measure.vision_flops import record_vision_layout, vision_dims, vision_flops
from pipeline.models import VisionInput, family_named, family_of, parse_dtype
from pipeline.models.internvl import PATCH as TILE_PATCH
from pipeline.models.internvl import TILE, tile_images
from pipeline.models.qwen_vl import PATCH, random_patches


def peak_memory_mib(fn, device: torch.device) -> float | None:
    if device.type != "cuda":
        return None  # not measured on CPU (never reported as 0)
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) / 2**20


def parse_inputs(resolutions: str, videos: str) -> list[tuple[str, tuple[int, int, int]]]:
    """``(label, grid_thw)`` of every input: images ``S``, videos ``FxS`` (F even)."""
    inputs = [(f"{int(r)}²", (1, int(r) // PATCH, int(r) // PATCH)) for r in resolutions.split(",") if r]
    for video in filter(None, videos.split(",")):
        frames, side = (int(v) for v in video.lower().split("x"))
        if frames % 2 or side % (2 * PATCH):
            raise SystemExit(f"--videos {video}: frames must be even and the side a multiple of {2 * PATCH}")
        inputs.append((f"{frames}f×{side}²", (frames // 2, side // PATCH, side // PATCH)))
    return inputs


def parse_tiles(resolutions: str, videos: str) -> list[tuple[str, int]]:
    """``(label, tiles)`` of every input for InternViT: images ``S`` cut as InternVL's tiling cuts
    a square image of that side, videos ``FxS`` one tile per frame."""
    from PIL import Image

    inputs = []
    for r in filter(None, resolutions.split(",")):
        tiles = tile_images([Image.new("RGB", (int(r), int(r)))])[1][0]
        inputs.append((f"{int(r)}² ({tiles} tiles)", tiles))
    for video in filter(None, videos.split(",")):
        frames, side = (int(v) for v in video.lower().split("x"))
        inputs.append((f"{frames}f×{side}² ({frames} tiles)", frames))
    return inputs


def random_input(layout: tuple[int, int, int] | int) -> tuple[VisionInput, dict]:
    """Random pixels for a Qwen-VL grid ``(t, h, w)`` or a number of InternVL tiles, and the
    row fields that describe them."""
    if isinstance(layout, int):
        pixels = torch.randn(layout, 3, TILE, TILE, generator=torch.Generator().manual_seed(layout))
        return VisionInput(pixels, None, f"{layout} tiles"), {"tiles": layout, "tokens": layout * (1 + (TILE // TILE_PATCH) ** 2)}
    inp = random_patches([layout], seed=layout[0] * 10_000 + layout[1])
    return inp, {"grid_thw": list(layout), "tokens": layout[0] * layout[1] * layout[2]}


def graphed_latency(tower, forward, config: ipcv.IPCVConfig | None, device, warmup: int, repeats: int) -> dict:
    """``forward`` (a host-layout call) captured as a CUDA graph, unpatched or with ``config``:
    latency, and the largest difference between a replay and an eager call (0 when the replay is
    faithful)."""
    handle = ipcv.apply(tower, vision=config) if config else None
    try:
        graphed = GraphedCall(forward)
        result = {"timing": time_call(graphed, device, warmup, repeats).to_dict()}
        replayed = graphed().float().clone()
        result["replay_max_diff"] = float((forward().float() - replayed).abs().max())
        del graphed
        return result
    except Exception as err:
        traceback.print_exc()
        return {"error": f"{type(err).__name__}: {err}"[:300]}
    finally:
        if handle:
            handle.remove()
        torch.cuda.empty_cache()


def bench_one(tower, label: str, layout: tuple[int, int, int] | int,
              variants: list[tuple[ipcv.IPCVConfig, alg.Kernels]], attn: str,
              device, dtype, warmup: int, repeats: int, cuda_graph: bool = False) -> list[dict]:
    """One input: the unpatched tower once, then IPCV with each config and kernel choice (rows
    share the baseline)."""
    one_frame = layout == 1 if isinstance(layout, int) else layout[0] == 1
    inp, described = random_input(layout)
    inp = inp.to(device, dtype)
    dims = vision_dims(tower)
    family = family_of(tower)
    static_args, static_kwargs = family.host_layout_call(tower, inp)

    def forward():
        with torch.inference_mode():
            return common.encode(tower, inp)

    def static_forward():
        with torch.inference_mode():
            return family.features(tower(*static_args, **static_kwargs))

    base: dict = {"input": label, **described, "attn": attn}
    rows = []
    with common.attention_context(attn):
        with record_vision_layout(tower) as recorded:
            forward()
        base["flops_base"] = vision_flops(dims, recorded)["total"]
        base["base"] = time_call(forward, device, warmup, repeats).to_dict()
        base["mem_base_mib"] = peak_memory_mib(forward, device)
        if cuda_graph:
            graphed = graphed_latency(tower, static_forward, None, device, warmup, repeats)
            base.update({f"base_graph{'' if k == 'timing' else '_' + k}": v for k, v in graphed.items()})
        for cfg, kernels in variants:
            if one_frame and cfg.budget == "per_image" and any(
                    (c.as_queries, c.budget, k) == (cfg.as_queries, "global", kernels) for c, k in variants):
                continue  # one frame: the per-frame budget is the global one, a row already measured
            row = {**base, "as_queries": cfg.as_queries, "budget": cfg.budget, "kernels": kernels.names()}
            try:  # a kernel choice that fails (e.g. a Triton that cannot compile it) costs its own row only
                rows.append(_bench_variant(tower, forward, static_forward, row, cfg, kernels, dims, device, warmup,
                                           repeats, cuda_graph))
            except Exception as err:
                traceback.print_exc()
                rows.append({**row, "error": f"{type(err).__name__}: {err}"[:160]})
    return rows


def _bench_variant(tower, forward, static_forward, row: dict, cfg: ipcv.IPCVConfig, kernels: alg.Kernels, dims,
                   device, warmup: int, repeats: int, cuda_graph: bool) -> dict:
    """One IPCV row of ``bench_one``: eager latency, FLOPs, memory and overhead, and the graphed call."""
    with alg.use_kernels(kernels), ipcv.apply(tower, vision=cfg) as handle:
        with record_vision_layout(tower) as layout:
            forward()
        stats = handle.vision_stats
        row["kept"] = stats.total_kept
        row["flops_ipcv"] = vision_flops(dims, layout, stats.neighbor_search_flops)["total"]
        row["flops_overhead"] = stats.neighbor_search_flops
        row["ipcv"] = time_call(forward, device, warmup, repeats).to_dict()
        row["mem_ipcv_mib"] = peak_memory_mib(forward, device)
        # A separate set of runs: timing the steps adds one synchronisation per call.
        handle.time_overhead = True
        overhead: list[dict[str, float]] = []

        def forward_with_overhead(overhead=overhead, handle=handle):
            forward()
            overhead.append(handle.vision_stats.overhead_ms)

        timed = time_call(forward_with_overhead, device, 1, repeats)
        overhead = overhead[1:]  # drop the warm-up call
        parts = {k: statistics.median(o[k] for o in overhead) for k in overhead[0]}
        row["overhead_ms"] = parts
        row["overhead_share"] = sum(parts.values()) / timed.median_ms
    if cuda_graph:
        with alg.use_kernels(kernels):
            graphed = graphed_latency(tower, static_forward, cfg, device, warmup, repeats)
        row.update({f"ipcv_graph{'' if k == 'timing' else '_' + k}": v for k, v in graphed.items()})
    return row


def _setting(row: dict) -> str:
    return f"{row.get('as_queries', '-')}, {row.get('budget', '-')}"


def markdown(rows: list[dict], meta: dict) -> str:
    lines = [
        f"Vision encoder ({meta['size']}: {meta['size_config']}), {meta['dtype']}, batch 1 image, "
        f"IPCV {meta['ipcv'][0]}" + (" (AS queries and budget as in each row)" if len(meta['ipcv']) > 1 else ""),
        f"Device: {meta['provenance']['device']} ({meta['provenance']['device_type']}), torch "
        f"{meta['provenance']['torch']}, transformers {meta['provenance']['transformers']}, "
        f"clock {rows[0]['base']['clock'] if rows and 'base' in rows[0] else '-'}; "
        f"latency median [p10, p90] over {meta['repeats']} repeats after {meta['warmup']} warm-up",
        "",
        "| input | attn | AS queries, budget | kernels | tokens | kept | base ms | IPCV ms | speed-up | base GFLOPs "
        "| IPCV GFLOPs | FLOPs saved | peak MiB base / IPCV | IPCV overhead (sel / nbr / restore ms) | overhead share |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['input']} | {r['attn']} | {_setting(r)} | {r.get('kernels', '-')} "
                         f"| {r.get('tokens', '-')} | unavailable: {r['error']} |")
            continue
        b, i = r["base"], r["ipcv"]
        o = r["overhead_ms"]
        mem = "n/m" if r["mem_base_mib"] is None else f"{r['mem_base_mib']:.0f} / {r['mem_ipcv_mib']:.0f}"
        lines.append(
            f"| {r['input']} | {r['attn']} | {_setting(r)} | {r['kernels']} | {r['tokens']} | {r['kept']} "
            f"| {common.spread(b)} | {common.spread(i)} "
            f"| {b['median_ms'] / i['median_ms']:.2f}x | {r['flops_base'] / 1e9:.1f} | {r['flops_ipcv'] / 1e9:.1f} "
            f"| {100 * (1 - r['flops_ipcv'] / r['flops_base']):.1f}% | {mem} "
            f"| {o.get('selection', 0):.2f} / {o.get('neighbors', 0):.2f} / {o.get('restoration', 0):.2f} "
            f"| {100 * r['overhead_share']:.1f}% |"
        )
    graphed = [r for r in rows if "error" not in r and ("base_graph" in r or "base_graph_error" in r)]
    if graphed:
        lines += ["", "CUDA graphs (both towers captured on the same host-layout call; compare only with each other):", "",
                  "| input | attn | AS queries, budget | kernels | base graph ms | IPCV graph ms | speed-up "
                  "| replay = eager (max abs diff base / IPCV) |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in graphed:
            if "base_graph" not in r or "ipcv_graph" not in r:
                why = r.get("ipcv_graph_error") or r.get("base_graph_error")
                lines.append(f"| {r['input']} | {r['attn']} | {_setting(r)} | {r['kernels']} | not captured: {why} |")
                continue
            b, i = r["base_graph"], r["ipcv_graph"]
            lines.append(
                f"| {r['input']} | {r['attn']} | {_setting(r)} | {r['kernels']} "
                f"| {common.spread(b)} | {common.spread(i)} | {b['median_ms'] / i['median_ms']:.2f}x "
                f"| {r['base_graph_replay_max_diff']:.3g} / {r['ipcv_graph_replay_max_diff']:.3g} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = common.parser(__doc__, resolutions="448,896,1344", warmup=5, repeats=20)
    parser.add_argument("--family", choices=["qwen2_vl", "internvl"], default="qwen2_vl")
    parser.add_argument("--size", choices=common.SIZES + tuple(common.INTERNVIT), default=None,
                        help="Qwen2-VL: 7b (default), small, ...; InternVL: internvit-6b (default), internvit-300m, tiny")
    parser.add_argument("--attn", default="sdpa",
                        help="comma list: eager, sdpa, sdpa-flash, flash_attention_2, torch_flash_varlen")
    parser.add_argument("--prune-layer", type=int, default=None, help="default: 3 (Qwen2-VL), 7 (InternVL)")
    parser.add_argument("--reduction-ratio", type=float, default=0.65)
    parser.add_argument("--as-layers", type=int, default=None, help="default: 7 (Qwen2-VL), 3 (InternVL)")
    parser.add_argument("--neighbors", type=int, default=10)
    parser.add_argument("--videos", default="", help="comma list of FRAMESxSIDE videos, e.g. 16x448")
    parser.add_argument("--float32-neighbour-search", action="store_true",
                        help="ablation: search neighbours of bf16/fp16 features with float32 cdist")
    parser.add_argument("--as-queries", default="all",
                        help="comma list of all, kept: the queries the Attention-Stabilization blocks compute "
                             "(IPCVConfig.as_queries); each is a row against the same baseline")
    parser.add_argument("--kernels", default="none",
                        help="comma list of IPCV kernel choices, each 'none' or names joined by '+' "
                             "(fused_rebuild, padded_product, fused_search; ipcv.algorithm.Kernels): each is a row per "
                             "AS-query mode against the same baseline; half precision on CUDA only")
    parser.add_argument("--budget", default="global",
                        help="comma list of global, per_image (IPCVConfig.budget; each a row against the same "
                             "baseline): per_image keeps floor(n (1 - r)) of every frame, so the host knows each "
                             "frame's count (a video under it can be captured as a CUDA graph)")
    parser.add_argument("--cuda-graph", action="store_true",
                        help="also time both towers captured as CUDA graphs (CUDA only)")
    args = parser.parse_args()
    if args.cuda_graph and not args.device.startswith("cuda"):
        raise SystemExit("--cuda-graph needs --device cuda: CUDA graphs replay GPU kernels")
    if args.float32_neighbour_search:
        search = alg.find_neighbors
        alg.find_neighbors = lambda removed, kept, *rest: search(removed.float(), kept.float(), *rest)

    internvl = args.family == "internvl"
    size = args.size or ("internvit-6b" if internvl else "7b")
    if (size in common.INTERNVIT) != internvl:
        raise SystemExit(f"--size {size} is not a size of --family {args.family}")
    device, dtype = torch.device(args.device), parse_dtype(args.dtype)
    budgets = args.budget.split(",")
    if not set(budgets) <= {"global", "per_image"}:
        raise SystemExit(f"--budget {args.budget}: each must be global or per_image")
    cfgs = [ipcv.IPCVConfig(
        prune_layer=args.prune_layer or (7 if internvl else 3), reduction_ratio=args.reduction_ratio,
        as_layers=args.as_layers or (3 if internvl else 7), neighbors=args.neighbors, as_queries=queries,
        budget=budget,
    ) for budget in budgets for queries in args.as_queries.split(",")]
    try:
        kernel_sets = [alg.Kernels.parse(v.replace("+", ",")) for v in args.kernels.split(",")]
    except ValueError as err:
        raise SystemExit(f"--kernels: {err}") from err
    for fused in ("fused_rebuild", "fused_search"):
        if any(getattr(k, fused) for k in kernel_sets) and not args.device.startswith("cuda"):
            raise SystemExit(f"--kernels {fused} needs --device cuda: off CUDA the torch path would run under its name")
    if any(k.any for k in kernel_sets) and args.dtype not in ("bfloat16", "float16"):
        raise SystemExit(f"--kernels acts on bfloat16 / float16 states only: in {args.dtype} the published path would "
                         "run under the kernels' name")
    variants = [(cfg, kernels) for cfg in cfgs for kernels in kernel_sets]
    inputs = parse_tiles(args.resolutions, args.videos) if internvl else parse_inputs(args.resolutions, args.videos)
    rows = []
    for attn in args.attn.split(","):
        try:
            tower = common.build(size, args.dtype, device, attn, tower_only=True, family=args.family)
        except Exception as err:  # e.g. flash_attention_2 without the flash-attn package
            rows += [{"input": label, "attn": attn, "error": f"{type(err).__name__}: {err}"[:160]} for label, _ in inputs]
            continue
        for label, grid in inputs:
            try:
                found = bench_one(tower, label, grid, variants, attn, device, dtype, args.warmup, args.repeats,
                                  args.cuda_graph)
            except Exception as err:
                traceback.print_exc()
                found = [{"input": label, "attn": attn, "error": f"{type(err).__name__}: {err}"[:160]}]
            rows += found
            for row in found:
                print(json.dumps(row), flush=True)
        del tower
    family = family_named(args.family)
    meta = {
        "family": args.family, "size": size,
        "size_config": family.size_spec(common.INTERNVIT.get(size, size) if internvl else size)["vision"],
        "dtype": args.dtype, "ipcv": [cfg.to_dict() for cfg in cfgs], "kernels": [k.names() for k in kernel_sets],
        "float32_neighbour_search": args.float32_neighbour_search,
        "cuda_graph": args.cuda_graph,
        "warmup": args.warmup, "repeats": args.repeats, "provenance": provenance(device),
        "command": common.command_line(),
    }
    common.save(args.out, meta, rows, markdown(rows, meta))


if __name__ == "__main__":
    main()
