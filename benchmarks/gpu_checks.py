"""Correctness checks that only a GPU can run: IPCV under bf16/fp16 CUDA kernels and the
FlashAttention backend, at the Qwen2-VL-7B vision-encoder size (random weights), the kernel
choices of ``ipcv.algorithm.Kernels`` (the fused Triton rebuild, the padded distance product, the
fused Triton neighbour search) against the torch path, and the tower on PyTorch's varlen flash
kernel (``torch_flash_varlen``) against its sdpa loop.

    python benchmarks/gpu_checks.py
    python benchmarks/gpu_checks.py --only kernels,varlen
Prints one line per check with PASS/FAIL and the figures behind it; exits non-zero on a failure.
"""

from __future__ import annotations

import contextlib
import itertools
import sys

import common
import torch

import ipcv
from ipcv import algorithm as alg
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
    parser.add_argument("--only", default="all", help="comma list of ipcv, kernels, varlen (default: all)")
    args = parser.parse_args()
    only = {"ipcv", "kernels", "varlen"} if args.only == "all" else set(args.only.split(","))
    if not only <= {"ipcv", "kernels", "varlen"}:
        parser.error(f"--only {args.only}: choose from all, ipcv, kernels, varlen")
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(name, "torch", torch.__version__, flush=True)
    if "ipcv" in only:
        check_ipcv(device, args.size)
    if "kernels" in only:
        check_kernel_choices(device, args.size)
    if "varlen" in only:
        check_varlen(device, args.size)
    sys.exit(1 if failures else 0)


def _ulps(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest difference of two results in units of bf16's last place (of the larger, 2^-7 of it:
    an upper bound of the ulp, so a correctly rounded result measures at most about 0.5)."""
    scale = torch.maximum(a.double().abs(), b.double().abs()).clamp(min=2 ** -14) * 2 ** -7
    return float(((a.double() - b.double()).abs() / scale).max())


def check_kernel_choices(device: torch.device, size: str) -> None:
    """Each choice of ``alg.Kernels`` against the torch path on bf16 states of the encoder's width:
    one rebuild within one rounding, neighbour sets of the padded product and of the fused search,
    and whole towers (one 1344² image, 16 frames at 448²) within bf16 noise of the torch path."""
    try:
        from ipcv import rebuild_kernel, search_kernel
    except ImportError as err:
        fused_ok = search_ok = False
        print(f"INFO fused rebuild and search not checked: {err}", flush=True)
    else:  # on a CPU only through Triton's interpreter (TRITON_INTERPRET=1: a dry run of this script)
        fused_ok = device.type == "cuda" or rebuild_kernel.INTERPRETED
        search_ok = fused_ok and search_kernel.HAS_TOPK
    if fused_ok and not search_ok:
        print("INFO fused search not checked: this Triton has no tl.topk", flush=True)
    width = 1280 if size == "7b" else 512
    g = torch.Generator(device=device).manual_seed(11)
    n = 9216 if size == "7b" else 1024
    states = torch.randn(n, width, device=device, generator=g).to(torch.bfloat16)
    keep = alg.kept_count(n, 0.65)
    kept, removed = alg.select_and_split(torch.rand(n, device=device, generator=g), [n], [keep])
    kept_states, removed_states = states[kept], states[removed]
    index, weight = alg.find_neighbors(removed_states, kept_states, 10)
    with alg.use_kernels(alg.Kernels(padded_product=True)):
        padded_index, _ = alg.find_neighbors(removed_states, kept_states, 10)
    same_rows = (index.sort(dim=1).values == padded_index.sort(dim=1).values).all(dim=1).float().mean().item()
    report(f"padded product neighbour sets ({n} tokens, width {width})", same_rows >= 0.999,
           f"{100 * same_rows:.3f}% of {removed.numel()} rows identical")
    check_fused_search(removed_states, kept_states, index, search_ok)
    drifted = (kept_states.float() + torch.randn(kept_states.shape, device=device, generator=g)).to(torch.bfloat16)
    if fused_ok:
        exact = states.double()  # the float64 rebuild: anchor + mean drift of the neighbours
        exact[removed] += (drifted.double() - kept_states.double())[index].mean(dim=1)
        exact[kept] = drifted.double()
        # one rounding to nearest of a float32 sum: half an ulp (Triton's CPU interpreter truncates
        # to bf16 instead: a whole ulp there)
        bound = 1.0 if device.type != "cuda" else 0.51
        for uniform in (True, False):
            torch_path = alg.Reconstruction(kept_states, removed_states, index, weight, uniform=uniform)
            with alg.use_kernels(alg.Kernels(fused_rebuild=True)):
                fused = alg.Reconstruction(kept_states, removed_states, index, weight, uniform=uniform)
            a, b = torch_path.full(drifted, kept, removed), fused.full(drifted, kept, removed)
            report(f"fused rebuild {'uniform' if uniform else 'weighted'} ({n} tokens)",
                   fused.fused is not None and _ulps(a, b) <= 1.0 and _ulps(b, exact) <= bound,
                   f"max {_ulps(a, b):.2f} bf16 ulps from the torch path; from the float64 rebuild: fused "
                   f"{_ulps(b, exact):.3f}, torch path {_ulps(a, exact):.3f} (one rounding: 0.5)")
    tower = common.build(size, "bfloat16", device, "sdpa", tower_only=True)
    side = 96 if size == "7b" else 32
    choices = ["padded_product"] + (["fused_rebuild", "fused_rebuild,padded_product"] if fused_ok else [])
    choices += ["fused_search", "fused_rebuild,fused_search"] if search_ok else []
    for label, layout in ((f"{side * 14}²", [(1, side, side)]), ("16 frames x 448²", [(8, 32, 32)])):
        inp = random_patches(layout, seed=2).to(device, torch.bfloat16)
        outs = {}
        for choice in ["none", *choices]:
            with alg.use_kernels(alg.Kernels.parse(choice)), torch.inference_mode():
                with ipcv.apply(tower, vision=ipcv.IPCVConfig(as_queries="kept")):
                    outs[choice] = common.encode(tower, inp).float()
        plain_cos = None
        with torch.inference_mode():
            with ipcv.apply(tower, vision=ipcv.IPCVConfig(as_queries="kept")):  # the torch path run twice
                again = common.encode(tower, inp).float()
            plain_cos = torch.nn.functional.cosine_similarity(again, outs["none"], dim=-1).min().item()
        for choice in choices:
            cos = torch.nn.functional.cosine_similarity(outs[choice], outs["none"], dim=-1)
            report(f"{size} bf16 {label} kernels {choice}", bool(cos.min() >= 0.999),
                   f"cosine to the torch path min {cos.min():.5f} mean {cos.mean():.6f} "
                   f"(torch path against itself: min {plain_cos:.5f})")
    del tower


def check_fused_search(removed: torch.Tensor, kept: torch.Tensor, index: torch.Tensor, run: bool) -> None:
    """The fused search's neighbour sets against the torch path's (``index``), and both against
    the float64 distances: a row may differ only where float32 rounding reorders near-equidistant
    kept tokens, so every chosen neighbour must lie within float32 rounding of the true k-th
    nearest distance."""
    if not run:
        return
    k = index.shape[1]
    with alg.use_kernels(alg.Kernels(fused_search=True)):
        fused, _ = alg.find_neighbors(removed, kept, k)
    same = (fused.sort(dim=1).values == index.sort(dim=1).values).all(dim=1)
    exact = kept.double().square().sum(1)[None, :] - 2 * removed.double() @ kept.double().T
    kth = exact.sort(dim=1).values[:, k - 1]
    scale = exact.abs().amax(dim=1)  # float32 sums of terms this large round at ~2^-24 of it
    excess = {name: ((exact.gather(1, chosen).amax(dim=1) - kth) / scale).max().item()
              for name, chosen in (("fused", fused), ("torch", index))}
    report(f"fused search neighbour sets ({removed.shape[0]} x {kept.shape[0]}, width {removed.shape[1]})",
           bool(same.float().mean() >= 0.99) and excess["fused"] <= 1e-5,
           f"{100 * same.float().mean().item():.3f}% of rows identical to the torch path; farthest chosen neighbour "
           f"beyond the true k-th, relative to the row's largest distance: fused {excess['fused']:.2e}, torch path "
           f"{excess['torch']:.2e} (float32 rounding ~6e-8 per term)")


def check_ipcv(device: torch.device, size: str) -> None:
    """IPCV at the encoder's size under sdpa and FlashAttention, and the tiny models in bf16/fp16."""
    inp = random_patches([(1, 64, 64), (1, 32, 48)], seed=0).to(device, torch.bfloat16)  # 896^2, 448x672
    tower = common.build(size, "bfloat16", device, "sdpa", tower_only=True)
    outs, kept, plain = {}, {}, {}
    for attn in ("sdpa", "sdpa-flash") if device.type == "cuda" else ("sdpa", "eager"):
        with common.attention_context(attn), torch.inference_mode():
            reference = common.encode(tower, inp)
            plain[attn] = reference.float()
            with ipcv.apply(tower, vision=ipcv.IPCVConfig(reduction_ratio=0.0)):
                same = common.encode(tower, inp)
            report(f"{size} bf16 {attn} ratio 0 bit-identical", torch.equal(same, reference), f"{tuple(same.shape)}")
            with ipcv.apply(tower, vision=ipcv.IPCVConfig()) as handle:
                outs[attn] = common.encode(tower, inp).float()
                kept[attn] = set(handle.vision_stats.kept_index.tolist())
                cos = torch.nn.functional.cosine_similarity(outs[attn], reference.float(), dim=-1)
            report(
                f"{size} bf16 {attn} IPCV runs", bool(torch.isfinite(outs[attn]).all()),
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
        f"INFO {size} bf16 {name_a} vs {name_b}: cosine min/mean unpatched {plain_cos.min():.4f}/"
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


def check_varlen(device: torch.device, size: str) -> None:
    """The tower on ``torch_flash_varlen`` against its sdpa loop, on the same bf16 weights: 16
    frames at 448² and a 448×672 image in one call (segments of two sizes), unpatched and under
    IPCV (kept queries; global and per-image budget). Two bf16 kernels round differently, so both
    are held to the float32 copy of the tower: the varlen path must be as close to it as sdpa is.
    Also counted: kernel calls per forward (one per block, whatever the number of segments)."""
    if device.type != "cuda":
        print("INFO torch_flash_varlen not checked: PyTorch's varlen kernel is CUDA only", flush=True)
        return
    import copy

    from pipeline.models import attention

    check_varlen_kernel(device)
    inp = random_patches([(8, 32, 32), (1, 32, 48)], seed=3)
    tower = common.build(size, "bfloat16", device, "sdpa", tower_only=True)
    settings = [None, *(ipcv.IPCVConfig(as_queries="kept", budget=b) for b in ("global", "per_image"))]

    def run(model, dtype, cfg):
        with torch.inference_mode(), (ipcv.apply(model, vision=cfg) if cfg else contextlib.nullcontext()) as handle:
            out = common.encode(model, inp.to(device, dtype)).double()
            return out, (set(handle.vision_stats.kept_index.tolist()) if cfg else None)

    exact = copy.deepcopy(tower).float()
    reference = [run(exact, torch.float32, cfg)[0] for cfg in settings]
    del exact
    calls = []
    kernel = attention._kernel

    def counted():
        calls.append(1)
        return kernel()

    results = {"sdpa": [run(tower, torch.bfloat16, cfg) for cfg in settings]}
    attention.use_torch_flash_varlen(tower)
    attention._kernel = counted
    try:
        results["varlen"] = []
        for cfg in settings:
            calls.clear()
            results["varlen"].append((*run(tower, torch.bfloat16, cfg), len(calls)))
    finally:
        attention._kernel = kernel
    depth = len(tower.blocks)
    for i, cfg in enumerate(settings):
        label = "unpatched" if cfg is None else f"IPCV kept queries, {cfg.budget} budget"
        (sdpa_out, sdpa_kept), (varlen_out, varlen_kept, n_calls) = results["sdpa"][i], results["varlen"][i]
        cos = {name: torch.nn.functional.cosine_similarity(out, reference[i], dim=-1)
               for name, out in (("sdpa", sdpa_out), ("varlen", varlen_out))}
        # Under IPCV a near-tie at the budget's edge may keep another token (as bf16 against float32
        # does, 0.3-0.7% of them): the tokens rebuilt from it differ, so the mean and the kept sets
        # are held, not the worst token.
        overlap = 1.0 if cfg is None else len(sdpa_kept & varlen_kept) / len(sdpa_kept)
        close = cos["varlen"].mean() >= cos["sdpa"].mean() - 1e-3 and overlap >= 0.98
        if cfg is None:
            close = close and cos["varlen"].min() >= cos["sdpa"].min() - 1e-2
        report(f"{size} bf16 torch_flash_varlen {label}", n_calls == depth and close,
               f"{n_calls} kernel calls ({depth} blocks); cosine to float32 min/mean varlen "
               f"{cos['varlen'].min():.5f}/{cos['varlen'].mean():.6f}, sdpa {cos['sdpa'].min():.5f}/"
               f"{cos['sdpa'].mean():.6f}" + ("" if cfg is None else f"; kept-set overlap with sdpa {overlap:.4f}"))
    del tower


def check_varlen_kernel(device: torch.device) -> None:
    """``torch_flash_varlen`` on what IPCV hands it under the global budget: query segments that
    are empty or shorter than their keys', and the longest segment given exactly or as an upper
    bound, against float32 sdpa per segment. Also says which backend ``varlen_attn`` took (newer
    PyTorch may route it to cuDNN, which these calls were not written against)."""
    import inspect

    from torch.nn.attention import varlen as varlen_module

    from pipeline.models import attention

    choose = getattr(varlen_module, "_should_use_cudnn", None)
    try:
        routes = "cuDNN" if choose is not None and choose(device.index or 0) else "flash"
    except TypeError:
        routes = f"chosen per call ({inspect.signature(choose)})"
    pinned = "num_splits" in inspect.signature(varlen_module.varlen_attn).parameters
    print(f"INFO varlen_attn, torch {torch.__version__}: its own choice of backend here {routes}; "
          f"torch_flash_varlen {'pins the flash kernel (num_splits=1)' if pinned else 'takes that choice'}", flush=True)
    g = torch.Generator(device=device).manual_seed(5)
    q_lengths, k_lengths, heads, dim = [0, 300, 0, 517, 64], [128, 700, 32, 1024, 64], 16, 80
    q, k, v = (torch.randn(1, heads, sum(n), dim, device=device, generator=g).to(torch.bfloat16)
               for n in (q_lengths, k_lengths, k_lengths))
    cu_q, cu_k = (torch.tensor([0, *itertools.accumulate(n)], device=device, dtype=torch.int32)
                  for n in (q_lengths, k_lengths))
    reference = torch.cat([torch.nn.functional.scaled_dot_product_attention(a.float(), b.float(), c.float())
                           for a, b, c in zip(q.split(q_lengths, 2), k.split(k_lengths, 2), v.split(k_lengths, 2))
                           if a.shape[2]], dim=2).transpose(1, 2)
    outs = {}
    for name, (max_q, max_k) in (("exact", (max(q_lengths), max(k_lengths))), ("bound", (sum(q_lengths), 1024))):
        outs[name], _ = attention.torch_flash_varlen(None, q, k, v, None, scaling=dim**-0.5, cu_seq_lens_q=cu_q,
                                                     cu_seq_lens_k=cu_k, max_length_q=max_q, max_length_k=max_k)
    errors = {name: (out.float() - reference).abs().max().item() for name, out in outs.items()}
    report("torch_flash_varlen kernel, empty and short query segments, exact and bounded longest",
           max(errors.values()) < 2e-2 and all(torch.isfinite(o).all() for o in outs.values()),
           f"max abs error to float32 sdpa: exact {errors['exact']:.2e}, bound {errors['bound']:.2e}; "
           f"exact and bound bit-identical: {torch.equal(outs['exact'], outs['bound'])}")


if __name__ == "__main__":
    main()
