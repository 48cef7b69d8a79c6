"""``torch_flash_varlen`` (pipeline/models/attention.py): PyTorch's varlen flash kernel as a
Qwen-VL tower's attention, so the tower takes every segment in one call.

The kernel is CUDA only; here a reference in its place (per-segment sdpa on the packed
``[T, H, D]`` layout ``varlen_attn`` takes) checks what the adapter hands it: the layout, int32
boundaries, lengths, and outputs equal to the tower's own sdpa loop, unpatched and under IPCV.
On a GPU ``benchmarks/gpu_checks.py --only varlen`` compares the real kernel with sdpa."""

import contextlib

import pytest
import torch
import torch.nn.functional as F

import ipcv
from pipeline.models import attention
from pipeline.models.qwen_vl import random_patches
from tests.conftest import run_tower, tiny, tower_of

CALLS: list[dict] = []


def varlen_reference(q, k, v, cu_q, cu_k, max_q, max_k, *, scale=None):
    """What ``varlen_attn`` computes, by segments: ``q [Tq, H, D]``, ``k / v [Tk, H, D]``."""
    extra = {} if scale is None else {"scale": scale}
    assert q.dim() == 3 and k.shape[1:] == q.shape[1:] and cu_q.dtype == cu_k.dtype == torch.int32
    q_len, k_len = (cu_q[1:] - cu_q[:-1]).tolist(), (cu_k[1:] - cu_k[:-1]).tolist()
    assert sum(q_len) == q.shape[0] and sum(k_len) == k.shape[0]
    # the longest segments size the kernel's grid: a bound at least as long is what it needs
    assert max(q_len) <= max_q <= q.shape[0] and max(k_len) <= max_k <= k.shape[0]
    CALLS.append({"q": q_len, "k": k_len, "max": (max_q, max_k), **extra})
    out = [F.scaled_dot_product_attention(a.transpose(0, 1), b.transpose(0, 1), c.transpose(0, 1), **extra).transpose(0, 1)
           for a, b, c in zip(q.split(q_len), k.split(k_len), v.split(k_len)) if a.shape[0]]
    return torch.cat(out)


@pytest.fixture
def reference_kernel(monkeypatch):
    monkeypatch.setattr(attention, "_kernel", lambda: varlen_reference)
    monkeypatch.setattr(attention, "KERNEL_DEVICES", ("cuda", "cpu"))
    monkeypatch.setattr(attention, "KERNEL_DTYPES", (torch.float16, torch.bfloat16, torch.float32))
    CALLS.clear()


def _tower(name: str, attn: str, dtype: str = "float32"):
    model = tiny(name, dtype=dtype)
    if attn == attention.NAME:
        attention.use_torch_flash_varlen(tower_of(model))
    return model


@pytest.mark.parametrize("name", ["tiny-qwen2-vl", "tiny-qwen2.5-vl"])
@pytest.mark.parametrize("queries", [None, "all", "kept"])
def test_tower_on_the_varlen_path_equals_its_sdpa_loop(reference_kernel, name, queries):
    """A video (its frames one segment each) and an image in one call: every block makes one
    kernel call, and the features equal the sdpa tower's, unpatched and under IPCV (float32, so
    that the same tokens are kept: in half precision a near-tie at the budget's edge may flip)."""
    inp = random_patches([(4, 8, 8), (1, 12, 8)], seed=3)
    outs, kept = {}, {}
    for attn in ("sdpa", attention.NAME):
        model = _tower(name, attn)
        CALLS.clear()
        if queries is None:
            outs[attn] = run_tower(tower_of(model), inp).pooler_output
        else:
            with ipcv.apply(model, vision=ipcv.IPCVConfig(as_layers=2, as_queries=queries)) as handle:
                outs[attn] = run_tower(tower_of(model), inp).pooler_output
                kept[attn] = handle.vision_stats.tokens_kept
    depth = len(tower_of(model).blocks)
    assert len(CALLS) == depth  # one call per block, none per segment
    if name == "tiny-qwen2-vl":
        assert CALLS[0]["k"] == [64] * 4 + [96]
    if queries is not None:
        assert kept["sdpa"] == kept[attention.NAME]
    torch.testing.assert_close(outs[attention.NAME], outs["sdpa"], rtol=1e-5, atol=1e-5)


def test_half_precision_tower(reference_kernel):
    """bfloat16, as the kernel runs: the unpatched tower's features agree with sdpa's."""
    inp = random_patches([(2, 8, 8)], seed=4)
    outs = {attn: run_tower(tower_of(_tower("tiny-qwen2-vl", attn, "bfloat16")), inp).pooler_output.float()
            for attn in ("sdpa", attention.NAME)}
    assert F.cosine_similarity(outs[attention.NAME], outs["sdpa"], dim=-1).min() > 0.999


def test_rows_without_boundaries_are_one_sequence_each(reference_kernel):
    """Called as a plain attention (``[B, H, L, D]``, no boundaries), each row is a sequence."""
    q, k, v = (torch.randn(3, 2, 5, 8) for _ in range(3))
    out, _ = attention.torch_flash_varlen(None, q, k, v, None, scaling=8**-0.5)
    assert CALLS[-1]["q"] == [5, 5, 5] and "scale" not in CALLS[-1]  # the default scale is not passed
    expected = F.scaled_dot_product_attention(q, k, v).transpose(1, 2)
    torch.testing.assert_close(out, expected)
    out, _ = attention.torch_flash_varlen(None, q, k, v, None, scaling=0.5)
    assert CALLS[-1]["scale"] == 0.5
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, scale=0.5).transpose(1, 2))


def test_boundaries_without_their_longest_segment(reference_kernel):
    """A caller that hands boundaries but not their longest segment gets it read from them."""
    q, k = torch.randn(1, 2, 7, 8), torch.randn(1, 2, 9, 8)
    cu_q, cu_k = torch.tensor([0, 2, 7], dtype=torch.int32), torch.tensor([0, 6, 9], dtype=torch.int32)
    out, _ = attention.torch_flash_varlen(None, q, k, k, None, cu_seq_lens_q=cu_q, cu_seq_lens_k=cu_k)
    assert CALLS[-1]["q"] == [2, 5] and CALLS[-1]["k"] == [6, 3] and CALLS[-1]["max"] == (5, 6)
    expected = torch.cat([F.scaled_dot_product_attention(q[:, :, :2], k[:, :, :6], k[:, :, :6]),
                          F.scaled_dot_product_attention(q[:, :, 2:], k[:, :, 6:], k[:, :, 6:])], dim=2)
    torch.testing.assert_close(out, expected.transpose(1, 2))


def test_the_flash_kernel_is_pinned_where_the_kernel_takes_num_splits(reference_kernel, monkeypatch):
    """A varlen_attn with ``num_splits`` (PyTorch >= 2.12) gets one split, which keeps PyTorch
    2.14 on its flash kernel instead of cuDNN; one without it gets no such argument."""
    seen = []

    def with_splits(q, k, v, cu_q, cu_k, max_q, max_k, *, scale=None, num_splits=None):
        seen.append(num_splits)
        return varlen_reference(q, k, v, cu_q, cu_k, max_q, max_k, scale=scale)

    monkeypatch.setattr(attention, "_kernel", lambda: with_splits)
    q = torch.randn(1, 2, 4, 8)
    attention.torch_flash_varlen(None, q, q, q, None)
    assert seen == [1]


def test_a_kernel_without_a_scale_argument_refuses_another_scale(reference_kernel, monkeypatch):
    """PyTorch 2.10's varlen_attn has no ``scale``: the default scale runs, another is refused."""
    monkeypatch.setattr(attention, "_kernel", lambda: lambda q, k, v, cu_q, cu_k, max_q, max_k: varlen_reference(
        q, k, v, cu_q, cu_k, max_q, max_k))
    q = torch.randn(1, 2, 4, 8)
    attention.torch_flash_varlen(None, q, q, q, None, scaling=8**-0.5)
    with pytest.raises(RuntimeError, match="no scale argument"):
        attention.torch_flash_varlen(None, q, q, q, None, scaling=0.5)


def test_refusals_say_why():
    q = torch.randn(1, 2, 4, 8, dtype=torch.bfloat16)
    with pytest.raises(RuntimeError, match="CUDA only"):
        attention.torch_flash_varlen(None, q, q, q, None)


def test_refusals_on_a_kernel_device(reference_kernel):
    q = torch.randn(1, 2, 4, 8, dtype=torch.bfloat16)
    with pytest.raises(RuntimeError, match="float16 / bfloat16"):
        attention.torch_flash_varlen(None, q.double(), q.double(), q.double(), None)
    with pytest.raises(RuntimeError, match="vision towers"):
        attention.torch_flash_varlen(None, q, q, q, torch.ones(1, 1, 4, 4, dtype=torch.bool))
    with pytest.raises(RuntimeError, match="vision towers"):
        attention.torch_flash_varlen(None, q, q, q, None, is_causal=True)
    cu = torch.tensor([0, 4], dtype=torch.int32)
    with pytest.raises(ValueError, match="one packed row"):
        attention.torch_flash_varlen(None, q.expand(2, -1, -1, -1), q, q, None, cu_seq_lens_q=cu, max_length_q=4)
    assert not CALLS


def test_use_sets_every_config_of_the_tower():
    model = tiny("tiny-qwen2.5-vl")
    tower = attention.use_torch_flash_varlen(tower_of(model))
    names = {sub.config._attn_implementation for sub in tower.modules() if hasattr(sub, "config")}
    assert names == {attention.NAME}
    assert model.model.language_model.config._attn_implementation != attention.NAME  # the tower only


@pytest.mark.parametrize("name", ["tiny-qwen2-vl", "tiny-qwen2.5-vl"])
def test_host_layout_call_on_the_varlen_path(reference_kernel, name):
    """The call a CUDA graph captures states the longest segment on the host (the tower would
    read it from the device) and gives the plain call's features, unpatched and under IPCV (the
    per-frame budget, and the global one, whose kept boundaries stay on the device)."""
    from pipeline.models import family_of

    inp = random_patches([(2, 8, 8), (1, 12, 8)], seed=6)
    tower = tower_of(_tower(name, attention.NAME))
    args, kwargs = family_of(tower).host_layout_call(tower, inp)
    assert kwargs["max_seqlen"] == 96
    if name == "tiny-qwen2.5-vl":
        windows = kwargs["cu_window_seqlens"]
        assert kwargs["max_window_seqlen"] == int((windows[1:] - windows[:-1]).max())
    for cfg in (None, *(ipcv.IPCVConfig(as_layers=2, as_queries="kept", budget=b) for b in ("per_image", "global"))):
        with ipcv.apply(tower, vision=cfg) if cfg else contextlib.nullcontext():
            with torch.no_grad():
                plain = run_tower(tower, inp).pooler_output
                hosted = tower(*args, **dict(kwargs)).pooler_output
        torch.testing.assert_close(hosted, plain, rtol=0, atol=0)


def _masked_kernel(q, k, v, cu_q, cu_k, max_q, max_k, *, scale=None):
    """``varlen_attn`` as one masked sdpa call: like the CUDA kernel, it reads nothing back to the
    host (the segments are told apart on the device)."""
    seg_q = torch.searchsorted(cu_q[1:], torch.arange(q.shape[0]), right=True)
    seg_k = torch.searchsorted(cu_k[1:], torch.arange(k.shape[0]), right=True)
    mask = seg_q[:, None] == seg_k[None, :]
    return F.scaled_dot_product_attention(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), attn_mask=mask,
                                          scale=scale).transpose(0, 1)


@pytest.mark.parametrize("name", ["tiny-qwen2-vl", "tiny-qwen2.5-vl"])
def test_the_varlen_tower_reads_the_device_per_call_not_per_block(reference_kernel, monkeypatch, name):
    """On a GPU every value the host reads back waits for the device. transformers' sdpa path
    reads the segment lengths three times in every block (a split of q, k and v); on the varlen
    path the reads are per call, so they do not grow with depth. Under IPCV with kept counts the
    host knows (one image, a video under the per-frame budget) the varlen tower adds one read:
    grid_thw, at the start, as on sdpa (tests/test_vision_ipcv.py). A video under the global
    budget adds one more, the kept counts per frame for the statistics once the last kernel is
    queued (on sdpa it also reads the kept boundaries: the per-segment loop needs them)."""
    from torch import nn

    from tests.test_vision_ipcv import _host_reads

    monkeypatch.setattr(attention, "_kernel", lambda: _masked_kernel)
    reads = {}
    for attn in ("sdpa", attention.NAME):
        for depth in ("full", "half"):
            model = _tower(name, attn)
            tower = tower_of(model)
            if depth == "half":
                tower.blocks = nn.ModuleList(list(tower.blocks)[: len(tower.blocks) // 2])
            for grid in ([(1, 8, 8)], [(4, 8, 8)]):
                inp = random_patches(grid, seed=2)
                reads[attn, depth, grid[0][0], None] = _host_reads(tower, inp, monkeypatch)
                for budget in ("global", "per_image"):
                    cfg = ipcv.IPCVConfig(as_layers=2, as_queries="kept", budget=budget)
                    with ipcv.apply(tower, vision=cfg):
                        reads[attn, depth, grid[0][0], budget] = _host_reads(tower, inp, monkeypatch)
    removed_blocks = len(tower_of(_tower(name, "sdpa")).blocks) - len(tower.blocks)
    for frames in (1, 4):
        sdpa = len(reads["sdpa", "full", frames, None]) - len(reads["sdpa", "half", frames, None])
        assert sdpa == 3 * removed_blocks  # three reads in every block
        varlen_full, varlen_half = (reads[attention.NAME, depth, frames, None] for depth in ("full", "half"))
        assert varlen_full == varlen_half  # none in the blocks
        per_frame = reads[attention.NAME, "full", frames, "per_image"]
        assert per_frame == sorted(varlen_full + ["tolist"])
        shared = reads[attention.NAME, "full", frames, "global"]
        assert shared == sorted(varlen_full + ["tolist"] * (1 if frames == 1 else 2))


@pytest.mark.parametrize("name", ["tiny-qwen2-vl", "tiny-qwen2.5-vl"])
@pytest.mark.parametrize("queries", ["all", "kept"])
def test_frames_that_keep_nothing_on_the_varlen_path(reference_kernel, name, queries):
    """Under the global budget a frame may keep no token: on the varlen path its segment stays in
    the boundaries, empty (the kernel skips it); on sdpa it is dropped. Same features."""
    inp = random_patches([(8, 2, 2), (1, 4, 4)], seed=9)
    cfg = ipcv.IPCVConfig(prune_layer=2, as_layers=2, reduction_ratio=0.9, selection="random", seed=3,
                          as_queries=queries)
    outs, kept = {}, {}
    for attn in ("sdpa", attention.NAME):
        model = _tower(name, attn)
        with ipcv.apply(model, vision=cfg) as handle:
            outs[attn] = run_tower(tower_of(model), inp).pooler_output
            kept[attn] = handle.vision_stats.tokens_kept
    assert kept["sdpa"] == kept[attention.NAME] and 0 in kept["sdpa"]
    assert any(0 in c["q"] for c in CALLS)  # an empty segment reached the kernel
    torch.testing.assert_close(outs[attention.NAME], outs["sdpa"], rtol=1e-5, atol=1e-5)


def test_a_profile_loads_the_tower_on_varlen_and_the_language_model_on_sdpa(monkeypatch):
    """``attn_implementation: torch_flash_varlen`` in a profile or ``load_model``: the tower on
    the varlen kernel, the language model on sdpa; refused before loading where the kernel cannot
    run (a CPU, float32) and for a tower that does not pack its inputs (InternViT's tiles)."""
    from pydantic import ValidationError

    from pipeline.models import load_model
    from pipeline.sweep.spec import ModelSpec

    with pytest.raises(ValueError, match="CUDA only"):
        load_model("tiny-qwen2-vl", dtype="bfloat16", attn_implementation=attention.NAME, device="cpu")
    with pytest.raises(ValueError, match="bfloat16 / float16"):
        load_model("tiny-qwen2-vl", dtype="float32", attn_implementation=attention.NAME, device="cuda")
    assert ModelSpec(name="tiny-qwen2-vl", attn_implementation=attention.NAME, gpus=1).dtype == "bfloat16"
    with pytest.raises(ValidationError, match="CUDA only"):
        ModelSpec(name="tiny-qwen2-vl", attn_implementation=attention.NAME)
    with pytest.raises(ValidationError, match="bfloat16 / float16"):
        ModelSpec(name="tiny-qwen2-vl", attn_implementation=attention.NAME, dtype="float32", gpus=1)

    monkeypatch.setattr(attention, "check_setting", lambda dtype, device: None)  # the CPU stands in for CUDA
    model = load_model("tiny-qwen2.5-vl", dtype="bfloat16", attn_implementation=attention.NAME, device="cpu")
    assert {sub.config._attn_implementation for sub in tower_of(model).modules() if hasattr(sub, "config")} == {
        attention.NAME}
    assert model.model.language_model.config._attn_implementation == "sdpa"
    with pytest.raises(ValueError, match="takes its tiles as a batch"):
        load_model("tiny-internvl3", dtype="bfloat16", attn_implementation=attention.NAME, device="cpu")
