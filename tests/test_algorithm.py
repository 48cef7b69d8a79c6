"""The pure functions against hand-computed cases."""

import pytest
import torch

from ipcv import algorithm as alg


def test_kept_count_is_exact_floor():
    assert alg.kept_count(20, 0.65) == 7  # 20 * 0.35 = 7 exactly
    assert alg.kept_count(100, 0.65) == 35
    assert alg.kept_count(10, 0.778) == 2  # 2.22
    assert alg.kept_count(7, 0.0) == 7
    assert alg.kept_count(3, 0.9) == 1  # never empty


def test_kept_token_stays_in_its_own_image():
    # Two images of 4 tokens; token 4 (the first of image 2) is kept. The published code counted
    # it in image 1's segment; here it opens image 2's.
    cu = torch.tensor([0, 4, 8], dtype=torch.int32)
    kept = torch.tensor([1, 4, 5])
    assert alg.subset_cu_seqlens(cu, kept).tolist() == [0, 1, 3]
    # An image with no kept token leaves no empty segment behind.
    assert alg.subset_cu_seqlens(cu, torch.tensor([5, 6])).tolist() == [0, 2]


def test_select_global_and_per_image():
    scores = torch.tensor([0.1, 0.9, 0.8, 0.2, 0.7, 0.6, 0.3, 0.4])

    def split(sizes, keeps):
        kept, removed = alg.select_and_split(scores, sizes, keeps)
        return kept.tolist(), removed.tolist()

    # global, r = 0.5: top 4 of all = indices 1, 2, 4, 5; the rest, in order, removed
    assert split([8], [4]) == ([1, 2, 4, 5], [0, 3, 6, 7])
    # per image, r = 0.5: top 2 of [0..4) = 1, 2 and of [4..8) = 4, 5 -> same here
    assert split([4, 4], [2, 2]) == ([1, 2, 4, 5], [0, 3, 6, 7])
    # r = 0.75: global keeps 2 (1, 2), per image keeps one each (1 and 4)
    assert split([8], [2]) == ([1, 2], [0, 3, 4, 5, 6, 7])
    assert split([4, 4], [1, 1]) == ([1, 4], [0, 2, 3, 5, 6, 7])
    # segments of different sizes: top 1 of [0..3) = 1, top 3 of [3..8) = 4, 5, 7
    assert split([3, 5], [1, 3]) == ([1, 4, 5, 7], [0, 2, 3, 6])
    try:
        alg.select_and_split(scores, [4, 3], [2, 2])
    except ValueError as err:
        assert "do not cover" in str(err)
    else:
        raise AssertionError("segments that do not cover the scores were accepted")


def test_half_precision_neighbours_are_the_float32_cdist_ones():
    """The matrix-product search of bf16 features ranks as float32 cdist does on the same values
    (ties aside: random features have none)."""
    generator = torch.Generator().manual_seed(0)
    removed = torch.randn(300, 64, generator=generator).bfloat16()
    kept = torch.randn(120, 64, generator=generator).bfloat16()
    index, weight = alg.find_neighbors(removed, kept, 10)
    reference = torch.topk(torch.cdist(removed.float(), kept.float()), 10, dim=1, largest=False).indices
    assert torch.equal(index.sort(dim=1).values, reference.sort(dim=1).values)
    assert torch.equal(weight, torch.full((300, 10), 0.1))
    # with segments: the same sets as float32 under the same mask
    seg_r = torch.randint(0, 3, (300,), generator=generator)
    seg_k = torch.randint(0, 3, (120,), generator=generator)
    index, weight = alg.find_neighbors(removed, kept, 10, seg_r, seg_k)
    index32, weight32 = alg.find_neighbors(removed.float(), kept.float(), 10, seg_r, seg_k)
    assert torch.equal(index.sort(dim=1).values, index32.sort(dim=1).values) and torch.equal(weight, weight32)


def test_neighbors_and_reconstruction_by_hand():
    kept_anchor = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    removed_anchor = torch.tensor([[1.0, 0.0], [9.0, 1.0]])
    index, weight = alg.find_neighbors(removed_anchor, kept_anchor, k=2)
    assert index.tolist() == [[0, 1], [1, 2]] or index.tolist() == [[0, 1], [1, 0]]
    # distances from (9,1): to kept1 = 1.41, kept0 = 9.06, kept2 = 12.04 -> neighbours 1 and 0
    assert index.tolist() == [[0, 1], [1, 0]]
    assert torch.allclose(weight, torch.full((2, 2), 0.5))
    kept_now = kept_anchor + torch.tensor([[1.0, 1.0], [3.0, 3.0], [100.0, 100.0]])
    rebuilt = alg.Reconstruction(kept_anchor, removed_anchor, index, weight)(kept_now)
    # each removed token moves by the mean drift of kept0 and kept1 = (2, 2)
    assert torch.allclose(rebuilt, removed_anchor + 2.0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_rebuild_is_the_float32_rebuild_of_the_same_values(dtype):
    """Uniform weights in bf16/fp16: the gather-then-sum path equals the float32 embedding_bag
    path on the same (exactly representable) values up to the order of float32 sums, i.e. to the
    output's rounding; scoped (non-uniform) weights keep the float32 path."""
    generator = torch.Generator().manual_seed(7)
    kept_anchor = torch.randn(1400, 16, generator=generator).to(dtype)
    removed_anchor = torch.randn(3300, 16, generator=generator).to(dtype)  # 3300 x 5 rows: gathered
    kept_now = (kept_anchor.float() + torch.randn(1400, 16, generator=generator)).to(dtype)
    index, weight = alg.find_neighbors(removed_anchor, kept_anchor, 5)
    half = alg.Reconstruction(kept_anchor, removed_anchor, index, weight, uniform=True)
    assert half.gather
    expected = alg.Reconstruction(kept_anchor.float(), removed_anchor.float(), index, weight)(kept_now.float())
    rebuilt = half(kept_now)
    assert rebuilt.dtype == dtype
    torch.testing.assert_close(rebuilt.float(), expected, rtol=0, atol=2 * expected.abs().max().item() * 2 ** -8)
    # the removed tokens move by the mean drift of their neighbours, as written out
    drift = (kept_now.float() - kept_anchor.float())[index].mean(dim=1)
    torch.testing.assert_close(rebuilt.float(), (removed_anchor.float() + drift).to(dtype).float(),
                               rtol=0, atol=2 * expected.abs().max().item() * 2 ** -8)
    assert not alg.Reconstruction(kept_anchor, removed_anchor, index, weight).gather  # non-uniform weights
    assert not alg.Reconstruction(kept_anchor, removed_anchor[:100], index[:100], weight[:100], uniform=True).gather


def test_same_segment_neighbours_and_missing_neighbours():
    kept = torch.tensor([[0.0], [1.0], [50.0]])
    removed = torch.tensor([[49.0], [2.0]])
    kept_seg = torch.tensor([0, 0, 1])
    removed_seg = torch.tensor([0, 2])
    index, weight = alg.find_neighbors(removed, kept, 2, removed_seg, kept_seg)
    # token in segment 0 may not use the close kept token 2 (segment 1)
    assert sorted(index[0].tolist()) == [0, 1]
    assert torch.allclose(weight[0], torch.tensor([0.5, 0.5]))
    # segment 2 has no kept token: zero weights, reconstruction keeps the anchor
    assert weight[1].sum() == 0
    rebuilt = alg.Reconstruction(kept, removed, index, weight)(kept + 5)
    assert rebuilt[1].item() == 2.0 and rebuilt[0].item() == 54.0


def test_on_ties_every_search_returns_a_nearest_set():
    """Duplicated kept tokens make exact ties: whichever of the tied tokens a search picks, the
    set it returns is a k-nearest set (no unchosen kept token is closer than a chosen one), for
    float32 cdist and for the half-precision matrix product alike."""
    generator = torch.Generator().manual_seed(1)
    base = torch.randn(20, 16, generator=generator).round()
    kept = torch.cat([base, base])  # every kept token twice
    removed = torch.randn(50, 16, generator=generator).round()
    exact = torch.cdist(removed.double(), kept.double())
    for feats in (torch.float32, torch.bfloat16):
        index, _ = alg.find_neighbors(removed.to(feats), kept.to(feats), 5)
        chosen = exact.gather(1, index)
        unchosen = exact.scatter(1, index, float("inf"))
        assert (chosen.max(dim=1).values <= unchosen.min(dim=1).values).all(), feats
