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

CALLS: list[tuple[list[int], int]] = []


def varlen_reference(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    cu = kwargs["cu_seq_lens_q"]
    max_len = kwargs["max_length_q"]
    lengths = (cu[1:] - cu[:-1]).tolist()
    assert query.shape[2] == sum(lengths), "cu_seqlens does not cover the sequence"
    assert int(max_len) == max(lengths), "max_seqlen does not match cu_seqlens"
    CALLS.append((lengths, int(max_len)))
    outs = [
        torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=scaling)
        for q, k, v in zip(*(t.split(lengths, dim=2) for t in (query, key, value)))
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
    assert any(sum(lengths) == kept for lengths, _ in CALLS)  # blocks on kept tokens went through it
    torch.testing.assert_close(outs["flash_varlen_reference"], outs["sdpa"], rtol=1e-5, atol=1e-5)
