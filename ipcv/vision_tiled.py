"""IPCV on a tower whose images are tiles of equal length in a batch (InternViT): the published rule.

Each tile is a row of ``L`` tokens, the first one its CLS token. Block roles as for the packed
layout (``ipcv/vision.py``), with what tiles ask for:

- block K-1 runs unchanged; each patch token is scored by how much that block changed it
  (float32 L2), CLS excluded; every tile keeps its top ``floor(n (1 - r))`` patch tokens in index
  order plus its CLS, so tiles stay rows of one rectangular tensor (no masks: sdpa and flash
  kernels run unchanged);
- every removed token gets its k nearest kept tokens (float32 L2 on the block's output) among the
  kept tokens, CLS tokens included, of all tiles of its request (``neighbor_scope="global"``, as
  published) or of its own tile (``"same_image"``: a tile belongs to one image);
- blocks K .. K+A-1 rebuild each full tile (kept = current states, removed = their saved state
  plus the mean change of their neighbours since pruning), attend over it with the first layer
  scale, and run the MLP with the second layer scale on the kept tokens only;
- later blocks run on the kept tokens; the last block rebuilds every tile in full, before the CLS
  token is dropped and the pixel shuffle merges patches for the LLM.

``budget="global"`` is the per-tile budget above (the published rule); ``"per_image"`` (an
image's tiles ranked together) would give the tiles of one image different lengths, so it is
refused rather than padded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ipcv import algorithm as alg
from ipcv.config import IPCVConfig
from ipcv.families import FrameLayout, KeptQueries, VisionFamily
from ipcv.stats import OverheadTimer, VisionStats
from ipcv.vision import PatchBase

CLS = 1


@dataclass
class _TilePlan:
    """Which tokens of each tile survive block K-1, and how the removed ones are rebuilt."""

    kept: torch.Tensor  # [T, k] positions within each tile, CLS (0) first, sorted
    kept_flat: torch.Tensor  # the same as positions in the flattened [T * L] tokens
    removed_flat: torch.Tensor
    reconstruct: alg.Reconstruction
    length: int

    def keep(self, states: torch.Tensor) -> torch.Tensor:
        return states.gather(1, self.kept[..., None].expand(-1, -1, states.shape[-1]))

    def kept_call_kwargs(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        return kwargs  # the blocks take no boundaries or positions

    def kept_queries(self, kwargs: dict[str, Any]) -> KeptQueries:
        tiles, kept = (int(d) for d in self.kept.shape)
        return KeptQueries(self.kept, lambda: ([kept] * tiles, [self.length] * tiles))

    def rebuild(self, kept_states: torch.Tensor) -> torch.Tensor:
        tiles, _, width = kept_states.shape
        flat = kept_states.reshape(-1, width)
        full = self.reconstruct.full(flat, self.kept_flat, self.removed_flat)
        return full.reshape(tiles, self.length, width)


class _TileState:
    """One call of the tower: its tiles, the request of each tile (host lists), statistics and
    the plan."""

    def __init__(self, frames: FrameLayout, timer: OverheadTimer, rows: list[int] | None) -> None:
        self.tiles = len(frames.tokens_per_frame)
        self.length = frames.tokens_per_frame[0] if frames.tokens_per_frame else 0
        self.request = list(rows) if rows is not None else [0] * self.tiles
        self.stats = VisionStats(frames_per_item=list(frames.frames_per_item), tokens_in=list(frames.tokens_per_frame))
        self.timer = timer
        self.plan: _TilePlan | None = None

    def finish(self) -> None:
        """Nothing stays on the device: every count is known on the host."""


class TiledVisionPatch(PatchBase):
    """IPCV installed on one tiled vision tower instance; ``remove()`` restores it exactly."""

    def __init__(self, family: VisionFamily, tower: nn.Module, config: IPCVConfig,
                 container: nn.Module | None = None) -> None:
        if config.budget == "per_image":
            raise ValueError(f"IPCVConfig.budget='per_image' is not available on {family.name}: its tiles are rows of "
                             "one batch, and ranking an image's tiles together would give them different lengths; "
                             "the default budget keeps the same share of every tile (the published rule)")
        super().__init__(family, tower, config, container)

    def _new_state(self, frames: FrameLayout, timer: OverheadTimer, rows: list[int] | None) -> _TileState:
        return _TileState(frames, timer, rows)

    def _plan(self, state: _TileState, h_before: torch.Tensor, h_after: torch.Tensor) -> _TilePlan:
        cfg = self.config
        tiles, length, width = (int(d) for d in h_after.shape)
        if tiles != state.tiles or length != state.length:
            raise ValueError(f"the tower holds {tiles} tiles of {length} tokens, its call described {state.tiles} of "
                             f"{state.length}")
        device = h_after.device
        patches = length - CLS
        keep = alg.kept_count(patches, cfg.reduction_ratio)
        requests = sorted(set(state.request))
        with state.timer("selection", device):
            if cfg.selection == "random":  # drawn per request, so a request's draw is its own
                host = torch.empty(tiles, patches)
                for r in requests:
                    mine = [t for t in range(tiles) if state.request[t] == r]
                    host[mine] = alg.random_scores(len(mine) * patches, cfg.seed).view(-1, patches)
                scores = alg.to_device(host, device)
            else:
                scores = (h_after[:, CLS:].float() - h_before[:, CLS:].float()).norm(dim=-1)
            # per tile: the top patch tokens (positions after CLS) and the rest, each in order
            drop = torch.ones(tiles, patches, dtype=torch.uint8, device=device)
            drop.scatter_(1, scores.topk(keep, dim=1, sorted=False).indices, 0)
            order = torch.argsort(drop, dim=1, stable=True) + CLS
            cls = torch.zeros(tiles, CLS, dtype=torch.long, device=device)
            kept, removed = torch.cat([cls, order[:, :keep]], dim=1), order[:, keep:]
        offsets = torch.arange(0, tiles * length, length, device=device)[:, None]
        kept_flat, removed_flat = (kept + offsets).reshape(-1), (removed + offsets).reshape(-1)
        flat = h_after.reshape(-1, width)
        kept_states, removed_states = flat.index_select(0, kept_flat), flat.index_select(0, removed_flat)
        index = weight = None
        scoped = cfg.neighbor_scope == "same_image" or len(requests) > 1
        with state.timer("neighbors", device):
            if cfg.restore == "ngr":
                groups = None
                if scoped:  # a tile's own tokens, or its request's tiles
                    per_tile = list(range(tiles)) if cfg.neighbor_scope == "same_image" else state.request
                    group = alg.to_device(torch.tensor(per_tile, dtype=torch.long), device)
                    groups = (group.repeat_interleave(length - CLS - keep), group.repeat_interleave(CLS + keep))
                index, weight = alg.find_neighbors(removed_states, kept_states, cfg.neighbors,
                                                   *(groups if groups else (None, None)))
                state.stats.neighbor_search_flops = alg.neighbor_search_flops(
                    removed_flat.numel(), kept_flat.numel(), width)
            reconstruct = alg.Reconstruction(kept_states, removed_states, index, weight, uniform=not scoped)
        state.stats.tokens_kept = [CLS + keep] * tiles
        state.stats.kept_index = kept
        return _TilePlan(kept, kept_flat, removed_flat, reconstruct, length)
