"""The analytic vision FLOPs against torch's FlopCounterMode on the same forward.

Eager attention is used because FlopCounterMode counts 0 for scaled_dot_product_attention on CPU
(seen with torch 2.13); with eager, attention is plain matmuls that it does count. IPCV's distance
matrix (torch.cdist) is not counted by FlopCounterMode, so it is compared without that part.
"""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import ipcv
from pipeline.measure.vision_flops import record_vision_layout, vision_dims, vision_flops
from pipeline.models.qwen_vl import random_patches
from tests.conftest import tiny, tower_of


@pytest.mark.parametrize("config", [None, ipcv.IPCVConfig(), ipcv.IPCVConfig(restore="frozen", budget="per_image"),
                                    ipcv.IPCVConfig(as_queries="kept")])
def test_analytic_matches_flop_counter(family, config):
    tower = tower_of(tiny(family, attn_implementation="eager"))
    inp = random_patches([(1, 16, 16), (2, 8, 8)], seed=14)
    handle = ipcv.apply(tower, vision=config) if config else None
    with torch.no_grad(), record_vision_layout(tower) as layout, FlopCounterMode(display=False) as counter:
        tower(inp.pixel_values, grid_thw=inp.grid_thw)
    overhead = handle.vision_stats.neighbor_search_flops if handle else 0
    parts = vision_flops(vision_dims(tower), layout, overhead)
    assert parts["total"] - parts["ipcv_overhead"] == counter.get_total_flops()
    if handle:
        assert (overhead > 0) == (config.restore == "ngr")
        handle.remove()


def test_ipcv_saves_what_the_layout_says(family):
    """Blocks after K see (1 - r) of the tokens in their MLP; AS blocks keep full attention."""
    tower = tower_of(tiny(family))
    inp = random_patches([(1, 16, 16)], seed=15)
    with ipcv.apply(tower, vision=ipcv.IPCVConfig(prune_layer=3, as_layers=2, reduction_ratio=0.75)):
        with torch.no_grad(), record_vision_layout(tower) as layout:
            tower(inp.pixel_values, grid_thw=inp.grid_thw)
    n, kept = 256, 64
    assert [b.mlp_tokens for b in layout.blocks] == [n] * 3 + [kept] * 9
    assert [b.attn_tokens for b in layout.blocks] == [n] * 5 + [kept] * 7
    assert layout.merger_tokens == n and layout.patch_tokens == n


def test_kept_queries_count_only_the_kept_tokens_queries(family):
    """AS blocks with ``as_queries="kept"``: keys over all 256 tokens, queries and the output
    projection over the 64 kept; the saving against ``"all"`` is written out by hand."""
    tower = tower_of(tiny(family))
    inp = random_patches([(1, 16, 16)], seed=15)
    layouts = {}
    for as_queries in ("all", "kept"):
        config = ipcv.IPCVConfig(prune_layer=3, as_layers=2, reduction_ratio=0.75, as_queries=as_queries)
        with ipcv.apply(tower, vision=config), torch.no_grad(), record_vision_layout(tower) as layout:
            tower(inp.pixel_values, grid_thw=inp.grid_thw)
        layouts[as_queries] = layout
    n, kept, as_blocks = 256, 64, [3, 4]
    kept_layout = layouts["kept"]
    assert [b.attn_tokens for b in kept_layout.blocks] == [b.attn_tokens for b in layouts["all"].blocks]
    assert [b.query_tokens for b in kept_layout.blocks] == [n] * 3 + [kept] * 2 + [kept] * 7
    assert all(layouts["all"].blocks[i].query_segments is None for i in as_blocks)
    dims = vision_dims(tower)
    d = dims.width
    windows = [kept_layout.blocks[i].attn_segments for i in as_blocks]
    queries = [kept_layout.blocks[i].query_segments for i in as_blocks]
    # per AS block: the query and output projections of the removed tokens, and their attention rows
    saved = sum(2 * 2 * (n - kept) * d * d + 2 * 2 * sum((w - q) * w for q, w in zip(qs, ws)) * d
                for qs, ws in zip(queries, windows))
    all_flops = vision_flops(dims, layouts["all"])["total"]
    assert all_flops - vision_flops(dims, kept_layout)["total"] == saved
