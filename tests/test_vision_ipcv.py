"""IPCV on the vision towers of both families, against the unpatched model and a written-out reference."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import ipcv
from pipeline.models.qwen_vl import random_patches
from tests.conftest import TWO_IMAGES, left_padded_batch, multimodal_request, run_tower, tiny, tower_of
from tests.reference_ipcv import frame_of_each_token, reference_ipcv


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_ratio_zero_is_bit_identical_and_remove_restores(family, attn, dtype, two_images):
    model = tiny(family, attn_implementation=attn, dtype=dtype)
    tower = tower_of(model)
    reference = run_tower(tower, two_images)
    with ipcv.apply(model, vision=ipcv.IPCVConfig(reduction_ratio=0.0)) as handle:
        same = run_tower(tower, two_images)
        assert handle.vision_stats.tokens_kept == handle.vision_stats.tokens_in
    assert torch.equal(same.pooler_output, reference.pooler_output)
    assert torch.equal(same.last_hidden_state, reference.last_hidden_state)

    handle = ipcv.apply(model, vision=ipcv.IPCVConfig(reduction_ratio=0.65))
    pruned = run_tower(tower, two_images)
    assert not torch.equal(pruned.pooler_output, reference.pooler_output)
    assert torch.isfinite(pruned.pooler_output.float()).all()
    handle.remove()
    assert torch.equal(run_tower(tower, two_images).pooler_output, reference.pooler_output)


def test_full_model_forward_and_generate(family, two_images):
    model = tiny(family)
    request = multimodal_request(two_images)
    with torch.no_grad():
        logits = model(**request).logits
        generated = model.generate(**request, max_new_tokens=4, do_sample=False)
        with ipcv.apply(model, vision=ipcv.IPCVConfig(reduction_ratio=0.0)):
            assert torch.equal(model(**request).logits, logits)
            assert torch.equal(model.generate(**request, max_new_tokens=4, do_sample=False), generated)
        with ipcv.apply(model, vision=ipcv.IPCVConfig(reduction_ratio=0.65)) as handle:
            pruned_logits = model(**request).logits
            assert handle.vision_stats.total_kept < handle.vision_stats.total_in
            handle_stats_after_forward = handle.vision_stats
            out = model.generate(**request, max_new_tokens=4, do_sample=False)
            assert handle.vision_stats is not handle_stats_after_forward  # generate ran the patched tower again
            assert out.shape == generated.shape
        assert not torch.equal(pruned_logits, logits)
        assert pruned_logits.shape == logits.shape  # the LLM sees as many visual tokens as before


def test_patched_and_unpatched_instances_coexist(family, two_images):
    patched, plain = tiny(family), tiny(family)
    reference = run_tower(tower_of(plain), two_images).pooler_output
    with ipcv.apply(patched, vision=ipcv.IPCVConfig()):
        assert not torch.equal(run_tower(tower_of(patched), two_images).pooler_output, reference)
        assert torch.equal(run_tower(tower_of(plain), two_images).pooler_output, reference)


@pytest.mark.parametrize("r_percent", [50, 65, 78])
def test_kept_counts_follow_the_budget(family, r_percent, video):
    model = tiny(family)
    inputs = [random_patches(TWO_IMAGES, seed=3), video]
    for inp in inputs:
        for budget in ("global", "per_image"):
            cfg = ipcv.IPCVConfig(reduction_ratio=r_percent / 100, budget=budget)
            with ipcv.apply(model, vision=cfg) as handle:
                run_tower(tower_of(model), inp)
                stats = handle.vision_stats
            sizes = [h * w for t, h, w in inp.grid_thw.tolist() for _ in range(t)]
            assert stats.tokens_in == sizes
            assert stats.tokens_to_merger == sizes
            if budget == "global":
                assert sum(stats.tokens_kept) == sum(sizes) * (100 - r_percent) // 100
            else:
                assert stats.tokens_kept == [n * (100 - r_percent) // 100 for n in sizes]


@pytest.mark.parametrize(
    "budget, scope, restore",
    [
        ("global", "global", "ngr"),
        ("per_image", "same_image", "ngr"),
        ("global", "same_image", "frozen"),
        ("per_image", "global", "ngr"),
    ],
)
@pytest.mark.parametrize("as_queries", ["all", "kept"])
def test_matches_written_out_reference(family, budget, scope, restore, as_queries):
    """The written-out rule computes every query in the AS blocks; ``as_queries="kept"`` must give
    the same kept outputs without the others."""
    model = tiny(family, attn_implementation="eager")
    tower = tower_of(model)
    inp = random_patches([(1, 8, 8), (1, 4, 8)], seed=5)
    K, A, k, r_percent = 3, 4, 3, 65
    expected, kept, _ = reference_ipcv(
        tower, inp, K=K, r_percent=r_percent, A=A, k=k, budget=budget, scope=scope, restore=restore
    )
    cfg = ipcv.IPCVConfig(
        prune_layer=K, reduction_ratio=r_percent / 100, as_layers=A, neighbors=k,
        budget=budget, neighbor_scope=scope, restore=restore, as_queries=as_queries,
    )
    with ipcv.apply(model, vision=cfg) as handle:
        out = run_tower(tower, inp)
        stats = handle.vision_stats
    assert stats.kept_index.tolist() == kept
    assert stats.as_blocks == list(range(K, K + A)) and stats.pruned_blocks == list(range(K + A, 12))
    torch.testing.assert_close(out.last_hidden_state, expected, rtol=1e-4, atol=1e-4)


def test_reconstruction_matters(family):
    """NGR and frozen restoration give different features (the ablation is real)."""
    model = tiny(family)
    inp = random_patches([(1, 8, 8)], seed=6)
    outs = []
    for restore in ("ngr", "frozen"):
        with ipcv.apply(model, vision=ipcv.IPCVConfig(restore=restore, as_layers=2)):
            outs.append(run_tower(tower_of(model), inp).pooler_output)
    assert not torch.allclose(outs[0], outs[1])


def test_random_selection_is_seeded(family):
    model = tiny(family)
    inp = random_patches([(1, 8, 8)], seed=7)
    kept = []
    for seed in (0, 0, 1):
        with ipcv.apply(model, vision=ipcv.IPCVConfig(selection="random", seed=seed)) as handle:
            run_tower(tower_of(model), inp)
            kept.append(handle.vision_stats.kept_index.tolist())
    assert kept[0] == kept[1] != kept[2]
    with ipcv.apply(model, vision=ipcv.IPCVConfig()) as handle:
        run_tower(tower_of(model), inp)
        assert handle.vision_stats.kept_index.tolist() != kept[0]


def test_per_image_same_image_isolates_images(family):
    model = tiny(family)
    tower = tower_of(model)
    a = random_patches([(1, 8, 8)], seed=8).pixel_values
    b = random_patches([(1, 8, 8)], seed=9).pixel_values
    grid = torch.tensor([[1, 8, 8], [1, 8, 8]])

    def features(cfg, second):
        with ipcv.apply(model, vision=cfg):
            with torch.no_grad():
                return tower(torch.cat([a, second]), grid_thw=grid).pooler_output[:16]

    isolated = ipcv.IPCVConfig(budget="per_image", neighbor_scope="same_image")
    torch.testing.assert_close(features(isolated, b), features(isolated, 5 * b + 1), rtol=0, atol=1e-5)
    # the published joint selection lets the second image change the first one's tokens
    joint = ipcv.IPCVConfig()
    assert not torch.allclose(features(joint, b), features(joint, 5 * b + 1), atol=1e-3)


def test_kept_tokens_never_attend_across_images(family):
    model = tiny(family)
    tower = tower_of(model)
    inp = random_patches([(1, 8, 8), (1, 4, 8), (2, 4, 4)], seed=10)
    frames = frame_of_each_token(inp.grid_thw)
    seen = {}

    def hook(i):
        def record(module, args, kwargs):
            seen[i] = (args[0].shape[0], kwargs["cu_seqlens"].tolist())

        return record

    cfg = ipcv.IPCVConfig(as_layers=2)  # blocks 5..11 run on kept tokens only
    with ipcv.apply(model, vision=cfg) as handle:
        handles = [b.attn.register_forward_pre_hook(hook(i), with_kwargs=True) for i, b in enumerate(tower.blocks)]
        run_tower(tower, inp)
        for h in handles:
            h.remove()
        kept = handle.vision_stats.kept_index.tolist()
    kept_frames = [frames[t] for t in kept]
    for i in handle.vision_stats.pruned_blocks:
        n, cu = seen[i]
        assert n == len(kept)
        for start, end in zip(cu[:-1], cu[1:]):
            assert end > start
            assert len(set(kept_frames[start:end])) == 1, f"block {i}: segment {start}:{end} spans images"


def test_video_and_multi_image_requests(family, video):
    model = tiny(family)
    with torch.no_grad():
        request = multimodal_request(video, video=True)
        logits = model(**request).logits
        with ipcv.apply(model, vision=ipcv.IPCVConfig(budget="per_image")) as handle:
            pruned = model(**request).logits
            stats = handle.vision_stats
    assert stats.frames_per_item == [3]
    assert len(stats.tokens_kept) == 3 and all(n == 64 * 35 // 100 for n in stats.tokens_kept)
    assert pruned.shape == logits.shape and torch.isfinite(pruned).all()


def test_exception_mid_forward_leaves_no_state(family, two_images):
    model = tiny(family)
    tower = tower_of(model)
    cfg = ipcv.IPCVConfig()
    with ipcv.apply(model, vision=cfg) as handle:
        expected = run_tower(tower, two_images).pooler_output
        block = tower.blocks[6]
        original_mlp_forward = block.mlp.forward

        def boom(*args, **kwargs):
            raise torch.cuda.OutOfMemoryError("simulated OOM")

        block.mlp.forward = boom
        with pytest.raises(torch.cuda.OutOfMemoryError):
            run_tower(tower, random_patches([(1, 6, 6)], seed=11))
        assert handle.vision_stats is None
        block.mlp.forward = original_mlp_forward
        again = run_tower(tower, two_images).pooler_output
        assert torch.equal(again, expected)
        assert handle.vision_stats.tokens_in == [144, 80]


def test_qwen25_windows_keep_counts_per_window():
    model = tiny("tiny-qwen2.5-vl")
    tower = tower_of(model)
    inp = random_patches([(1, 16, 12), (1, 8, 8)], seed=12)  # several 8x8-patch windows per image
    unpatched = {}
    patched = {}

    def hook(store, i):
        def record(module, args, kwargs):
            store[i] = kwargs["cu_seqlens"].tolist()

        return record

    handles = [b.register_forward_pre_hook(hook(unpatched, i), with_kwargs=True) for i, b in enumerate(tower.blocks)]
    run_tower(tower, inp)
    for h in handles:
        h.remove()
    window_block = 10  # not in fullatt_block_indexes [3, 7, 11]
    assert len(unpatched[window_block]) > len(unpatched[11])  # windows are finer than images
    with ipcv.apply(model, vision=ipcv.IPCVConfig(as_layers=2)) as handle:
        handles = [b.attn.register_forward_pre_hook(hook(patched, i), with_kwargs=True) for i, b in enumerate(tower.blocks)]
        run_tower(tower, inp)
        for h in handles:
            h.remove()
        kept = set(handle.vision_stats.kept_index.tolist())
    for block in (window_block, 11):
        bounds = unpatched[block]
        counts = [sum(1 for t in range(s, e) if t in kept) for s, e in zip(bounds[:-1], bounds[1:])]
        expected = [0]
        for c in counts:
            if c:
                expected.append(expected[-1] + c)
        assert patched[block] == expected


@pytest.mark.parametrize("config", [ipcv.IPCVConfig(), ipcv.IPCVConfig(selection="random", neighbor_scope="same_image")])
def test_each_request_of_a_batch_is_compressed_as_if_it_were_alone(family, config):
    """The tower gets every request's images in one call; "global" means one request's images,
    so a request's visual features do not depend on what else is in the batch."""
    model = tiny(family)
    a = multimodal_request(random_patches([(1, 8, 8), (1, 4, 8)], seed=50))  # two images
    b = multimodal_request(random_patches([(1, 8, 12)], seed=51))  # one larger image
    batch = left_padded_batch(a, b)
    features: list[torch.Tensor] = []
    hook = tower_of(model).register_forward_hook(lambda m, args, out: features.append(out.pooler_output))
    with torch.no_grad(), ipcv.apply(model, vision=config) as handle:
        model(**a)
        kept_a = handle.vision_stats.tokens_kept
        model(**b)
        kept_b = handle.vision_stats.tokens_kept
        model(**batch)
        kept_batch = handle.vision_stats.tokens_kept
    hook.remove()
    alone = torch.cat(features[:2])
    assert kept_batch == kept_a + kept_b  # each request kept its own share: floor(n_r (1 - r))
    torch.testing.assert_close(features[2], alone, rtol=1e-4, atol=1e-5)


class _HostReads(TorchDispatchMode):
    """Counts the operations whose result the host must wait for on a GPU: scalars read back
    (``int(t)``, ``.item()``) and outputs whose size depends on values (``nonzero``, ``unique``).
    ``Tensor.tolist`` bypasses the dispatcher; the test counts it separately."""

    READS = {"aten._local_scalar_dense", "aten.nonzero", "aten.nonzero_numpy", "aten.unique_consecutive",
             "aten._unique2", "aten.unique_dim", "aten.masked_select", "aten.bincount"}

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if str(func.overloadpacket) in self.READS:
            self.reads.append(str(func.overloadpacket))
        return func(*args, **(kwargs or {}))


def _host_reads(tower, inp, monkeypatch) -> list[str]:
    tolist = torch.Tensor.tolist
    with _HostReads() as mode:
        def counting_tolist(self):
            mode.reads.append("tolist")
            return tolist(self)

        monkeypatch.setattr(torch.Tensor, "tolist", counting_tolist)
        run_tower(tower, inp)
        monkeypatch.setattr(torch.Tensor, "tolist", tolist)
    return sorted(mode.reads)


@pytest.mark.parametrize(
    "grid, config",
    [
        ([(1, 8, 8)], ipcv.IPCVConfig(prune_layer=3, as_layers=4)),
        ([(1, 8, 8), (1, 4, 8)], ipcv.IPCVConfig(prune_layer=3, as_layers=4, budget="per_image")),
        ([(1, 8, 8), (1, 4, 8)], ipcv.IPCVConfig(prune_layer=3, as_layers=4, budget="per_image",
                                                 neighbor_scope="same_image", selection="random")),
    ],
)
def test_ipcv_adds_no_host_read_when_the_host_knows_the_kept_counts(family, grid, config, monkeypatch):
    """Kept counts follow from grid_thw and the ratio whenever every selection segment is one
    frame: then IPCV reads nothing back from the device but grid_thw, once, at the start of the
    call (the unpatched tower reads it too)."""
    model = tiny(family, attn_implementation="sdpa")
    tower = tower_of(model)
    inp = random_patches(grid, seed=2)
    unpatched = _host_reads(tower, inp, monkeypatch)
    assert unpatched, "the counter saw none of the unpatched tower's reads"
    with ipcv.apply(model, vision=config) as handle:
        patched = _host_reads(tower, inp, monkeypatch)
        assert handle.vision_stats.total_kept > 0
    assert patched == sorted(unpatched + ["tolist"])


def test_a_video_under_the_global_budget_reads_the_kept_layout_once(monkeypatch):
    """Frames of a video share one budget, so how many tokens each frame keeps is on the device:
    IPCV reads the kept boundaries once (``unique_consecutive``) and the per-frame counts once,
    at the end of the call."""
    model = tiny("tiny-qwen2-vl", attn_implementation="sdpa")
    tower = tower_of(model)
    inp = random_patches([(4, 4, 4)], seed=2)
    unpatched = _host_reads(tower, inp, monkeypatch)
    with ipcv.apply(model, vision=ipcv.IPCVConfig(prune_layer=3, as_layers=4)) as handle:
        patched = _host_reads(tower, inp, monkeypatch)
        assert sum(handle.vision_stats.tokens_kept) == 22  # floor(64 * 0.35)
    assert sorted(set(patched) - set(unpatched)) == ["aten.unique_consecutive"]
    assert len(patched) - len(unpatched) == 3  # grid_thw, unique_consecutive, and one tolist


def test_kept_queries_on_sdpa_do_not_read_the_kept_boundaries(monkeypatch):
    """With ``as_queries="kept"`` on a kernel called per segment, an Attention-Stabilization block
    needs the kept counts per segment on the host (one read), not the kept boundaries: when no
    block runs on the kept tokens alone (K + A = depth), those are never computed or read."""
    model = tiny("tiny-qwen2-vl", attn_implementation="sdpa")
    tower = tower_of(model)
    depth = len(tower.blocks)
    inp = random_patches([(4, 4, 4)], seed=2)
    for as_queries in ("all", "kept"):
        cfg = ipcv.IPCVConfig(prune_layer=3, as_layers=depth - 3, as_queries=as_queries)
        with ipcv.apply(model, vision=cfg) as handle:
            reads = _host_reads(tower, inp, monkeypatch)
            assert handle.vision_stats.pruned_blocks == []
        assert "aten.unique_consecutive" not in reads


def test_no_copy_from_the_host_for_a_video_and_none_while_a_graph_is_captured(monkeypatch):
    """A video's frames are of one size: IPCV makes their boundaries on the device (nothing copied
    from the host, which a CUDA graph could replay from a reused buffer). Where it would copy,
    the copy is refused during a capture, and a captured call publishes no statistics."""
    from ipcv import algorithm as alg

    copies = []
    to_device = alg.to_device
    monkeypatch.setattr(alg, "to_device", lambda host, device: copies.append(host.shape) or to_device(host, device))
    model = tiny("tiny-qwen2-vl", attn_implementation="sdpa")
    with ipcv.apply(model, vision=ipcv.IPCVConfig(prune_layer=3, as_layers=4)) as handle:
        run_tower(tower_of(model), random_patches([(4, 4, 4)], seed=2))  # global budget: frames share it
        assert copies == [] and handle.vision_stats.total_kept == 22
        run_tower(tower_of(model), random_patches([(1, 4, 4), (1, 4, 8)], seed=2))  # sizes differ: copied
        assert copies == [torch.Size([3])]
        monkeypatch.setattr(alg, "capturing", lambda: True)
        with pytest.raises(RuntimeError, match="during CUDA graph capture"):
            to_device(torch.zeros(3), torch.device("cuda"))  # refused before CUDA is touched
        run_tower(tower_of(model), random_patches([(4, 4, 4)], seed=2))
        assert handle.vision_stats is None  # nothing published from a captured call


def test_kept_boundaries_of_frames_from_the_host_or_the_device():
    """With kept counts per frame known, the kept tokens' boundaries are stated on the host for a
    ``cu`` the host holds, and counted on the kept tokens' device for a ``cu`` there (a CUDA graph
    cannot capture a copy from the host): the same boundaries either way, and the longest segment
    known without reading the device."""
    from ipcv.vision import _PrunePlan

    kept = torch.tensor([0, 2, 3, 5, 9, 10, 11])  # three frames of 4 tokens keep 3, 1 and 3
    plan = _PrunePlan(kept, torch.tensor([1, 4, 6, 7, 8]), None, kept_per_frame=[3, 1, 3], frame_sizes=[4, 4, 4])
    cu = torch.tensor([0, 4, 8, 12], dtype=torch.int32)
    on_device, longest = plan.kept_cu(cu, None)
    on_host, _ = plan.kept_cu(cu.to("meta"), None)  # a cu the kept tokens' device does not hold
    assert on_device.tolist() == on_host.tolist() == [0, 3, 4, 7] and longest == 3
    assert on_device.dtype == on_host.dtype == torch.int32 and on_host.device.type == "cpu"  # stated on the host


def test_kept_boundaries_for_a_varlen_kernel_read_nothing_back():
    """Kept counts on the device (frames sharing the global budget; here the second frame keeps
    none): for a kernel called per segment the empty segment is dropped and the host reads the
    boundaries; for a varlen kernel it stays (the kernel skips it), and the longest segment is
    bounded by the tower's own longest and the kept count instead of read."""
    from ipcv.vision import _PrunePlan

    kept = torch.tensor([0, 2, 3, 9, 10])
    cu = torch.tensor([0, 4, 8, 12], dtype=torch.int32)
    for bound, expected, longest in ((None, [0, 3, 5], None), (4, [0, 3, 3, 5], 4), (8, [0, 3, 3, 5], 5)):
        plan = _PrunePlan(kept, torch.tensor([1, 4, 5, 6, 7, 8, 11]), None, frame_sizes=[4, 4, 4])
        with _HostReads() as mode:
            bounds, found = plan.kept_cu(cu, bound)
        assert bounds.tolist() == expected and found == longest and bounds.dtype == torch.int32
        assert bool(mode.reads) == (bound is None)  # unique_consecutive, for the per-segment kernel only
