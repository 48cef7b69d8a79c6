"""IPCV on a vision tower: per-instance wrappers of its blocks, and the per-forward state.

The tower's own forward is left alone. A forward pre-hook on the tower opens a fresh
``_ForwardState`` from the images / frames of the call (the family adapter reads them, e.g. from
Qwen-VL's ``grid_thw``); each block's ``forward`` is replaced on that block instance
by a function that plays its role for this call:

- blocks 0 .. K-2 run unchanged;
- block K-1 runs unchanged, then scores tokens, keeps the top share, finds neighbours and hands
  the kept tokens on (the tower's loop carries the shorter tensor from there);
- blocks K .. K+A-1 (Attention Stabilization) rebuild the full sequence, attend over all tokens
  with the tower's own ``cu_seqlens`` and position embeddings, and run the MLP on kept tokens
  (the family adapter runs the block's parts, ``ipcv/families/``); with ``as_queries="kept"``
  only the kept tokens' queries are computed (the other outputs would be dropped anyway);
- later blocks run unchanged on the kept tokens with ``cu_seqlens``, ``max_seqlen`` and position
  embeddings sliced to them;
- the last block rebuilds the full sequence, so the merger, ``last_hidden_state`` and the LLM
  see exactly as many tokens as without IPCV.

Because the blocks read ``cu_seqlens`` from the tower's call, Qwen2.5-VL's window attention (and
its window reordering of tokens) is handled by the same code: kept counts are taken per window.
A forward hook (always called, also on an exception) publishes the statistics and drops the state.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from ipcv import algorithm as alg
from ipcv.config import IPCVConfig
from ipcv.families import FrameLayout, KeptQueries, VisionFamily
from ipcv.instance_patch import InstanceForwards, PerThread
from ipcv.stats import OverheadTimer, VisionStats


@dataclass
class _PrunePlan:
    """Which tokens survive block K-1 of this forward and how the removed ones are rebuilt.

    ``kept_per_frame``: kept tokens of each frame when the host knows them (every selection
    segment is one frame: one image, or the per-image budget), else ``None``; ``frame_sizes``:
    tokens of each frame (host)."""

    kept: torch.Tensor
    removed: torch.Tensor
    reconstruct: alg.Reconstruction
    kept_per_frame: list[int] | None = None
    frame_sizes: list[int] | None = None
    _cu_cache: list[tuple[torch.Tensor, tuple[torch.Tensor, int | None]]] = field(default_factory=list)
    _rope_cache: list[tuple[Any, Any]] = field(default_factory=list)
    _lengths_cache: list[tuple[torch.Tensor, tuple[list[int], list[int]]]] = field(default_factory=list)

    def keep(self, states: torch.Tensor) -> torch.Tensor:
        return states.index_select(0, self.kept)

    def rebuild(self, kept_states: torch.Tensor) -> torch.Tensor:
        return self.reconstruct.full(kept_states, self.kept, self.removed)

    def kept_cu(self, cu: torch.Tensor, bound: int | None) -> tuple[torch.Tensor, int | None]:
        """Kept-token boundaries for the tower's ``cu`` and, for a varlen kernel, their longest
        segment (once per ``cu``). ``bound``: the longest segment of ``cu`` the tower hands its
        varlen (flash) kernel, ``None`` on a kernel called per segment (sdpa, eager).

        A ``cu`` with one boundary per frame holds the frames' boundaries (a Qwen2.5-VL window
        ``cu`` with one window per frame has the same ones), so with kept counts per frame known
        (every frame keeps at least one token) they are the kept tokens before each boundary: the
        host states them for a ``cu`` it holds (the tower called with its layout on the host), the
        kept tokens' device counts them for a ``cu`` there (no copy from the host, which a CUDA
        graph could not capture), and the longest is known. Otherwise the device counts them: for
        a varlen kernel with empty segments left in (it skips them) and the longest bounded by
        ``bound`` and the kept count, so the host reads nothing; for a kernel called per segment
        with empty segments dropped, which the host waits for once."""
        entry = next((e for source, e in self._cu_cache if source is cu), None)
        if entry is None:
            frames = self.kept_per_frame is not None and cu.shape[0] == len(self.kept_per_frame) + 1
            longest = max(self.kept_per_frame) if frames else None
            if frames and cu.device != self.kept.device:
                entry = (torch.tensor([0, *itertools.accumulate(self.kept_per_frame)], dtype=cu.dtype), longest)
            elif frames or bound is not None:  # kept tokens before each boundary, empty segments left in
                bounds = torch.searchsorted(self.kept, cu.to(self.kept.device, self.kept.dtype)).to(cu.dtype)
                entry = (bounds, longest if frames else min(int(bound), int(self.kept.shape[0])))
            else:
                entry = (alg.subset_cu_seqlens(cu.to(self.kept.device), self.kept), None)
            self._cu_cache.append((cu, entry))
        return entry

    def kept_rope(self, rope: Any) -> Any:
        for source, result in self._rope_cache:
            if source is rope:
                return result
        if isinstance(rope, tuple):
            result = tuple(t.index_select(0, self.kept) for t in rope)
        else:
            result = rope.index_select(0, self.kept)
        self._rope_cache.append((rope, result))
        return result

    def segment_lengths(self, cu: torch.Tensor) -> tuple[list[int], list[int]]:
        """Kept tokens and all tokens of each segment of the tower's ``cu`` (zeros included), on
        the host (once per ``cu``). Known without reading the device for one segment, or for one
        boundary per frame with the kept counts per frame known; otherwise the kept counts per
        segment are read once (the tower's own sdpa path reads ``cu`` in every block)."""
        for source, lengths in self._lengths_cache:
            if source is cu:
                return lengths
        n_kept, n_tokens = int(self.kept.shape[0]), int(self.kept.shape[0] + self.removed.shape[0])
        frames = self.frame_sizes
        if cu.shape[0] == 2:
            lengths = ([n_kept], [n_tokens])
        elif self.kept_per_frame is not None and frames is not None and cu.shape[0] == len(frames) + 1:
            lengths = (list(self.kept_per_frame), list(frames))
        else:
            bounds = cu.to(self.kept.device, self.kept.dtype)
            kept_bounds = torch.searchsorted(self.kept, bounds)
            host = torch.stack([kept_bounds, bounds]).diff(dim=1).tolist()
            lengths = (host[0], host[1])
        self._lengths_cache.append((cu, lengths))
        return lengths

    def kept_queries(self, kwargs: dict[str, Any]) -> KeptQueries:
        """The kept tokens as the queries of an Attention-Stabilization block called with the
        tower's full-sequence ``kwargs``."""
        cu, bound = kwargs["cu_seqlens"], kwargs.get("max_seqlen")
        rope = next((kwargs[n] for n in ("position_embeddings", "rotary_pos_emb") if kwargs.get(n) is not None), None)
        queries = KeptQueries(self.kept, functools.partial(self.segment_lengths, cu),
                              None if rope is None else self.kept_rope(rope))
        if bound is None:  # a kernel called per segment: the host lengths are all it takes
            return queries
        boundaries, longest = self.kept_cu(cu, bound)  # a varlen kernel: boundaries on the device
        return replace(queries, boundaries=boundaries, longest=(longest, int(bound)))

    def kept_call_kwargs(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """The tower's keyword arguments for a block, restated for the kept tokens."""
        out = dict(kwargs)
        bound = kwargs.get("max_seqlen")
        out["cu_seqlens"], longest = self.kept_cu(kwargs["cu_seqlens"], bound)
        if bound is not None:
            out["max_seqlen"] = longest
        for name in ("position_embeddings", "rotary_pos_emb"):
            if out.get(name) is not None:
                out[name] = self.kept_rope(out[name])
        return out


class _ForwardState:
    """Everything one call of the tower needs; discarded when the call ends. Sizes stay on the
    host, where they are known from the call (``grid_thw``), so the plan never reads them back.

    ``request_sizes``: tokens of each request of a batch (the tower sees all their images at
    once); one entry for one request or when the requests cannot be told apart."""

    def __init__(self, frames: FrameLayout, timer: OverheadTimer, item_rows: list[int] | None = None) -> None:
        self.frame_sizes = list(frames.tokens_per_frame)
        sizes = iter(self.frame_sizes)
        item_sizes = [sum(next(sizes) for _ in range(n)) for n in frames.frames_per_item]
        self.request_sizes = [sum(self.frame_sizes)]
        if item_rows is not None and len(set(item_rows)) > 1:
            self.request_sizes = []
            for i, (row, size) in enumerate(zip(item_rows, item_sizes)):
                if i and row == item_rows[i - 1]:
                    self.request_sizes[-1] += size
                else:
                    self.request_sizes.append(size)
        self.stats = VisionStats(
            frames_per_item=list(frames.frames_per_item),
            tokens_in=list(frames.tokens_per_frame),
        )
        self.timer = timer
        self.plan: _PrunePlan | None = None
        self.pending_kept: torch.Tensor | None = None  # kept per frame, on the device

    def finish(self) -> None:
        """Read what stayed on the device, once, after the tower's last kernel was queued."""
        if self.pending_kept is not None:
            self.stats.tokens_kept = self.pending_kept.tolist()
            self.pending_kept = None


class PatchBase:
    """What every vision patch does, whatever its token layout: hooks on the tower (a fresh
    per-call state, statistics published when the call ends) and on the multimodal container (the
    prompts, to tell a batch's requests apart), block ``forward`` wrappers, and exact undo.

    The state of a call lives per thread, so the patched tower may be called from several threads
    at once; ``last_stats`` is that of the last call to finish, in any thread. A batch of requests
    reaches the tower as one call holding every request's images; given the ``container`` the
    patch tells the requests apart, and "global" (budget, neighbour scope) means one request's
    images: a request is compressed as it would be alone, whatever else is in the batch."""

    _state = PerThread()
    _prompt = PerThread()  # input_ids of the container call in progress

    def __init__(self, family: VisionFamily, tower: nn.Module, config: IPCVConfig,
                 container: nn.Module | None = None) -> None:
        blocks = family.blocks(tower)
        config.check_depth(len(blocks))
        if tower.__dict__.get("_ipcv_vision_patch") is not None:
            raise RuntimeError("this vision tower is already patched by ipcv.apply; remove that patch first")
        tower.__dict__["_ipcv_vision_patch"] = self
        self.family = family
        self.tower = tower
        self.blocks = blocks
        self.config = config
        self.time_overhead = False
        self.last_stats: VisionStats | None = None
        self._state = None  # per thread
        self._forwards = InstanceForwards()
        self.container = container
        self._hooks = [
            tower.register_forward_pre_hook(self._open, with_kwargs=True),
            tower.register_forward_hook(self._close, always_call=True),
        ]
        if container is not None:
            self._hooks += [
                container.register_forward_pre_hook(self._remember_prompt, with_kwargs=True),
                container.register_forward_hook(self._forget_prompt, always_call=True),
            ]
        for index, block in enumerate(blocks):
            self._forwards.replace(index, block, self._make_forward)
        if config.as_queries == "kept":
            for index in range(config.prune_layer, config.prune_layer + config.as_layers):
                attention, _ = family.attention_and_mlp(blocks[index])
                self._forwards.replace(index, attention, family.kept_query_attention)

    # -- hooks on the multimodal container and the tower -----------------------------------
    def _remember_prompt(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        self._prompt = kwargs.get("input_ids", args[0] if args else None)

    def _forget_prompt(self, module: nn.Module, args: tuple, output: Any) -> None:
        self._prompt = None

    def _open(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        frames = self.family.frame_layout(module, args, kwargs)
        rows = None
        if self._prompt is not None and self._prompt.shape[0] > 1:
            rows = self.family.item_rows(self.container.config, self._prompt, frames)
        self.last_stats = None
        self._state = self._new_state(frames, OverheadTimer(self.time_overhead), rows)

    def _new_state(self, frames: FrameLayout, timer: OverheadTimer, rows: list[int] | None) -> Any:
        raise NotImplementedError

    def _plan(self, state: Any, h_before: torch.Tensor, h_after: torch.Tensor) -> Any:
        """The layout's plan: ``kept``, ``keep(states)``, ``rebuild(kept_states)``,
        ``kept_call_kwargs(kwargs)``, ``kept_queries(kwargs)``."""
        raise NotImplementedError

    def _make_forward(self, index: int, block: nn.Module, original: Callable) -> Callable:
        """The role of block ``index`` in every call (the module docstring lists them)."""
        k, a, depth = self.config.prune_layer, self.config.as_layers, len(self.blocks)

        def forward(*args: Any, **kwargs: Any) -> torch.Tensor:
            state = self._state
            if state is None or index < k - 1:
                return original(*args, **kwargs)
            hidden, kwargs = self.family.split_block_call(args, kwargs)
            if index == k - 1:
                out = original(hidden, **kwargs)
                state.plan = self._plan(state, hidden, out)
                state.stats.prune_layer = k
                out = state.plan.keep(out)
            elif index < k + a:
                with state.timer("restoration", hidden.device):
                    full = state.plan.rebuild(hidden)
                queries = state.plan.kept_queries(kwargs) if self.config.as_queries == "kept" else None
                out = self.family.stabilized_block(block, hidden, full, state.plan.kept, kwargs, queries)
                state.stats.as_blocks.append(index)
            else:
                out = original(hidden, **state.plan.kept_call_kwargs(kwargs))
                state.stats.pruned_blocks.append(index)
            if index == depth - 1:
                with state.timer("restoration", out.device):
                    out = state.plan.rebuild(out)
                state.stats.tokens_to_merger = list(state.stats.tokens_in)
            return out

        return forward

    def _close(self, module: nn.Module, args: tuple, output: Any) -> None:
        state, self._state = self._state, None
        if state is None or output is None:  # the forward raised: publish nothing
            return
        if alg.capturing():  # a CUDA graph's capture: reading the device would end it; nothing is published
            self.last_stats = None
            return
        state.finish()
        state.stats.overhead_ms = state.timer.result()
        state.stats.complete = state.plan is not None
        self.last_stats = state.stats

    # -- undo -----------------------------------------------------------------------------
    def remove(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        self._forwards.restore()
        self._state = None
        self.tower.__dict__.pop("_ipcv_vision_patch", None)


class VisionPatch(PatchBase):
    """IPCV on a tower that holds all images as one packed sequence with ``cu_seqlens``
    boundaries (Qwen-VL)."""

    def _new_state(self, frames: FrameLayout, timer: OverheadTimer, rows: list[int] | None) -> _ForwardState:
        return _ForwardState(frames, timer, rows)

    def _plan(self, state: _ForwardState, h_before: torch.Tensor, h_after: torch.Tensor) -> _PrunePlan:
        cfg = self.config
        n_tokens = int(h_after.shape[0])
        if sum(state.frame_sizes) != n_tokens:
            raise ValueError(
                f"grid_thw describes {sum(state.frame_sizes)} patches but the vision tower "
                f"holds {n_tokens} tokens"
            )
        device = h_after.device
        batch = len(state.request_sizes) > 1  # several requests: "global" means each request's own images
        # selection segments: every frame (per-image budget), else every request
        select_sizes = state.frame_sizes if cfg.budget == "per_image" else state.request_sizes
        keeps = [alg.kept_count(n, cfg.reduction_ratio) for n in select_sizes]
        per_frame = keeps if len(select_sizes) == len(state.frame_sizes) else None
        with state.timer("selection", device):
            if cfg.selection == "random":  # drawn per request, so a request's draw is its own
                host = torch.cat([alg.random_scores(n, cfg.seed) for n in state.request_sizes])
                scores = alg.to_device(host, device)
            else:
                scores = alg.token_scores(h_before, h_after)
            kept, removed = alg.select_and_split(scores, select_sizes, keeps)
        frame_cu = scope = None
        if per_frame is None or cfg.neighbor_scope == "same_image":
            frame_cu = _bounds(state.frame_sizes, device)
        if cfg.neighbor_scope == "same_image":
            scope = alg.segment_ids(frame_cu, n_tokens)
        elif batch:
            scope = alg.segment_ids(_bounds(state.request_sizes, device), n_tokens)
        kept_states, removed_states = h_after.index_select(0, kept), h_after.index_select(0, removed)
        index = weight = None
        with state.timer("neighbors", device):  # neighbour search and the reconstruction matrix
            if cfg.restore == "ngr":
                index, weight = alg.find_neighbors(
                    removed_states,
                    kept_states,
                    cfg.neighbors,
                    scope.index_select(0, removed) if scope is not None else None,
                    scope.index_select(0, kept) if scope is not None else None,
                )
                state.stats.neighbor_search_flops = alg.neighbor_search_flops(
                    removed.numel(), kept.numel(), h_after.shape[-1]
                )
            reconstruct = alg.Reconstruction(kept_states, removed_states, index, weight, uniform=scope is None)
        if per_frame is not None:
            state.stats.tokens_kept = list(per_frame)
        else:
            state.pending_kept = torch.diff(torch.searchsorted(kept, frame_cu))  # kept is sorted
        state.stats.kept_index = kept
        return _PrunePlan(kept, removed, reconstruct, per_frame, list(state.frame_sizes))


def _bounds(sizes: list[int], device: torch.device) -> torch.Tensor:
    """Cumulative boundaries ``[0, s0, s0 + s1, ...]`` of host sizes, on the device: made there for
    equal sizes (a video's frames; nothing copied from the host, which a CUDA graph could not
    capture), else copied."""
    if len(set(sizes)) == 1:
        return torch.arange(0, sizes[0] * len(sizes) + 1, sizes[0], dtype=torch.long, device=device)
    return alg.to_device(torch.tensor([0, *itertools.accumulate(sizes)], dtype=torch.long), device)
