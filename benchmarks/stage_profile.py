"""Per-stage profile of a whole Qwen2-VL model (random weights): unpatched vs. IPCV vs. IPCV + DART.

Uses the stage measurement behind ``ipcv-study profile`` (pipeline/measure/stages.py) on a
Qwen2-VL architecture size with random weights (default: Qwen2-VL-7B sizes), one synthetic image per resolution, and
writes one JSON per cell as it finishes plus a Markdown table.

    python benchmarks/stage_profile.py --device cuda --dtype bfloat16 --out results/stages_7b
"""

from __future__ import annotations

import json
import traceback

import common
import torch

import ipcv
from pipeline.measure.stages import MeasureSettings, measure_request
from pipeline.models import synthetic_spec

SETTINGS = {
    "unpatched": {},
    "ipcv": {"vision": ipcv.IPCVConfig()},
    "ipcv+dart": {"vision": ipcv.IPCVConfig(), "llm": ipcv.LLMPruneConfig(method="dart", layer=2, reduction_ratio=0.778)},
}


def _g(x) -> str:
    return "-" if x is None else f"{x / 1e9:.0f}"


def markdown(rows: list[dict], meta: dict) -> str:
    lines = [
        f"Qwen2-VL ({meta['size']}) per stage, {meta['dtype']}, {meta['attn']}, one image, {meta['max_new_tokens']} new tokens",
        f"Device: {rows[0]['provenance']['device'] if rows and 'provenance' in rows[0] else '-'}; median [p10, p90] ms over "
        f"{meta['repeats']} requests after {meta['warmup']} warm-up; GFLOPs analytic / fvcore / FlopCounterMode",
        "",
        "| res | setting | preprocess ms (CPU) | vision ms | prefill ms | decode ms/token | e2e ms | vision GFLOPs | prefill GFLOPs "
        "| peak MiB vision / prefill | KV MiB | vision tokens in → kept | LLM visual tokens in → kept |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['resolution']}² | {r['setting']} | error: {r['error']} |")
            continue
        s = r["stages"]
        flops = {n: " / ".join(_g(s[n]["flops"].get(k)) for k in ("analytic", "fvcore", "flop_counter")) for n in ("vision", "prefill")}
        mem = " / ".join("-" if s[n]["peak_memory_bytes"] is None else f"{s[n]['peak_memory_bytes'] / 2**20:.0f}"
                         for n in ("vision", "prefill"))
        kv = "-" if r["kv_cache_bytes"] is None else f"{r['kv_cache_bytes'] / 2**20:.1f}"
        vt, pt = s["vision"]["tokens"], s["prefill"]["tokens"]
        lines.append(
            f"| {r['resolution']}² | {r['setting']} | {common.spread(s['preprocess']['time'])} | {common.spread(s['vision']['time'])} "
            f"| {common.spread(s['prefill']['time'])} | {common.spread(r['decode_per_token'])} | {common.spread(s['e2e']['time'])} "
            f"| {flops['vision']} | {flops['prefill']} | {mem} | {kv} | {vt['patches_in']} → {vt['kept_after_prune_layer']} "
            f"| {pt['visual_tokens_in']} → {pt['visual_tokens_kept']} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = common.parser(__doc__, resolutions="448,896,1344", warmup=2, repeats=5)
    parser.add_argument("--size", choices=common.SIZES, default="7b")
    parser.add_argument("--attn", default="sdpa")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--settings", default=",".join(SETTINGS))
    parser.add_argument("--no-flops", action="store_true", help="skip fvcore and FlopCounterMode")
    args = parser.parse_args()
    device = torch.device(args.device)
    model = common.build(args.size, args.dtype, device, args.attn)
    settings = MeasureSettings(warmup=args.warmup, repeats=args.repeats, max_new_tokens=args.max_new_tokens,
                               count_flops=not args.no_flops)
    rows = []
    for res in [int(r) for r in args.resolutions.split(",")]:
        for name in args.settings.split(","):
            try:
                report = measure_request(model, synthetic_spec(res), model_name=f"qwen2-vl-{args.size}-random",
                                         settings=settings, **SETTINGS[name])
                row = {"resolution": res, "setting": name, **report.to_dict()}
            except Exception as err:
                traceback.print_exc()
                row = {"resolution": res, "setting": name, "error": f"{type(err).__name__}: {err}"[:200]}
            rows.append(row)
            if args.out:
                args.out.parent.mkdir(parents=True, exist_ok=True)
                path = args.out.with_name(f"{args.out.name}_{res}_{name.replace('+', '_')}.json")
                path.write_text(json.dumps(row, indent=2, default=str))
            print(f"done {res} {name}", flush=True)
    meta = {"size": args.size, "dtype": args.dtype, "attn": args.attn, "warmup": args.warmup, "repeats": args.repeats,
            "max_new_tokens": args.max_new_tokens, "command": common.command_line()}
    common.save(args.out, meta, rows, markdown(rows, meta))


if __name__ == "__main__":
    main()
