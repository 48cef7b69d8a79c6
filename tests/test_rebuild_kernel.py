"""The fused NGR rebuild (ipcv/rebuild_kernel.py, Triton) against the torch path and a float64 sum,
and the padded distance product against the unpadded one.

No GPU here: the kernel runs through Triton's interpreter, which must be switched on before
Triton is imported, so those checks run in a fresh interpreter (``_run_interpreted``); they are
skipped where the ``triton`` package is missing (CI installs it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from ipcv import algorithm as alg

ROOT = Path(__file__).resolve().parents[1]


def _run_interpreted(body: str) -> dict:
    """``body`` (which sets ``result``) run with TRITON_INTERPRET=1; the ``result`` it printed."""
    pytest.importorskip("triton")
    script = "import json, torch\n" + textwrap.dedent(body) + "\nprint('RESULT ' + json.dumps(result))\n"
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


@pytest.mark.kernel
def test_fused_rebuild_equals_the_torch_path_and_the_float64_sum():
    """Uniform (unscoped) and weighted (scoped, with a token short of neighbours) rebuilds, bf16 and
    fp16, a width that is not a multiple of the kernel's column block: kept rows are copied
    bit for bit, rebuilt rows are within one rounding of the output dtype of the float64 sum, and
    of the torch path."""
    result = _run_interpreted("""
        from ipcv import algorithm as alg, rebuild_kernel
        result = []
        g = torch.Generator().manual_seed(3)
        for dtype in (torch.bfloat16, torch.float16):
            for scoped in (False, True):
                n, width, k = 90, 300, 5
                states = (torch.randn(n, width, generator=g) * 4).to(dtype)
                kept = torch.randperm(n, generator=g)[:31].sort().values
                removed = torch.tensor(sorted(set(range(n)) - set(kept.tolist())))
                kept_anchor, removed_anchor = states[kept], states[removed]
                kept_now = (kept_anchor.float() + torch.randn(31, width, generator=g)).to(dtype)
                seg = (torch.arange(n) * 3 // n, None)
                if scoped:  # the last removed token gets a segment with no kept token: no neighbours
                    seg_r, seg_k = seg[0][removed].clone(), seg[0][kept]
                    seg_r[-1] = 7
                    index, weight = alg.find_neighbors(removed_anchor, kept_anchor, k, seg_r, seg_k)
                else:
                    index, weight = alg.find_neighbors(removed_anchor, kept_anchor, k)
                torch_path = alg.Reconstruction(kept_anchor, removed_anchor, index, weight, uniform=not scoped)
                expected = torch_path.full(kept_now, kept, removed)
                with alg.use_kernels(alg.Kernels(fused_rebuild=True)):
                    fused_recon = alg.Reconstruction(kept_anchor, removed_anchor, index, weight, uniform=not scoped)
                assert fused_recon.fused is rebuild_kernel and torch_path.fused is None
                fused = fused_recon.full(kept_now, kept, removed)
                # float64: anchor + weighted drift of the neighbours
                drift = (kept_now.double() - kept_anchor.double())[index]
                w = weight.double()[..., None]
                exact = states.double().clone()
                exact[removed] = removed_anchor.double() + (w * drift).sum(dim=1)
                exact[kept] = kept_now.double()
                ulp = exact.abs().clamp(min=2 ** -14) * (2 ** -7 if dtype == torch.bfloat16 else 2 ** -10)
                result.append({
                    "dtype": str(dtype), "scoped": scoped, "out_dtype": str(fused.dtype),
                    "kept_rows_equal": torch.equal(fused[kept], kept_now),
                    "short_token_at_anchor": torch.equal(fused[removed[-1]], removed_anchor[-1]) if scoped else True,
                    "max_ulps_from_float64": float(((fused.double() - exact).abs() / ulp).max()),
                    "max_ulps_from_torch_path": float(((fused.double() - expected.double()).abs() / ulp).max()),
                    "torch_path_ulps_from_float64": float(((expected.double() - exact).abs() / ulp).max()),
                })
    """)
    assert len(result) == 4
    for case in result:
        assert case["out_dtype"] == case["dtype"], case
        assert case["kept_rows_equal"] and case["short_token_at_anchor"], case
        # one rounding to nearest of a float32 sum: half an ulp of the float64 sum (plus float32's own
        # 2^-24, a thousandth of an fp16 ulp). Triton's interpreter converts float32 to bf16 by
        # truncation (a GPU rounds to nearest), so bf16 gets one whole ulp here; gpu_checks.py
        # --only kernels holds the GPU to the half ulp.
        bound = 1.0 if case["dtype"] == "torch.bfloat16" else 0.501
        assert case["max_ulps_from_float64"] <= bound, case
        assert case["torch_path_ulps_from_float64"] <= 0.501, case
        assert case["max_ulps_from_torch_path"] <= 1.0, case


def test_fused_rebuild_in_a_patched_tower_keeps_the_selection_and_the_outputs():
    """A bf16 Qwen2-VL tower (two images, both AS-query modes) and an InternViT tower: with the fused
    rebuild the kept tokens are the same and the outputs agree with the torch path's to bf16 noise;
    in float32 the choice changes nothing (the published path always runs)."""
    result = _run_interpreted("""
        import ipcv
        from ipcv import algorithm as alg, rebuild_kernel
        from pipeline.models import build_tiny
        from pipeline.models.qwen_vl import random_patches
        from tests.conftest import TWO_IMAGES, run_tower
        from tests.test_internvl_ipcv import pixels, tiny_internvl
        result = []
        images = random_patches(TWO_IMAGES, seed=0)
        calls = []
        launch = rebuild_kernel.rebuild_full
        rebuild_kernel.rebuild_full = lambda *a, **kw: calls.append(1) or launch(*a, **kw)

        def cosine(a, b):
            return float(torch.nn.functional.cosine_similarity(a.double().flatten(), b.double().flatten(), dim=0))

        for dtype in ("bfloat16", "float32"):
            for queries in ("all", "kept"):
                model = build_tiny("tiny-qwen2-vl", seed=0, dtype=dtype)
                outs = {}
                calls.clear()
                for fused in (False, True):
                    with alg.use_kernels(alg.Kernels(fused_rebuild=fused)):
                        with ipcv.apply(model, vision=ipcv.IPCVConfig(as_queries=queries)) as handle:
                            outs[fused] = (run_tower(model.model.visual, images).last_hidden_state,
                                           handle.vision_stats.kept_index)
                result.append({"tower": "qwen2-vl", "dtype": dtype, "queries": queries,
                               "same_kept": torch.equal(outs[False][1], outs[True][1]),
                               "identical": torch.equal(outs[False][0], outs[True][0]),
                               "cosine": cosine(outs[False][0], outs[True][0]), "kernel_calls": len(calls)})
        calls.clear()
        model = tiny_internvl().to(torch.bfloat16)
        tower = model.model.vision_tower
        tiles = pixels(3).to(torch.bfloat16)
        outs = {}
        for fused in (False, True):
            with alg.use_kernels(alg.Kernels(fused_rebuild=fused)):
                with ipcv.apply(model, vision=ipcv.IPCVConfig(prune_layer=3, as_layers=3)) as handle:
                    with torch.no_grad():
                        outs[fused] = (tower(pixel_values=tiles).last_hidden_state, handle.vision_stats.kept_index)
        result.append({"tower": "internvit", "dtype": "bfloat16", "queries": "all",
                       "same_kept": torch.equal(outs[False][1], outs[True][1]),
                       "identical": torch.equal(outs[False][0], outs[True][0]),
                       "cosine": cosine(outs[False][0], outs[True][0]), "kernel_calls": len(calls)})
    """)
    print(result)
    assert len(result) == 5
    for case in result:
        assert case["same_kept"], case
        if case["dtype"] == "float32":
            assert case["identical"] and case["kernel_calls"] == 0, case
        else:  # one kernel per rebuild: every AS block and the last block
            assert case["kernel_calls"] == (8 if case["tower"] == "qwen2-vl" else 4), case
            assert case["cosine"] > 0.9999, case


@pytest.mark.kernel
def test_padded_distance_product_finds_the_same_neighbours():
    """Padding the kept side (to a multiple of 8 rows) changes no neighbour set, with and without
    segments (a token whose segment has fewer kept tokens than k keeps indices in range and
    zero weights for the missing ones)."""
    g = torch.Generator().manual_seed(5)
    removed = torch.randn(400, 48, generator=g).to(torch.bfloat16)
    kept = torch.randn(123, 48, generator=g).to(torch.bfloat16)  # 123: five pad rows
    seg_r = torch.randint(0, 4, (400,), generator=g)
    seg_k = torch.randint(0, 4, (123,), generator=g)
    seg_k[seg_k == 3] = 2
    seg_k[:2] = 3  # segment 3 has two kept tokens: its removed tokens are short of neighbours
    def valid_sets(index, weight):
        return [sorted(i for i, w in zip(row, ws) if w > 0) for row, ws in zip(index.tolist(), weight.tolist())]

    for segments in ((), (seg_r, seg_k)):
        plain = alg.find_neighbors(removed, kept, 10, *segments)
        with alg.use_kernels(alg.Kernels(padded_product=True)):
            padded = alg.find_neighbors(removed, kept, 10, *segments)
        assert int(padded[0].max()) < kept.shape[0]
        assert valid_sets(*plain) == valid_sets(*padded)
        assert torch.equal(plain[1].sum(dim=1), padded[1].sum(dim=1))
    short = seg_r == 3  # scoped: those tokens have two neighbours, of weight 1/2
    assert short.any() and bool((padded[1][short] > 0).sum(dim=1).eq(2).all())


@pytest.mark.kernel
def test_padded_search_in_several_row_chunks_and_with_non_finite_tokens():
    """More removed tokens than one distance chunk holds (the pad is added once, every chunk ranks
    against it); and kept tokens with NaN features, whose columns top-k ranks after the pad rows'
    infinity: with fewer finite kept tokens than k, a pad row is among the k nearest, and its index
    must still name a kept token."""
    g = torch.Generator().manual_seed(9)
    removed = torch.randn(alg._DISTANCE_ROW_CHUNK + 700, 32, generator=g).to(torch.bfloat16)
    kept = torch.randn(61, 32, generator=g).to(torch.bfloat16)
    plain = alg.find_neighbors(removed, kept, 10)
    with alg.use_kernels(alg.Kernels(padded_product=True)):
        padded = alg.find_neighbors(removed, kept, 10)
    assert torch.equal(plain[0].sort(dim=1).values, padded[0].sort(dim=1).values)
    assert torch.equal(plain[1], padded[1])
    few = kept[:13].clone()  # 13 kept tokens (3 pad rows), 5 of them NaN: 8 finite, k = 10
    few[8:] = float("nan")
    with alg.use_kernels(alg.Kernels(padded_product=True)):
        index, _ = alg.find_neighbors(removed[:50], few, 10)
    assert int(index.max()) < 13 and int(index.min()) >= 0


def test_fused_rebuild_is_used_only_where_it_can_run(monkeypatch):
    """Chosen, the kernel runs on bf16/fp16 CUDA states only: CPU states (no interpreter) and float32
    take the torch path, without needing triton."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    index, weight = torch.zeros(3, 2, dtype=torch.long), torch.full((3, 2), 0.5)
    with alg.use_kernels(alg.Kernels(fused_rebuild=True)):
        for dtype in (torch.bfloat16, torch.float32):
            recon = alg.Reconstruction(torch.ones(4, 8, dtype=dtype), torch.zeros(3, 8, dtype=dtype), index, weight)
            assert recon.fused is None
            # kept tokens drift by +1 from their anchors, so the removed ones go from 0 to 1
            full = recon.full(torch.full((4, 8), 2.0, dtype=dtype), torch.arange(4), torch.arange(4, 7))
            assert torch.equal(full, torch.tensor([2.0] * 4 + [1.0] * 3, dtype=dtype)[:, None].expand(7, 8))


@pytest.mark.kernel
def test_fused_rebuild_refuses_mismatched_inputs():
    """The kernel writes raw memory, so what ``index_copy_`` would refuse is refused before launch."""
    pytest.importorskip("triton")
    from ipcv import rebuild_kernel

    kept = torch.zeros(4, 8, dtype=torch.bfloat16)
    offset, index = torch.zeros(3, 8), torch.zeros(3, 2, dtype=torch.long)
    for bad, match in (((kept, offset, index, None, torch.arange(3), torch.arange(4, 7)), "positions of shape"),
                       ((kept, offset, index.int(), None, torch.arange(4), torch.arange(4, 7)), "torch.long"),
                       ((kept, offset[:2], index, None, torch.arange(4), torch.arange(4, 7)), "offset"),
                       ((kept, offset, index, torch.ones(3, 3), torch.arange(4), torch.arange(4, 7)), "weight")):
        with pytest.raises(ValueError, match=match):
            rebuild_kernel.rebuild_full(*bad)


@pytest.mark.kernel
def test_kernel_choices_parse_and_restore():
    assert alg.Kernels.parse("fused_rebuild, padded_product") == alg.Kernels(True, True)
    assert alg.Kernels.parse("none") == alg.Kernels() and alg.Kernels().names() == "none"
    with pytest.raises(ValueError, match="unknown IPCV kernel choice"):
        alg.Kernels.parse("fused")
    before = alg.KERNELS
    with alg.use_kernels(alg.Kernels(padded_product=True)):
        assert alg.KERNELS.padded_product
    assert alg.KERNELS is before
