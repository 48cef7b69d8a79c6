"""LLM prefill benchmark: unpruned vs. DART vs. FastV vs. each stacked with IPCV.

Builds a whole Qwen2-VL model with random weights (default: Qwen2-VL-7B sizes: LLM width 3584,
28 layers, 28 heads / 4 KV heads, MLP 18944, vocabulary 152064; vision depth 32, width 1280),
sends one image plus a 32-token text prompt, and times the vision encoder and the language
model's prefill separately (forward hooks, CUDA events) in a ``generate``-style prefill forward
(``logits_to_keep=1``, cache on). Reports analytic FLOPs (2 per multiply-add; see
pipeline/measure/llm_flops.py and pipeline/measure/vision_flops.py), image tokens entering / kept in the LLM and
KV-cache bytes. ``--size small`` is a reduced model for CPUs, labelled as such.

    python benchmarks/llm_prefill.py --device cuda --dtype bfloat16
    python benchmarks/llm_prefill.py --device cpu --size small --dtype float32 --resolutions 224,448 --repeats 3
"""

from __future__ import annotations

import json
import traceback

import common
import torch

import ipcv
from ipcv.llm import cache_bytes
from pipeline.measure.llm_flops import prefill_flops, record_llm_layout
from pipeline.measure.timing import StageClock, clock_name, provenance, summarize
from pipeline.measure.vision_flops import record_vision_layout, vision_dims, vision_flops
from pipeline.models import parse_dtype
from pipeline.models.qwen_vl import MERGE, PATCH, random_patches

METHODS = {
    "baseline": dict(),
    "dart": dict(llm=ipcv.LLMPruneConfig(method="dart", layer=2, reduction_ratio=0.778)),
    "fastv": dict(llm=ipcv.LLMPruneConfig(method="fastv", layer=2, reduction_ratio=0.778)),
    "ipcv": dict(vision=ipcv.IPCVConfig()),
    "ipcv+dart": dict(vision=ipcv.IPCVConfig(), llm=ipcv.LLMPruneConfig(method="dart", layer=2, reduction_ratio=0.778)),
    "ipcv+fastv": dict(vision=ipcv.IPCVConfig(), llm=ipcv.LLMPruneConfig(method="fastv", layer=2, reduction_ratio=0.778)),
}


def make_request(size: str, resolution: int, device: torch.device, dtype: torch.dtype) -> dict:
    tokens = common.FAMILY.size_spec(size)["tokens"]
    side = resolution // PATCH
    inp = random_patches([(1, side, side)], seed=resolution)
    n = side * side // (MERGE * MERGE)
    text = torch.randint(10, 1000, (32,), generator=torch.Generator().manual_seed(0)).tolist()
    ids = [tokens["vision_start_token_id"]] + [tokens["image_token_id"]] * n + [tokens["vision_end_token_id"]] + text
    types = [0] + [1] * n + [0] + [0] * len(text)
    input_ids = torch.tensor([ids], device=device)
    return dict(
        input_ids=input_ids,
        attention_mask=torch.ones_like(input_ids),
        mm_token_type_ids=torch.tensor([types], device=device),
        pixel_values=inp.pixel_values.to(device, dtype),
        image_grid_thw=inp.grid_thw.to(device),
        logits_to_keep=1,
        use_cache=True,
    )


def bench(model, request, method: str, warmup: int, repeats: int, device) -> dict:
    lm, tower = common.FAMILY.language_model(model), common.FAMILY.tower(model)
    settings = METHODS[method]
    row: dict = {"method": method}
    with ipcv.apply(model, **settings) as handle:
        with torch.inference_mode():
            with record_llm_layout(lm, common.FAMILY.lm_head(model)) as llm_layout, record_vision_layout(tower) as vis_layout:
                out = model(**request)
            stats = handle.llm_stats
            selection = stats.selection_flops if stats else 0
            row["prefill_flops"] = prefill_flops(common.FAMILY.llm_dims(lm.config), llm_layout, selection)["total"]
            vision_extra = handle.vision_stats.neighbor_search_flops if handle.vision_stats else 0
            row["vision_flops"] = vision_flops(vision_dims(tower), vis_layout, vision_extra)["total"]
            n_image = int((request["input_ids"] == model.config.image_token_id).sum())
            row["image_tokens_llm"] = n_image
            row["image_tokens_kept"] = stats.image_tokens_kept[0] if stats else n_image
            row["kv_cache_mib"] = cache_bytes(out.past_key_values) / 2**20
            del out
            with StageClock({"vision": tower, "prefill": lm}, device) as clock:
                for _ in range(warmup):
                    model(**request)
                clock.take()
                samples = {"vision": [], "prefill": []}
                for _ in range(repeats):
                    model(**request)
                    for name, values in clock.take().items():
                        samples[name] += values
    for name, values in samples.items():
        row[name] = summarize(values, warmup, clock_name(device)).to_dict()
    return row


def markdown(rows: list[dict], meta: dict) -> str:
    lines = [
        f"Qwen2-VL ({meta['size']}) prefill, {meta['dtype']}, {meta['attn']}, one image + 32 text tokens, "
        f"LLM pruning at layer 2 with r'=0.778, IPCV K=3 r=0.65 A=7 k=10",
        f"Device: {meta['provenance']['device']}, torch {meta['provenance']['torch']}, transformers "
        f"{meta['provenance']['transformers']}; median [p10, p90] ms over {meta['repeats']} repeats after {meta['warmup']} warm-up",
        "",
        "| res | method | image tokens to LLM → kept | vision ms | prefill ms | vision GFLOPs | prefill GFLOPs | KV cache MiB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['resolution']}² | {r['method']} | error: {r['error']} |")
            continue
        v, p = r["vision"], r["prefill"]
        lines.append(
            f"| {r['resolution']}² | {r['method']} | {r['image_tokens_llm']} → {r['image_tokens_kept']} "
            f"| {v['median_ms']:.2f} [{v['p10_ms']:.2f}, {v['p90_ms']:.2f}] "
            f"| {p['median_ms']:.2f} [{p['p10_ms']:.2f}, {p['p90_ms']:.2f}] "
            f"| {r['vision_flops'] / 1e9:.1f} | {r['prefill_flops'] / 1e9:.1f} | {r['kv_cache_mib']:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = common.parser(__doc__, resolutions="448,896,1344", warmup=3, repeats=10)
    parser.add_argument("--size", choices=common.SIZES, default="7b")
    parser.add_argument("--attn", default="sdpa")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma list of " + ", ".join(METHODS))
    args = parser.parse_args()
    device, dtype = torch.device(args.device), parse_dtype(args.dtype)
    model = common.build(args.size, args.dtype, device, args.attn)
    rows = []
    for res in [int(r) for r in args.resolutions.split(",")]:
        request = make_request(args.size, res, device, dtype)
        for method in args.methods.split(","):
            try:
                row = {"resolution": res, **bench(model, request, method, args.warmup, args.repeats, device)}
            except Exception as err:
                traceback.print_exc()
                row = {"resolution": res, "method": method, "error": f"{type(err).__name__}: {err}"[:160]}
            rows.append(row)
            print(json.dumps(row), flush=True)
    meta = {
        "size": args.size, "size_config": common.FAMILY.size_spec(args.size), "dtype": args.dtype, "attn": args.attn,
        "warmup": args.warmup, "repeats": args.repeats, "provenance": provenance(device),
        "command": common.command_line(),
    }
    common.save(args.out, meta, rows, markdown(rows, meta))


if __name__ == "__main__":
    main()
