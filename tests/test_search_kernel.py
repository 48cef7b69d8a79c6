"""The fused neighbour search (ipcv/search_kernel.py, Triton) against hand-computed rankings and the
torch path of ``find_neighbors``.

No GPU here: the kernel runs through Triton's interpreter in a fresh process
(``tests.test_rebuild_kernel._run_interpreted``), skipped where ``triton`` is missing (CI installs
it). The interpreter multiplies bf16 operands of ``tl.dot`` as raw integers, so there the kernel
multiplies float32 copies (exact products of bf16 values, float32 sums: the tensor cores'
arithmetic up to the order of the sums); everything else (tiles, keys, the running top-k, the
shares of the kept side and their merge) is the code a GPU compiles. ``benchmarks/gpu_checks.py
--only kernels`` checks the tensor-core product on a GPU."""

from __future__ import annotations

import pytest
import torch

from ipcv import algorithm as alg
from tests.test_rebuild_kernel import _run_interpreted

try:
    import triton.language as tl
except ImportError:
    tl = None
needs_topk = pytest.mark.skipif(not hasattr(tl, "topk"),
                                reason="the fused search needs triton with tl.topk (3.4 or later)")


@pytest.mark.kernel
@needs_topk
def test_fused_search_returns_the_k_nearest_in_order_with_ties_to_the_lower_index():
    """Integer features (exact in bf16, their distances exact in float32) with duplicated kept rows:
    the kernel's indices equal the stable argsort of the exact distances, whatever the shapes
    (rows, kept tokens and widths that fill no tile), k (a power of two or not, or every kept
    token) and the number of programs sharing the kept side."""
    result = _run_interpreted("""
        from ipcv import search_kernel
        g = torch.Generator().manual_seed(4)
        result = []
        for n_removed, n_kept, dim, k, splits, dtype in ((70, 130, 80, 10, 1, torch.bfloat16),
                                                        (70, 130, 80, 10, 3, torch.bfloat16),
                                                        (20, 150, 24, 3, 2, torch.float16),
                                                        (9, 5, 16, 5, None, torch.bfloat16)):
            kept = torch.randint(-3, 4, (n_kept, dim), generator=g).float()
            kept[n_kept // 2:] = kept[: n_kept - n_kept // 2].clone()  # every early kept row has a later twin
            removed = torch.randint(-3, 4, (n_removed, dim), generator=g).float()
            removed[: n_removed // 3] = kept[torch.randint(0, n_kept, (n_removed // 3,), generator=g)]
            exact = kept.double().square().sum(1)[None, :] - 2 * removed.double() @ kept.double().T
            expected = torch.argsort(exact, dim=1, stable=True)[:, :k]
            norms = kept.square().sum(1)
            index = search_kernel.nearest(removed.to(dtype), kept.to(dtype), norms, k, splits=splits)
            result.append({"shape": [n_removed, n_kept, dim, k, splits], "dtype": str(index.dtype),
                           "out_shape": list(index.shape), "equal": torch.equal(index, expected),
                           "rows_differing": int((index != expected).any(dim=1).sum()),
                           # rows whose k-th and (k+1)-th nearest are equidistant: the tie decides the set
                           "boundary_ties": int((exact.sort(dim=1).values[:, k - 1: k + 1].diff(dim=1) == 0).sum())})
    """)
    assert len(result) == 4
    for case in result:
        assert case["dtype"] == "torch.int64" and case["out_shape"] == [case["shape"][0], case["shape"][3]], case
        assert case["equal"], case
    assert result[2]["boundary_ties"] > 0, result[2]  # k = 3 splits twins: the tie-break was exercised


@needs_topk
def test_fused_search_in_find_neighbors_and_a_patched_tower():
    """Random bf16 features: the kernel's neighbour sets equal the torch path's (no near-ties at this
    size), and it runs only for an unscoped search; in a bf16 tiny Qwen2-VL tower (one image: an
    unscoped search) the kept tokens are the same and the outputs equal the torch path's up to
    the rebuild's summation order of the same neighbours; in float32 nothing changes."""
    result = _run_interpreted("""
        import ipcv
        from ipcv import algorithm as alg, search_kernel
        from pipeline.models import build_tiny
        from pipeline.models.qwen_vl import random_patches
        from tests.conftest import run_tower
        calls = []
        launch = search_kernel.nearest
        search_kernel.nearest = lambda *a, **kw: calls.append(1) or launch(*a, **kw)
        g = torch.Generator().manual_seed(6)
        removed = torch.randn(100, 48, generator=g).to(torch.bfloat16)
        kept = torch.randn(70, 48, generator=g).to(torch.bfloat16)
        seg_r, seg_k = torch.randint(0, 2, (100,), generator=g), torch.randint(0, 2, (70,), generator=g)
        plain = alg.find_neighbors(removed, kept, 10)
        with alg.use_kernels(alg.Kernels(fused_search=True)):
            fused = alg.find_neighbors(removed, kept, 10)
            calls_unscoped = len(calls)
            fused_scoped = alg.find_neighbors(removed, kept, 10, seg_r, seg_k)
        result = {"same_sets": torch.equal(plain[0].sort(1).values, fused[0].sort(1).values),
                  "same_weights": torch.equal(plain[1], fused[1]), "calls_unscoped": calls_unscoped,
                  "calls_after_scoped": len(calls),
                  "scoped_equal": [torch.equal(a, b) for a, b in zip(fused_scoped,
                                                                     alg.find_neighbors(removed, kept, 10, seg_r, seg_k))]}
        images = random_patches([(1, 16, 16)], seed=0)
        for dtype in ("bfloat16", "float32"):
            model = build_tiny("tiny-qwen2-vl", seed=0, dtype=dtype)
            outs = {}
            calls.clear()
            for choice in (alg.Kernels(), alg.Kernels(fused_search=True)):
                with alg.use_kernels(choice), ipcv.apply(model, vision=ipcv.IPCVConfig()) as handle:
                    outs[choice.fused_search] = (run_tower(model.model.visual, images).last_hidden_state,
                                                 handle.vision_stats.kept_index)
            cos = torch.nn.functional.cosine_similarity(outs[False][0].double(), outs[True][0].double(), dim=-1)
            result[dtype] = {"same_kept": torch.equal(outs[False][1], outs[True][1]), "calls": len(calls),
                             "identical": torch.equal(outs[False][0], outs[True][0]), "min_cosine": float(cos.min())}
    """)
    assert result["same_sets"] and result["same_weights"], result
    assert result["calls_unscoped"] == 1 and result["calls_after_scoped"] == 1, result
    assert result["scoped_equal"] == [True, True], result
    bf16, f32 = result["bfloat16"], result["float32"]
    assert bf16["same_kept"] and bf16["calls"] == 1 and bf16["min_cosine"] > 0.9999, bf16
    assert f32["same_kept"] and f32["identical"] and f32["calls"] == 0, f32


@pytest.mark.kernel
@needs_topk
def test_fused_search_keeps_indices_in_range_for_non_finite_features():
    """A removed token with NaN features, and kept tokens with NaN or infinite features, still get
    k indices of kept tokens; finite kept tokens rank before non-finite ones."""
    result = _run_interpreted("""
        from ipcv import search_kernel
        g = torch.Generator().manual_seed(8)
        removed = torch.randn(12, 16, generator=g)
        kept = torch.randn(20, 16, generator=g)
        removed[3] = float("nan")
        kept[[2, 7]] = float("nan")
        kept[11, 0] = float("inf")
        index = search_kernel.nearest(removed.to(torch.bfloat16), kept.to(torch.bfloat16),
                                      kept.to(torch.bfloat16).float().square().sum(1), 10)
        bad = {2, 7, 11}
        finite_rows = [r for r in range(12) if r != 3]
        result = {"min": int(index.min()), "max": int(index.max()), "unique_per_row": all(
                      len(set(row)) == 10 for row in index.tolist()),
                  "finite_first": all(not bad & set(index[r].tolist()) for r in finite_rows)}
        # every kept token ranked: an infinite distance (norm inf) after the finite ones, NaN last
        few = torch.randn(6, 16, generator=g).to(torch.bfloat16)
        norms = few.float().square().sum(1)
        norms[1], norms[4] = float("nan"), float("inf")
        result["all_ranked"] = search_kernel.nearest(removed[:3].to(torch.bfloat16), few, norms, 6)[:, -2:].tolist()
    """)
    assert result["min"] >= 0 and result["max"] < 20 and result["unique_per_row"], result
    assert result["finite_first"], result
    assert result["all_ranked"] == [[4, 1]] * 3, result


@pytest.mark.kernel
@needs_topk
def test_fused_search_refuses_what_it_cannot_rank():
    from ipcv import search_kernel

    removed, kept = torch.zeros(4, 8, dtype=torch.bfloat16), torch.zeros(6, 8, dtype=torch.bfloat16)
    norms = torch.zeros(6)
    for args, match in (((removed.float(), kept.float(), norms, 3), "half-precision"),
                        ((removed, kept.half(), norms, 3), "half-precision"),
                        ((removed, kept, norms[:5], 3), "norms"),
                        ((removed, kept[:, :4], norms, 3), "norms"),
                        ((removed, kept, norms, 7), "k=7"),
                        ((removed, kept, norms, 0), "k=0")):
        with pytest.raises(ValueError, match=match):
            search_kernel.nearest(*args)


def test_fused_search_is_used_only_where_it_can_run(monkeypatch):
    """Chosen, the kernel runs on bf16/fp16 CUDA features only: CPU features (no interpreter) and
    float32 take the torch path, without needing triton."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    g = torch.Generator().manual_seed(2)
    for dtype in (torch.bfloat16, torch.float32):
        removed, kept = torch.randn(30, 8, generator=g).to(dtype), torch.randn(12, 8, generator=g).to(dtype)
        plain = alg.find_neighbors(removed, kept, 4)
        with alg.use_kernels(alg.Kernels(fused_search=True)):
            chosen = alg.find_neighbors(removed, kept, 4)
        assert torch.equal(plain[0], chosen[0]) and torch.equal(plain[1], chosen[1])
    assert alg.Kernels.parse("fused_search,fused_rebuild") == alg.Kernels(fused_rebuild=True, fused_search=True)
    assert alg.Kernels(fused_search=True).names() == "fused_search"
