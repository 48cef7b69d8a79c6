"""The host-layout call that makes a vision tower capturable as a CUDA graph (ipcv/cuda_graph.py).

Capture itself needs a GPU (benchmarks/vision_encoder.py --cuda-graph checks on one that a replay
equals the eager call); here the call is checked to compute what the plain call computes, with and
without IPCV."""

import pytest
import torch

import ipcv
from ipcv.cuda_graph import GraphedCall
from pipeline.models import family_of
from pipeline.models.qwen_vl import random_patches
from tests.conftest import tiny, tower_of

GRIDS = [[(1, 16, 16)], [(1, 8, 8), (1, 4, 8)], [(4, 8, 8)]]
CONFIGS = [None, ipcv.IPCVConfig(), ipcv.IPCVConfig(as_queries="kept"), ipcv.IPCVConfig(budget="per_image")]


@pytest.mark.parametrize("grids", GRIDS)
@pytest.mark.parametrize("config", CONFIGS)
def test_the_host_layout_call_computes_what_the_plain_call_does(family, grids, config):
    model = tiny(family)
    tower, study = tower_of(model), family_of(model)
    inp = random_patches(grids, seed=3)
    handle = ipcv.apply(model, vision=config) if config else None
    with torch.no_grad():
        args, kwargs = study.vision_input_call(inp)
        plain = study.features(tower(*args, **kwargs))
        args, kwargs = study.host_layout_call(tower, inp)
        assert kwargs["cu_seqlens"].device.type == "cpu" and kwargs["grid_thw"].device.type == "cpu"
        hosted = study.features(tower(*args, **kwargs))
        stats = handle.vision_stats if handle else None
    if handle:
        handle.remove()
    assert torch.equal(plain, hosted)
    if stats is not None:  # the patch ran on the host-layout call and pruned
        assert stats.complete and sum(stats.tokens_kept) < sum(stats.tokens_in)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_a_graph_needs_cuda():
    with pytest.raises(RuntimeError, match="needs a CUDA device"):
        GraphedCall(lambda: None)
