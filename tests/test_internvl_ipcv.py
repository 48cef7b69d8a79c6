"""IPCV inside InternViT (tiles as batch rows, CLS always kept): against the unpatched tower and
model, and against the published rule written out step by step (tests/reference_internvl.py)."""

from __future__ import annotations

import pytest
import torch

import ipcv
from tests.reference_internvl import reference_internvl

IMAGE_TOKEN = 500


def tiny_internvl(seed: int = 0, depth: int = 12, feature_layer: int = -1) -> torch.nn.Module:
    """InternVL3's layout at width 64: 112² tiles of 8 x 8 patches + CLS, pixel shuffle to 16 LLM tokens."""
    from transformers import InternVLConfig, InternVLForConditionalGeneration

    config = InternVLConfig(
        vision_config=dict(hidden_size=64, num_hidden_layers=depth, num_attention_heads=4, intermediate_size=128,
                           image_size=[112, 112], patch_size=[14, 14], layer_scale_init_value=0.5),
        text_config=dict(model_type="qwen2", hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=128, vocab_size=512),
        image_token_id=IMAGE_TOKEN, image_seq_length=16, vision_feature_layer=feature_layer,
    )
    torch.manual_seed(seed)
    model = InternVLForConditionalGeneration(config).eval()
    for layer in model.model.vision_tower.encoder.layer:  # layer scales away from their constant init
        torch.nn.init.uniform_(layer.lambda_1, 0.2, 1.0)
        torch.nn.init.uniform_(layer.lambda_2, 0.2, 1.0)
    return model


def pixels(tiles: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(tiles, 3, 112, 112, generator=torch.Generator().manual_seed(seed))


def tower_out(model, x):
    with torch.no_grad():
        return model.model.vision_tower(pixel_values=x).last_hidden_state


def request(tiles: int) -> dict:
    ids = [1, 2] + [IMAGE_TOKEN] * (16 * tiles) + [3, 4, 5]
    input_ids = torch.tensor([ids])
    return dict(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), pixel_values=pixels(tiles))


def test_ratio_zero_is_bit_identical_and_remove_restores():
    model = tiny_internvl()
    req = request(3)
    with torch.no_grad():
        logits = model(**req).logits
        generated = model.generate(**req, max_new_tokens=4, do_sample=False)
    with ipcv.apply(model, vision=ipcv.IPCVConfig(prune_layer=3, as_layers=3, reduction_ratio=0.0)) as handle:
        with torch.no_grad():
            assert torch.equal(model(**req).logits, logits)
            assert torch.equal(model.generate(**req, max_new_tokens=4, do_sample=False), generated)
        assert handle.vision_stats.tokens_kept == [65] * 3
    handle = ipcv.apply(model, vision=ipcv.IPCVConfig(prune_layer=3, as_layers=3, reduction_ratio=0.65))
    with torch.no_grad():
        assert not torch.equal(model(**req).logits, logits)
    assert handle.vision_stats.tokens_kept == [1 + 64 * 35 // 100] * 3  # CLS + floor(64 * 0.35) per tile
    handle.remove()
    with torch.no_grad():
        assert torch.equal(model(**req).logits, logits)


@pytest.mark.parametrize("scope, restore, as_queries", [("global", "ngr", "all"), ("same_image", "ngr", "all"),
                                                        ("global", "frozen", "all"), ("global", "ngr", "kept"),
                                                        ("same_image", "ngr", "kept")])
def test_matches_the_published_rule_written_out(scope, restore, as_queries):
    model = tiny_internvl()
    tower = model.model.vision_tower
    x = pixels(3, seed=4)
    K, A, k, r_percent = 3, 3, 4, 65
    expected, kept = reference_internvl(tower, x, K, r_percent, A, k, scope, restore)
    cfg = ipcv.IPCVConfig(prune_layer=K, as_layers=A, neighbors=k, reduction_ratio=r_percent / 100,
                          neighbor_scope=scope, restore=restore, as_queries=as_queries)
    with ipcv.apply(tower, vision=cfg) as handle:
        out = tower_out(model, x)
        stats = handle.vision_stats
    assert stats.kept_index.tolist() == kept
    assert stats.as_blocks == list(range(K, K + A)) and stats.pruned_blocks == list(range(K + A, 12))
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)


def test_each_request_of_a_batch_is_compressed_as_if_it_were_alone():
    """Two requests (2 tiles and 1 tile) in one batch: the neighbours of a request's tokens come
    from its own tiles, so its tower output equals that of the request run alone."""
    model = tiny_internvl()
    tower = model.model.vision_tower
    one, two = request(2), request(1)
    two["pixel_values"] = pixels(1, seed=9)
    width = max(one["input_ids"].shape[1], two["input_ids"].shape[1])

    def pad(ids):
        return torch.nn.functional.pad(ids, (width - ids.shape[1], 0))

    batch = dict(input_ids=torch.cat([pad(one["input_ids"]), pad(two["input_ids"])]),
                 pixel_values=torch.cat([one["pixel_values"], two["pixel_values"]]))
    batch["attention_mask"] = (batch["input_ids"] != 0).long()
    seen = []
    hook = tower.register_forward_hook(lambda module, args, output: seen.append(output.last_hidden_state))
    with ipcv.apply(model, vision=ipcv.IPCVConfig(prune_layer=3, as_layers=3)), torch.no_grad():
        model(**batch)
        model(**one)
        model(**two)
        direct = tower_out(model, batch["pixel_values"])  # no prompt: one request of 3 tiles
    hook.remove()
    batched, alone_one, alone_two = seen[:3]
    torch.testing.assert_close(batched[:2], alone_one, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(batched[2:], alone_two, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(direct[:2], alone_one, atol=1e-4)  # neighbours from all 3 tiles


def test_refusals_name_what_is_wrong():
    model = tiny_internvl(feature_layer=-2)
    with pytest.raises(ValueError, match="vision_feature_layer"):
        ipcv.apply(model, vision=ipcv.IPCVConfig(prune_layer=3, as_layers=3))
    with pytest.raises(ValueError, match="per_image"):
        ipcv.apply(tiny_internvl(), vision=ipcv.IPCVConfig(prune_layer=3, as_layers=3, budget="per_image"))


@pytest.mark.parametrize("method", ["fastv", "dart"])
def test_llm_pruning_in_internvl_ratio_zero_is_identical(method):
    model = tiny_internvl()
    req = request(2)
    with torch.no_grad():
        logits = model(**req).logits
        generated = model.generate(**req, max_new_tokens=4, do_sample=False)
        with ipcv.apply(model, llm=ipcv.LLMPruneConfig(method=method, layer=1, reduction_ratio=0.0)) as handle:
            assert torch.equal(model(**req).logits, logits)
            assert torch.equal(model.generate(**req, max_new_tokens=4, do_sample=False), generated)
            assert handle.llm_stats.image_tokens_in == [32] and handle.llm_stats.image_tokens_kept == [32]


@pytest.mark.parametrize("method", ["fastv", "dart"])
def test_pruned_cache_decoding_equals_recomputing_the_pruned_sequence_stacked_with_ipcv(method):
    """IPCV + FastV/DART on InternVL: greedy decoding with the pruned KV cache gives the logits of
    recomputing, without a cache, the same pruned sequence with the tokens generated so far."""
    model = tiny_internvl()
    req = request(2)
    steps = 4
    cfg = dict(vision=ipcv.IPCVConfig(prune_layer=3, as_layers=3),
               llm=ipcv.LLMPruneConfig(method=method, layer=1, reduction_ratio=0.5))
    with torch.no_grad(), ipcv.apply(model, **cfg) as handle:
        out = model.generate(**req, max_new_tokens=steps, do_sample=False, output_logits=True,
                             return_dict_in_generate=True)
        kept = handle.llm_stats.kept_positions[0].tolist()
        images = {i for i, t in enumerate(req["input_ids"][0].tolist()) if t == IMAGE_TOKEN}
        assert len([p for p in kept if p in images]) == handle.llm_stats.image_tokens_kept[0] < 32
        handle.force_llm_selection(torch.tensor([[p for p in kept if p in images]]))
        prompt = req["input_ids"].shape[1]
        for t in range(steps):
            sequence = out.sequences[:, : prompt + t]
            replay = dict(req, input_ids=sequence, attention_mask=torch.ones_like(sequence))
            logits = model(**replay, use_cache=False).logits[:, -1]
            torch.testing.assert_close(logits, out.logits[t], rtol=1e-4, atol=1e-5)
