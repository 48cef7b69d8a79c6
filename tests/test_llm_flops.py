"""Analytic prefill FLOPs against FlopCounterMode on the language model of a real forward.

Eager attention, so that the counter sees attention as matmuls (FlopCounterMode counts 0 for
sdpa on CPU with torch 2.13); both count all n^2 query-key pairs.
"""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import ipcv
from pipeline.measure.llm_flops import LLMDims, prefill_flops, record_llm_layout
from tests.conftest import multimodal_request, tiny


@pytest.mark.parametrize(
    "llm",
    [None, ipcv.LLMPruneConfig(method="fastv", layer=2, reduction_ratio=0.5), ipcv.LLMPruneConfig(method="dart", layer=2)],
)
def test_prefill_flops_match_the_counter(family, llm, two_images):
    model = tiny(family, attn_implementation="eager")
    lm = model.model.language_model
    request = multimodal_request(two_images)
    dims = LLMDims.from_config(lm.config)
    handle = ipcv.apply(model, llm=llm) if llm else None
    with torch.no_grad(), record_llm_layout(lm, model.lm_head) as layout, FlopCounterMode(display=False) as counter:
        model(**request)
    counts = counter.get_flop_counts()
    language_key = next(k for k in counts if k.endswith("model.language_model"))
    head_key = next(k for k in counts if k.endswith("lm_head"))
    # rotary tables are outside the convention; some transformers versions build them with a matmul
    rotary = sum(sum(v.values()) for k, v in counts.items() if k.endswith("language_model.rotary_emb"))
    counted = sum(counts[language_key].values()) - rotary + sum(counts[head_key].values())
    selection = handle.llm_stats.selection_flops if handle else 0
    parts = prefill_flops(dims, layout, selection)
    # FastV's own work (q of one row, k of all, the score row) runs inside the language model,
    # so the counter sees it: the analytic selection figure must match it as well.
    assert counted == parts["total"]
    if handle:
        assert selection > 0
        handle.remove()


def test_pruned_layers_are_counted_with_their_tokens(family, two_images):
    model = tiny(family)
    request = multimodal_request(two_images)
    n_image = int((request["input_ids"] == 500).sum())
    length = request["input_ids"].shape[1]
    with torch.no_grad(), ipcv.apply(model, llm=ipcv.LLMPruneConfig(method="fastv", layer=2, reduction_ratio=0.5)) as h:
        with record_llm_layout(model.model.language_model) as layout:
            model(**request)
        kept = length - n_image + n_image // 2
        assert layout.layer_tokens == [[length], [length], [kept], [kept]]
        assert h.llm_stats.selection_flops > 0
