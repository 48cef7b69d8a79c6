"""LLM-side pruning (FastV, DART) of image/video tokens in the prefill, kept through generation.

Like the vision patch, this wraps modules of one model instance:

- a forward pre-hook on the multimodal model (``model.model``) remembers the request's
  ``input_ids`` and 2-D ``attention_mask`` (the language model itself only sees embeddings), from
  which the image/video spans are found with the config's token ids;
- hooks on the language model open and close a per-call state;
- decoder layer K'-1 runs unchanged, then the method chooses the image tokens to keep from what
  that layer computed (FastV: its attention from the last prompt token, recomputed for that one
  row from the layer's own q/k, so no eager attention and no second forward that would write the
  cache twice; DART: key L1 norms and final-normed hidden states);
- layers K' .. L-1 get the hidden states, rotary embeddings, position ids and attention mask
  restricted to the kept positions, so their KV cache holds only what is kept.

Decoding: the cache object of a pruned prefill is remembered (weakly); in later calls with that
cache the layers from K' on get the attention mask's key columns restricted to the kept prefill
positions plus everything generated since. Positions of new tokens are the model's own (from the
unpruned prompt length), so rotary positions stay those of the unpruned sequence.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ipcv import llm_algorithm as alg
from ipcv.config import LLMPruneConfig
from ipcv.families import LanguageSide
from ipcv.instance_patch import InstanceForwards, PerThread


@dataclass
class LLMStats:
    """One prefill: per row image/video tokens entering the LLM and kept after layer K'-1.

    ``kept_positions [B, S']``: the prefill positions layers K'.. saw. ``kv_cache_bytes``: bytes
    of keys and values in the cache after the prefill (``None`` without a cache).
    ``last_token_attention [B, S]`` (FastV only): the scores it ranked by.
    ``selection_flops``: matrix-product FLOPs (2 per multiply-add) the method itself spent:
    FastV's extra q (one row) and k projections and its score row; DART's extra k projection and
    its pivot-similarity products.
    """

    method: str
    layer: int
    image_tokens_in: list[int]
    image_tokens_kept: list[int]
    sequence_in: int
    sequence_kept: int
    kept_positions: torch.Tensor
    kv_cache_bytes: int | None = None
    last_token_attention: torch.Tensor | None = None
    selection_flops: int = 0


@dataclass
class _Pruned:
    """The kept prefill positions of one request, and the restated layer arguments."""

    keep: torch.Tensor  # [B, S'] sorted prefill positions
    prefill_length: int
    _cache: dict[int, Any] = field(default_factory=dict)

    def _memo(self, obj: Any, make: Callable[[], Any]) -> Any:
        key = id(obj)
        if key not in self._cache:
            self._cache[key] = (obj, make())
        return self._cache[key][1]

    def rows(self, x: torch.Tensor, dim: int = 1) -> torch.Tensor:
        """Select the kept positions along ``dim`` (the sequence axis) of a [B, S, ...] tensor."""
        index = self.keep.to(x.device)  # a model spread over GPUs may hold x on another one
        shape = [1] * x.dim()
        shape[0], shape[dim] = index.shape
        index = index.reshape(shape).expand(*[x.shape[d] if d not in (0, dim) else -1 for d in range(x.dim())])
        return x.gather(dim, index)

    def key_columns(self, kv_length: int, device: torch.device) -> torch.Tensor:
        """Key positions a pruned layer holds when the full sequence has ``kv_length`` keys."""
        keep = self.keep.to(device)
        after = torch.arange(self.prefill_length, kv_length, device=device)
        return torch.cat([keep, after.expand(keep.shape[0], -1)], dim=1)

    def mask(self, mask: Any, prefill: bool) -> Any:
        if not isinstance(mask, torch.Tensor):
            return mask

        def make() -> torch.Tensor:
            if mask.dim() == 2:  # [B, KV] padding mask (flash attention)
                return mask.gather(1, self.key_columns(mask.shape[1], mask.device))
            if mask.dim() != 4:
                raise ValueError(f"unexpected attention mask shape {tuple(mask.shape)}")
            batch_index = torch.arange(mask.shape[0], device=mask.device)[:, None]
            cols = self.key_columns(mask.shape[-1], mask.device)
            restricted = mask.expand(self.keep.shape[0], -1, -1, -1) if mask.shape[0] == 1 else mask
            restricted = restricted[batch_index, :, :, cols].permute(0, 2, 3, 1)  # [B, H, Q, S']
            if prefill:
                rows = self.keep.to(mask.device)
                restricted = restricted[batch_index, :, rows].permute(0, 2, 1, 3)  # [B, H, S', S']
            return restricted

        return self._memo(mask, make)


class LLMPatch:
    """LLM-side pruning installed on one model instance; ``remove()`` restores it exactly.

    The request seen by the multimodal model and the state of a call live per thread, so the
    patched model may be called from several threads at once."""

    _request = PerThread()
    _state = PerThread()

    def __init__(self, side: LanguageSide, config: LLMPruneConfig) -> None:
        container, language_model = side.container, side.language_model
        layers = language_model.layers
        config.check_depth(len(layers))
        container.__dict__["_ipcv_llm_patch"] = self
        self.container = container
        self.language_model = language_model
        self.layers = layers
        self.config = config
        self.vision_token_ids = side.vision_token_ids
        self.last_stats: LLMStats | None = None
        self.force_kept_image_positions: torch.Tensor | None = None  # replay a selection [B, n_keep]
        self._request = None  # (input_ids, attention_mask) of the call in progress, per thread
        self._state = None  # per thread
        self._pruned_caches: weakref.WeakKeyDictionary[Any, _Pruned] = weakref.WeakKeyDictionary()
        self._hooks = [
            container.register_forward_pre_hook(self._remember_request, with_kwargs=True),
            language_model.register_forward_pre_hook(self._open, with_kwargs=True),
            language_model.register_forward_hook(self._close, with_kwargs=True, always_call=True),
        ]
        self._forwards = InstanceForwards()
        for index, layer in enumerate(layers):
            if index >= config.layer - 1:
                self._forwards.replace(index, layer, self._make_forward)

    # -- hooks ----------------------------------------------------------------------------
    def _remember_request(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        self._request = (input_ids, kwargs.get("attention_mask"))

    def _open(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        request, self._request = self._request, None
        self._state = None
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        embeds = kwargs.get("inputs_embeds")
        if embeds is None:
            return
        if cache is not None and cache in self._pruned_caches:
            if cache.get_seq_length() == 0:  # a reset cache object is a new request
                del self._pruned_caches[cache]
            else:
                self._state = {"mode": "decode", "pruned": self._pruned_caches[cache]}
                return
        if request is None or request[0] is None or embeds.shape[1] < 2:
            return
        input_ids, attention_mask = request
        if input_ids.shape[1] != embeds.shape[1]:
            return
        vision = torch.isin(input_ids, torch.tensor(self.vision_token_ids, device=input_ids.device))
        if not vision.any():
            return
        if cache is not None and cache.get_seq_length() > 0:
            raise ValueError("LLM-side pruning needs the prefill to start from an empty cache")
        counts = vision.sum(dim=1)
        if bool((counts != counts[0]).any()):
            raise ValueError(
                "LLM-side pruning with batch size > 1 needs the same number of image/video tokens in "
                f"every row; got {counts.tolist()}"
            )
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids, dtype=torch.bool)
        self.last_stats = None  # a new prefill: until it completes there are no statistics
        self._state = {
            "mode": "prefill",
            "vision": vision,
            "valid": attention_mask.bool(),
            "cache": cache,
            "pruned": None,
        }

    def _close(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        state, self._state = self._state, None
        if state is None or output is None or state["mode"] != "prefill" or state["pruned"] is None:
            return
        cache = state["cache"]
        if cache is None:  # the language model made its own cache (use_cache without one given)
            cache = getattr(output, "past_key_values", None) or getattr(output, "cache", None)
        if cache is not None:
            self._pruned_caches[cache] = state["pruned"]
        state["stats"].kv_cache_bytes = cache_bytes(cache)
        self.last_stats = state["stats"]

    # -- layers ---------------------------------------------------------------------------
    def _make_forward(self, index: int, layer: nn.Module, original: Callable) -> Callable:
        first = self.config.layer

        def forward(*args: Any, **kwargs: Any) -> torch.Tensor:
            state = self._state
            if state is None:
                return original(*args, **kwargs)
            hidden = args[0] if args else kwargs.pop("hidden_states")
            args = args[1:]
            if state["mode"] == "decode":
                if index < first:
                    return original(hidden, *args, **kwargs)
                return original(hidden, *args, **self._restate(kwargs, state["pruned"], prefill=False))
            if index == first - 1:
                out = original(hidden, *args, **kwargs)
                state["pruned"] = self._select(layer, state, hidden, out, kwargs)
                return out
            pruned = state["pruned"]
            if index == first:
                hidden = pruned.rows(hidden)
            return original(hidden, *args, **self._restate(kwargs, pruned, prefill=True))

        return forward

    def _restate(self, kwargs: dict, pruned: _Pruned, prefill: bool) -> dict:
        out = dict(kwargs)
        if "attention_mask" in out:
            out["attention_mask"] = pruned.mask(out["attention_mask"], prefill)
        if not prefill:
            if out.get("cache_position") is not None:  # positions inside this layer's (shorter) cache
                out["cache_position"] = out["cache_position"] - (pruned.prefill_length - pruned.keep.shape[1])
            return out
        rope = out.get("position_embeddings")
        if rope is not None:
            out["position_embeddings"] = pruned._memo(rope, lambda: tuple(pruned.rows(t) for t in rope))
        ids = out.get("position_ids")
        if isinstance(ids, torch.Tensor) and ids.dim() == 2:
            out["position_ids"] = pruned._memo(ids, lambda: pruned.rows(ids))
        if out.get("cache_position") is not None:
            out["cache_position"] = torch.arange(pruned.keep.shape[1], device=pruned.keep.device)
        return out

    def _select(self, layer: nn.Module, state: dict, h_in: torch.Tensor, h_out: torch.Tensor, kwargs: dict) -> _Pruned:
        cfg = self.config
        vision = state["vision"].to(h_in.device)
        batch, length = (int(d) for d in vision.shape)
        image_positions = vision.nonzero(as_tuple=True)[1].reshape(batch, -1)
        scores = None
        pivots = 0
        if self.force_kept_image_positions is not None:
            kept_image = self.force_kept_image_positions.to(h_in.device).reshape(batch, -1)
        elif cfg.method == "fastv":
            scores = self._last_token_attention(layer, h_in, kwargs, state["valid"].to(h_in.device))
            kept_image = alg.fastv_keep(scores, image_positions, cfg.reduction_ratio)
        else:
            states = self.language_model.norm(h_out)
            keys = layer.self_attn.k_proj(layer.input_layernorm(h_in))
            cos, sin = kwargs["position_embeddings"]
            keys = alg.apply_rope(_heads(keys, layer.self_attn.head_dim), cos, sin)
            key_l1 = keys.float().abs().sum(dim=(1, 3))  # [B, S]
            kept_image, pivots = alg.dart_keep_rows(
                states, key_l1, image_positions, state["valid"].to(h_in.device),
                cfg.reduction_ratio, cfg.pivot_image_tokens, cfg.pivot_text_tokens,
            )
        keep = torch.stack([alg.keep_positions(length, image_positions[b], kept_image[b]) for b in range(batch)])
        pruned = _Pruned(keep=keep, prefill_length=length)
        state["stats"] = LLMStats(
            method=cfg.method,
            layer=cfg.layer,
            image_tokens_in=[image_positions.shape[1]] * batch,
            image_tokens_kept=[kept_image.shape[1]] * batch,
            sequence_in=length,
            sequence_kept=keep.shape[1],
            kept_positions=keep,
            last_token_attention=scores,
            selection_flops=self._selection_flops(layer, batch, length, image_positions.shape[1], pivots),
        )
        return pruned

    def _selection_flops(self, layer: nn.Module, batch: int, length: int, n_image: int, pivots: int) -> int:
        attn = layer.self_attn
        width = attn.k_proj.in_features
        key_width = attn.k_proj.out_features
        flops = 2 * batch * length * width * key_width  # the key projection, recomputed
        if self.force_kept_image_positions is not None:
            return 0
        if self.config.method == "fastv":
            query_width = attn.q_proj.out_features
            flops += 2 * batch * width * query_width + 2 * batch * length * query_width
        else:
            flops += 2 * batch * pivots * n_image * width
        return flops

    def _last_token_attention(self, layer: nn.Module, h_in: torch.Tensor, kwargs: dict, valid: torch.Tensor) -> torch.Tensor:
        """Layer K'-1's attention row of the last prompt token, from its own q/k projections."""
        attn = layer.self_attn
        x = layer.input_layernorm(h_in)
        last = valid.long().cumsum(dim=1).argmax(dim=1)  # last real token of each row
        rows = torch.arange(x.shape[0], device=x.device)
        cos, sin = kwargs["position_embeddings"]
        query = attn.q_proj(x[rows, last][:, None])
        query = alg.apply_rope(_heads(query, attn.head_dim), cos[rows, last][:, None], sin[rows, last][:, None])
        keys = alg.apply_rope(_heads(attn.k_proj(x), attn.head_dim), cos, sin)
        causal = torch.arange(x.shape[1], device=x.device)[None, :] <= last[:, None]
        return alg.last_token_attention(query, keys, valid & causal, attn.scaling)

    # -- undo -----------------------------------------------------------------------------
    def remove(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        self._forwards.restore()
        self._state = None
        self._pruned_caches = weakref.WeakKeyDictionary()
        self.container.__dict__.pop("_ipcv_llm_patch", None)


def _heads(x: torch.Tensor, head_dim: int) -> torch.Tensor:
    """[B, S, H*hd] -> [B, H, S, hd]."""
    batch, length, _ = x.shape
    return x.view(batch, length, -1, head_dim).transpose(1, 2)


def cache_bytes(cache: Any) -> int | None:
    """Bytes of keys and values held by a (layered) transformers cache; None without one."""
    layers = getattr(cache, "layers", None)
    if cache is None or layers is None:
        return None
    total = 0
    for layer in layers:
        for t in (getattr(layer, "keys", None), getattr(layer, "values", None)):
            if isinstance(t, torch.Tensor):
                total += t.numel() * t.element_size()
    return total
