"""FastV and DART in the language model's prefill, against the unpatched model and explicit computations."""

import math

import pytest
import torch

import ipcv
from pipeline.models.qwen_vl import random_patches
from tests.conftest import IMAGE_TOKEN, left_padded_batch, multimodal_request, tiny

K = 2  # prune from decoder layer 2 of 4


def image_positions(request) -> list[int]:
    ids = request["input_ids"][0].tolist()
    return [i for i, t in enumerate(ids) if t == IMAGE_TOKEN]


def test_bad_llm_configs_name_the_field():
    for field, value, expected in [
        ("method", "sparsevlm", "'dart', 'fastv'"),
        ("layer", 0, ">= 1"),
        ("reduction_ratio", 1.0, "[0, 1)"),
        ("pivot_text_tokens", -1, ">= 0"),
    ]:
        with pytest.raises(ValueError) as err:
            ipcv.LLMPruneConfig(**{field: value})
        assert f"LLMPruneConfig.{field}" in str(err.value) and repr(value) in str(err.value)
        assert expected in str(err.value)
    model = tiny("tiny-qwen2-vl")  # 4 decoder layers
    with pytest.raises(ValueError, match="decoder layers \\(4\\)"):
        ipcv.apply(model, llm=ipcv.LLMPruneConfig(layer=4))
    with pytest.raises(TypeError, match="whole"):
        ipcv.apply(model.model.visual, llm=ipcv.LLMPruneConfig())


@pytest.mark.parametrize("method", ["fastv", "dart"])
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_ratio_zero_is_identical_through_generation(family, method, attn, two_images):
    model = tiny(family, attn_implementation=attn)
    request = multimodal_request(two_images)
    with torch.no_grad():
        logits = model(**request).logits
        generated = model.generate(**request, max_new_tokens=5, do_sample=False)
        with ipcv.apply(model, llm=ipcv.LLMPruneConfig(method=method, layer=K, reduction_ratio=0.0)) as handle:
            assert torch.equal(model(**request).logits, logits)
            assert torch.equal(model.generate(**request, max_new_tokens=5, do_sample=False), generated)
            n = len(image_positions(request))
            assert handle.llm_stats.image_tokens_in == [n] and handle.llm_stats.image_tokens_kept == [n]


@pytest.mark.parametrize("r_percent", [50, 78])
def test_kept_counts_follow_the_budgets(family, r_percent, two_images):
    model = tiny(family)
    request = multimodal_request(two_images)
    n = len(image_positions(request))
    with torch.no_grad():
        with ipcv.apply(model, llm=ipcv.LLMPruneConfig(method="fastv", layer=K, reduction_ratio=r_percent / 100)) as h:
            model(**request)
            kept = n * (100 - r_percent) // 100
            assert h.llm_stats.image_tokens_kept == [kept]
            # float32 keys + values, 2 KV heads of 16: layers 0..K-1 hold all S positions, K..3 hold S'
            length = request["input_ids"].shape[1]
            per_position = 2 * 2 * 16 * 4
            assert h.llm_stats.kv_cache_bytes == per_position * (K * length + (4 - K) * (length - n + kept))
        with ipcv.apply(model, llm=ipcv.LLMPruneConfig(method="dart", layer=K, reduction_ratio=r_percent / 100)) as h:
            model(**request)
            per_pivot = n * (100 - r_percent) // 100 // 8
            assert h.llm_stats.image_tokens_kept == [min(n, 4 + 8 * per_pivot)]  # 4 image pivots + 8 pivots' picks
            assert h.llm_stats.sequence_kept == request["input_ids"].shape[1] - n + h.llm_stats.image_tokens_kept[0]


def test_fastv_ranks_by_the_layers_real_attention(family, two_images):
    """FastV's scores equal layer K-1's eager attention weights of the last prompt token."""
    model = tiny(family, attn_implementation="eager")
    request = multimodal_request(two_images)
    with torch.no_grad():
        attentions = model(**request, output_attentions=True).attentions
        expected = attentions[K - 1][0, :, -1, :].mean(dim=0)  # [S]
        with ipcv.apply(model, llm=ipcv.LLMPruneConfig(method="fastv", layer=K, reduction_ratio=0.5)) as h:
            model(**request)
            stats = h.llm_stats
    torch.testing.assert_close(stats.last_token_attention[0], expected, rtol=1e-4, atol=1e-6)
    positions = image_positions(request)
    ranked = sorted(positions, key=lambda p: -float(expected[p]))[: len(positions) // 2]
    kept = set(stats.kept_positions[0].tolist())
    assert set(positions) & kept == set(ranked)


def _rope_by_hand(x, cos, sin):
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos[:, None] + rotated * sin[:, None]


def test_dart_matches_step_by_step_selection(family, two_images):
    model = tiny(family)
    lm = model.model.language_model
    request = multimodal_request(two_images)
    seen = {}
    layer = lm.layers[K - 1]
    pre = layer.register_forward_pre_hook(
        lambda m, a, kw: seen.update(h_in=a[0], rope=kw["position_embeddings"]), with_kwargs=True
    )
    post = layer.register_forward_hook(lambda m, a, out: seen.update(h_out=out))
    with torch.no_grad():
        model(**request)
    pre.remove()
    post.remove()

    with torch.no_grad():
        states = lm.norm(seen["h_out"])[0]
        attn = layer.self_attn
        keys = attn.k_proj(layer.input_layernorm(seen["h_in"]))[0]  # [S, Hkv*hd]
        cos, sin = (t[0] for t in seen["rope"])
        keys = keys.view(keys.shape[0], -1, attn.head_dim).transpose(0, 1)  # [Hkv, S, hd]
        keys = keys * cos + torch.cat((-keys[..., attn.head_dim // 2 :], keys[..., : attn.head_dim // 2]), -1) * sin
        l1 = [float(keys[:, p].abs().sum()) for p in range(states.shape[0])]

    images = image_positions(request)
    texts = list(range(images[-1] + 1, states.shape[0]))
    image_pivots = sorted(sorted(images, key=lambda p: -l1[p])[:4])
    text_pivots = sorted(sorted(texts, key=lambda p: -l1[p])[:4])
    r = 0.75
    budget = int(len(images) * (1 - r) / 8)
    remaining = [p for p in images if p not in image_pivots]
    kept = list(image_pivots)

    def cosine(a, b):
        return float(a @ b) / math.sqrt(float(a @ a) * float(b @ b))

    for pivot in image_pivots + text_pivots:
        ranked = sorted(remaining, key=lambda p: cosine(states[p], states[pivot]))[:budget]
        kept += ranked
        remaining = [p for p in remaining if p not in ranked]

    with torch.no_grad(), ipcv.apply(model, llm=ipcv.LLMPruneConfig(method="dart", layer=K, reduction_ratio=r)) as h:
        model(**request)
        got = [p for p in h.llm_stats.kept_positions[0].tolist() if p in set(images)]
    assert got == sorted(kept)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("method", ["fastv", "dart"])
def test_cached_decode_equals_no_cache_recompute_of_the_pruned_sequence(family, method, attn, two_images):
    """Greedy decoding with the pruned KV cache gives the same logits as recomputing, without a
    cache, the whole pruned sequence (same kept image positions) with the tokens generated so far."""
    model = tiny(family, attn_implementation=attn)
    request = multimodal_request(two_images)
    steps = 5
    with torch.no_grad(), ipcv.apply(model, llm=ipcv.LLMPruneConfig(method=method, layer=K, reduction_ratio=0.6)) as h:
        out = model.generate(
            **request, max_new_tokens=steps, do_sample=False, output_logits=True, return_dict_in_generate=True
        )
        kept = h.llm_stats.kept_positions
        images = set(image_positions(request))
        kept_images = torch.tensor([[p for p in kept[0].tolist() if p in images]])
        prompt_length = request["input_ids"].shape[1]
        assert out.sequences.shape[1] == prompt_length + steps
        h.force_llm_selection(kept_images)
        for t in range(steps):
            sequence = out.sequences[:, : prompt_length + t]
            replay = dict(request)
            replay["input_ids"] = sequence
            replay["attention_mask"] = torch.ones_like(sequence)
            replay["mm_token_type_ids"] = torch.cat(
                [request["mm_token_type_ids"], torch.zeros(1, t, dtype=torch.long)], dim=1
            )
            logits = model(**replay, use_cache=False).logits[:, -1]
            torch.testing.assert_close(logits, out.logits[t], rtol=1e-4, atol=1e-5)
            assert int(logits.argmax()) == int(out.sequences[0, prompt_length + t])


@pytest.mark.parametrize("method", ["fastv", "dart"])
@pytest.mark.parametrize("kind", ["video", "two_images"])
def test_stacked_with_ipcv_on_video_and_multi_image(family, method, kind, request):
    model = tiny(family)
    inp = request.getfixturevalue(kind)
    mm_request = multimodal_request(inp, video=kind == "video")
    n = sum(t * h * w // 4 for t, h, w in inp.grid_thw.tolist())
    cfg = ipcv.LLMPruneConfig(method=method, layer=K, reduction_ratio=0.778)
    with torch.no_grad():
        with ipcv.apply(model, vision=ipcv.IPCVConfig(), llm=cfg) as h:
            generated = model.generate(**mm_request, max_new_tokens=4, do_sample=False)
            assert h.vision_stats.total_kept < h.vision_stats.total_in
            assert h.vision_stats.tokens_to_merger == h.vision_stats.tokens_in
            assert h.llm_stats.image_tokens_in == [n]
            if method == "fastv":
                assert h.llm_stats.image_tokens_kept == [n * 222 // 1000]  # floor(n * (1 - 0.778))
            else:
                assert h.llm_stats.image_tokens_kept == [4 + 8 * int(n * 0.222 / 8)]
            assert h.llm_stats.kv_cache_bytes is not None
    assert generated.shape[1] == mm_request["input_ids"].shape[1] + 4


def test_batch_with_left_padding_matches_single_rows(family):
    model = tiny(family)
    single = [
        multimodal_request(random_patches([(1, 8, 8)], seed=20)),
        multimodal_request(random_patches([(1, 8, 8)], seed=21)),
    ]
    single[1]["input_ids"] = torch.cat([single[1]["input_ids"], torch.tensor([[13, 14]])], dim=1)
    single[1]["attention_mask"] = torch.ones_like(single[1]["input_ids"])
    single[1]["mm_token_type_ids"] = torch.cat([single[1]["mm_token_type_ids"], torch.zeros(1, 2, dtype=torch.long)], 1)
    pad = 2
    zeros = torch.zeros(1, pad, dtype=torch.long)
    batch = {
        "input_ids": torch.cat([torch.cat([torch.full((1, pad), 2), single[0]["input_ids"]], 1), single[1]["input_ids"]]),
        "attention_mask": torch.cat([torch.cat([zeros, single[0]["attention_mask"]], 1), single[1]["attention_mask"]]),
        "mm_token_type_ids": torch.cat([torch.cat([zeros, single[0]["mm_token_type_ids"]], 1), single[1]["mm_token_type_ids"]]),
        "pixel_values": torch.cat([single[0]["pixel_values"], single[1]["pixel_values"]]),
        "image_grid_thw": torch.cat([single[0]["image_grid_thw"], single[1]["image_grid_thw"]]),
    }
    cfg = ipcv.LLMPruneConfig(method="fastv", layer=K, reduction_ratio=0.5)
    with torch.no_grad(), ipcv.apply(model, llm=cfg) as h:
        batched = model.generate(**batch, max_new_tokens=4, do_sample=False)
        assert h.llm_stats.image_tokens_kept == [8, 8]
        for row, req in enumerate(single):
            alone = model.generate(**req, max_new_tokens=4, do_sample=False)
            assert batched[row, -4:].tolist() == alone[0, -4:].tolist()


def test_batch_with_different_image_counts_is_refused(family):
    model = tiny(family)
    a = multimodal_request(random_patches([(1, 8, 8)], seed=22))
    b = multimodal_request(random_patches([(1, 4, 8)], seed=23))
    batch = left_padded_batch(a, b)
    with torch.no_grad(), ipcv.apply(model, llm=ipcv.LLMPruneConfig(method="dart", layer=K)):
        with pytest.raises(ValueError, match="same number of image/video tokens"):
            model(**batch)


@pytest.mark.parametrize("method", ["fastv", "dart"])
def test_pruned_prefill_matches_layers_run_by_hand(family, method, two_images):
    """Logits of the pruned prefill equal running the decoder layers by hand: layers < K on all
    positions, then only the kept positions with their own rotary embeddings and a causal mask."""
    model = tiny(family, attn_implementation="eager")
    lm = model.model.language_model
    request = multimodal_request(two_images)
    seen = {}
    hook = lm.layers[0].register_forward_pre_hook(
        lambda m, a, kw: seen.update(h=a[0], rope=kw["position_embeddings"]), with_kwargs=True
    )
    with torch.no_grad():
        model(**request)
    hook.remove()
    with torch.no_grad(), ipcv.apply(model, llm=ipcv.LLMPruneConfig(method=method, layer=K, reduction_ratio=0.6)) as h:
        pruned_logits = model(**request).logits
        kept = h.llm_stats.kept_positions[0]

    def causal(n):
        upper = torch.triu(torch.ones(n, n, dtype=torch.bool), diagonal=1)
        return torch.zeros(n, n).masked_fill(upper, torch.finfo(torch.float32).min)[None, None]

    with torch.no_grad():
        x, (cos, sin) = seen["h"], seen["rope"]
        for i, layer in enumerate(lm.layers):
            if i == K:
                x, cos, sin = x[:, kept], cos[:, kept], sin[:, kept]
            x = layer(x, attention_mask=causal(x.shape[1]), position_embeddings=(cos, sin))
        expected = model.lm_head(lm.norm(x))
    assert pruned_logits.shape[1] == kept.numel()
    torch.testing.assert_close(pruned_logits, expected, rtol=1e-4, atol=1e-5)
