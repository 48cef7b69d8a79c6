"""LLM prefill benchmark: unpruned vs. DART vs. FastV vs. each stacked with IPCV.

Builds a whole Qwen2-VL model with random weights (default: Qwen2-VL-7B sizes: LLM width 3584,
28 layers, 28 heads / 4 KV heads, MLP 18944, vocabulary 152064; vision depth 32, width 1280),
sends one image plus a 32-token text prompt, and times the vision encoder and the language
model's prefill separately (forward hooks, CUDA events) in a ``generate``-style prefill forward
(``logits_to_keep=1``, cache on). Reports analytic FLOPs (2 per multiply-add; see
pipeline/measure/llm_flops.py and pipeline/measure/vision_flops.py), image tokens entering / kept in the LLM and
KV-cache bytes. ``--size small`` is a reduced model for CPUs, labelled as such. ``--family internvl --size 8b``
(or 38b, ...) measures an InternVL3 architecture: the image is cut into InternVL's 448² tiles
(1, 5, 10 at 448², 896², 1344²) and IPCV runs the published InternVL3-38B setting (K=7, A=3).

    python benchmarks/llm_prefill.py --device cuda --dtype bfloat16
    python benchmarks/llm_prefill.py --device cpu --size small --dtype float32 --resolutions 224,448 --repeats 3
    python benchmarks/llm_prefill.py --device cuda --dtype bfloat16 --family internvl --size 8b
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
from pipeline.models import family_named, family_of, parse_dtype, synthetic_spec
from pipeline.models.qwen_vl import MERGE, PATCH, random_patches

METHODS = {
    "baseline": dict(),
    "dart": dict(llm=ipcv.LLMPruneConfig(method="dart", layer=2, reduction_ratio=0.778)),
    "fastv": dict(llm=ipcv.LLMPruneConfig(method="fastv", layer=2, reduction_ratio=0.778)),
    "ipcv": dict(vision=ipcv.IPCVConfig()),
    "ipcv+dart": dict(vision=ipcv.IPCVConfig(), llm=ipcv.LLMPruneConfig(method="dart", layer=2, reduction_ratio=0.778)),
    "ipcv+fastv": dict(vision=ipcv.IPCVConfig(), llm=ipcv.LLMPruneConfig(method="fastv", layer=2, reduction_ratio=0.778)),
}
# InternVL: the published InternVL3-38B vision setting (K=7, A=3) in place of Qwen2-VL's (K=3, A=7)
INTERNVL_IPCV = ipcv.IPCVConfig(prune_layer=7, as_layers=3)
TEXT_WORDS = 32


def methods_for(family: str) -> dict[str, dict]:
    if family != "internvl":
        return METHODS
    return {name: {**m, "vision": INTERNVL_IPCV} if "vision" in m else m for name, m in METHODS.items()}


def make_internvl_request(model, resolution: int, device: torch.device, dtype: torch.dtype) -> dict:
    """A square synthetic image of side ``resolution`` cut into InternVL's tiles, and a 32-word
    prompt, through the family's request builder."""
    prompt = " ".join(f"w{i}" for i in range(TEXT_WORDS))
    built = family_of(model).request_builder(model)(synthetic_spec(resolution, prompt=prompt))
    return {**{k: (v.to(device, dtype) if k == "pixel_values" else v.to(device)) for k, v in built.items()},
            "logits_to_keep": 1, "use_cache": True}


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
    family = family_of(model)
    lm = family.language_model(model)
    settings = methods_for(family.key)[method]
    row: dict = {"method": method}
    with ipcv.apply(model, **settings) as handle:
        with torch.inference_mode():
            with record_llm_layout(lm, family.lm_head(model)) as llm_layout, record_vision_layout(model) as vis_layout:
                out = model(**request)
            stats = handle.llm_stats
            selection = stats.selection_flops if stats else 0
            row["prefill_flops"] = prefill_flops(family.llm_dims(lm.config), llm_layout, selection)["total"]
            vision_extra = handle.vision_stats.neighbor_search_flops if handle.vision_stats else 0
            row["vision_flops"] = vision_flops(vision_dims(model), vis_layout, vision_extra)["total"]
            n_image = int((request["input_ids"] == model.config.image_token_id).sum())
            row["image_tokens_llm"] = n_image
            row["image_tokens_kept"] = stats.image_tokens_kept[0] if stats else n_image
            row["kv_cache_mib"] = cache_bytes(out.past_key_values) / 2**20
            del out
            with StageClock({"vision": family.vision_span(model), "prefill": lm}, device) as clock:
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
    vision = "K=7 r=0.65 A=3 k=10" if meta.get("family") == "internvl" else "K=3 r=0.65 A=7 k=10"
    lines = [
        f"{meta.get('family', 'qwen2_vl')} ({meta['size']}) prefill, {meta['dtype']}, {meta['attn']}, one image + "
        f"{TEXT_WORDS} text tokens, LLM pruning at layer 2 with r'=0.778, IPCV {vision}",
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
            f"| {common.spread(v)} | {common.spread(p)} "
            f"| {r['vision_flops'] / 1e9:.1f} | {r['prefill_flops'] / 1e9:.1f} | {r['kv_cache_mib']:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = common.parser(__doc__, resolutions="448,896,1344", warmup=3, repeats=10)
    parser.add_argument("--family", choices=["qwen2_vl", "internvl"], default="qwen2_vl")
    parser.add_argument("--size", default="7b", help="an architecture size of the family (Qwen2-VL: 7b, small, ...; "
                                                     "InternVL3: 1b, 2b, 8b, 14b, 38b, 78b, tiny)")
    parser.add_argument("--attn", default="sdpa")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma list of " + ", ".join(METHODS))
    args = parser.parse_args()
    sizes = family_named(args.family).sizes()
    if args.size not in sizes:
        raise SystemExit(f"--size {args.size} is not a size of {args.family}: {', '.join(sizes)}")
    device, dtype = torch.device(args.device), parse_dtype(args.dtype)
    model = common.build(args.size, args.dtype, device, args.attn, family=args.family)
    rows = []
    for res in [int(r) for r in args.resolutions.split(",")]:
        if args.family == "internvl":
            request = make_internvl_request(model, res, device, dtype)
        else:
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
        "family": args.family, "size": args.size, "size_config": family_named(args.family).size_spec(args.size),
        "dtype": args.dtype, "attn": args.attn,
        "warmup": args.warmup, "repeats": args.repeats, "provenance": provenance(device),
        "command": common.command_line(),
    }
    common.save(args.out, meta, rows, markdown(rows, meta))


if __name__ == "__main__":
    main()
