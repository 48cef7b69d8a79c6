"""The varlen (flash-attention) code path of the vision towers, exercised on CPU.

Flash attention needs a GPU, but the towers choose their varlen path for any attention
implementation whose name contains "flash". A reference varlen function registered through
transformers' AttentionInterface runs that path here and checks the ``cu_seqlens`` and
``max_seqlen`` IPCV hands it.
"""

import pytest
import torch
from transformers import AttentionInterface

import ipcv
from pipeline.models.qwen_vl import random_patches
from tests.conftest import run_tower, tiny, tower_of

CALLS: list[tuple[list[int], list[int], int, int]] = []  # query lengths, key lengths, max_q, max_k


def varlen_reference(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    cu_q, cu_k = kwargs["cu_seq_lens_q"], kwargs["cu_seq_lens_k"]
    max_q, max_k = kwargs["max_length_q"], kwargs["max_length_k"]
    q_lengths, k_lengths = (cu_q[1:] - cu_q[:-1]).tolist(), (cu_k[1:] - cu_k[:-1]).tolist()
    assert query.shape[2] == sum(q_lengths), "cu_seq_lens_q does not cover the queries"
    assert key.shape[2] == sum(k_lengths), "cu_seq_lens_k does not cover the keys"
    # flash kernels size their grid by the longest segments: a bound at least as long is what they need
    assert max(q_lengths) <= int(max_q) <= query.shape[2], "max_length_q is not a bound of the query segments"
    assert max(k_lengths) <= int(max_k) <= key.shape[2], "max_length_k is not a bound of the key segments"
    CALLS.append((q_lengths, k_lengths, int(max_q), int(max_k)))
    outs = [
        torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=scaling)
        for q, k, v in zip(query.split(q_lengths, dim=2), key.split(k_lengths, dim=2), value.split(k_lengths, dim=2))
        if q.shape[2]
    ]
    return torch.cat(outs, dim=2).transpose(1, 2).contiguous(), None


AttentionInterface.register("flash_varlen_reference", varlen_reference)


@pytest.mark.parametrize("family_name", ["tiny-qwen2-vl", "tiny-qwen2.5-vl"])
def test_varlen_path_matches_sdpa_under_ipcv(family_name):
    inp = random_patches([(1, 12, 8), (2, 4, 4)], seed=13)
    cfg = ipcv.IPCVConfig(as_layers=2)
    outs = {}
    for attn in ("sdpa", "flash_varlen_reference"):
        model = tiny(family_name)
        tower_of(model).config._attn_implementation = attn
        CALLS.clear()
        with ipcv.apply(model, vision=cfg) as handle:
            outs[attn] = run_tower(tower_of(model), inp).pooler_output
            kept = handle.vision_stats.total_kept
    assert CALLS, "the varlen path did not run"
    assert any(sum(lengths) == kept for lengths, *_ in CALLS)  # blocks on kept tokens went through it
    torch.testing.assert_close(outs["flash_varlen_reference"], outs["sdpa"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family_name", ["tiny-qwen2-vl", "tiny-qwen2.5-vl"])
def test_kept_queries_take_one_varlen_call_per_block(family_name):
    """With ``as_queries="kept"`` an Attention-Stabilization block on the varlen path is one call,
    as the tower's own blocks are: the kept queries bounded per segment against every key of it.
    The video's frames share the global budget (their kept counts are worked out on the device)."""
    inp = random_patches([(4, 8, 8), (1, 12, 8)], seed=5)
    outs = {}
    for attn in ("sdpa", "flash_varlen_reference"):
        model = tiny(family_name)
        tower_of(model).config._attn_implementation = attn
        CALLS.clear()
        with ipcv.apply(model, vision=ipcv.IPCVConfig(as_layers=2, as_queries="kept")) as handle:
            outs[attn] = run_tower(tower_of(model), inp).pooler_output
            stats = handle.vision_stats
    frames = [64] * 4 + [96]
    as_calls = [c for c in CALLS if c[0] != c[1] and sum(c[1]) == sum(frames)]
    assert len(as_calls) == 2, CALLS  # one call in each of the two AS blocks
    for q_lengths, k_lengths, _, _ in as_calls:
        assert sum(q_lengths) == stats.total_kept
        if family_name == "tiny-qwen2-vl":  # segments are the frames (Qwen2.5-VL: windows, then frames)
            assert k_lengths == frames and q_lengths == stats.tokens_kept
    torch.testing.assert_close(outs["flash_varlen_reference"], outs["sdpa"], rtol=1e-5, atol=1e-5)
