"""The IPCV algorithm as pure tensor functions, independent of any model family.

Everything here works on a packed sequence of N tokens (all images/frames of a request one after
another) whose image/frame boundaries are given as cumulative lengths ``cu`` (``cu[0] = 0``,
``cu[-1] = N``), the layout the Qwen-VL vision towers use. Index tensors are ``torch.long`` and
kept indices are always sorted, so kept tokens stay in their original order.
"""

from __future__ import annotations

import math
from fractions import Fraction

import torch
import torch.nn.functional as F

from ipcv.config import Budget

# Rows of the removed x kept distance matrix computed at once: bounds the transient memory of the
# neighbour search (rows x kept x 4 bytes) for long videos at high resolution.
_DISTANCE_ROW_CHUNK = 4096


def kept_count(n_tokens: int, reduction_ratio: float) -> int:
    """``floor(n * (1 - r))`` in exact decimal arithmetic, and at least one token.

    Exact arithmetic keeps e.g. ``floor(20 * (1 - 0.65))`` at 7 rather than trusting binary
    floating point; the floor of one keeps attention from ever running on an empty image.
    """
    n_tokens = int(n_tokens)  # shapes are tensors under tracing (fvcore)
    if n_tokens <= 0:
        return 0
    keep = math.floor(n_tokens * (1 - Fraction(repr(float(reduction_ratio)))))
    return max(1, keep)


def segment_ids(cu: torch.Tensor, n_tokens: int) -> torch.Tensor:
    """Index of the segment (image/frame) each of the ``n_tokens`` positions belongs to."""
    positions = torch.arange(n_tokens, device=cu.device)
    return torch.searchsorted(cu[1:].to(positions.dtype), positions, right=True)


def token_scores(h_before: torch.Tensor, h_after: torch.Tensor) -> torch.Tensor:
    """How much one block changed each token: ``||h_after - h_before||_2`` (float32)."""
    return (h_after.float() - h_before.float()).norm(dim=-1)


def random_scores(n_tokens: int, seed: int, device: torch.device) -> torch.Tensor:
    """Scores for the random-selection control: reproducible for a seed, independent of device."""
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(n_tokens, generator=generator).to(device)


def select_tokens(
    scores: torch.Tensor, cu: torch.Tensor, reduction_ratio: float, budget: Budget
) -> torch.Tensor:
    """Sorted indices of the tokens to keep: the highest scores, over the request or per segment."""
    n_tokens = int(scores.shape[0])  # a plain int also under tracing (fvcore)
    if budget == "global":
        keep = kept_count(n_tokens, reduction_ratio)
        kept = torch.topk(scores, keep, sorted=False).indices
        return torch.sort(kept).values
    parts = []
    bounds = cu.tolist()
    for start, end in zip(bounds[:-1], bounds[1:]):
        keep = kept_count(end - start, reduction_ratio)
        top = torch.topk(scores[start:end], keep, sorted=False).indices
        parts.append(torch.sort(top).values + start)
    if not parts:
        return torch.empty(0, dtype=torch.long, device=scores.device)
    return torch.cat(parts)


def complement(kept: torch.Tensor, n_tokens: int) -> torch.Tensor:
    """Sorted indices in ``range(n_tokens)`` that are not in ``kept``."""
    mask = torch.ones(n_tokens, dtype=torch.bool, device=kept.device)
    mask[kept] = False
    return mask.nonzero(as_tuple=True)[0]


def find_neighbors(
    removed_feats: torch.Tensor,
    kept_feats: torch.Tensor,
    k: int,
    removed_segments: torch.Tensor | None = None,
    kept_segments: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` nearest kept tokens (L2) of each removed token, and their averaging weights.

    With segment ids given, only kept tokens of the same segment qualify. A removed token with
    fewer qualifying neighbours averages over those it has; one with none gets all-zero weights,
    so reconstruction leaves it at its own anchor state.

    Returns ``(index [R, k'], weight [R, k'])`` with ``k' = min(k, M)``; rows of weight sum to 1
    (or 0 for a token without neighbours).
    """
    n_removed, n_kept = removed_feats.shape[0], kept_feats.shape[0]
    device = removed_feats.device
    k_eff = min(k, n_kept)
    if n_removed == 0 or k_eff == 0:
        return (
            torch.zeros(n_removed, k_eff, dtype=torch.long, device=device),
            torch.zeros(n_removed, k_eff, dtype=torch.float32, device=device),
        )
    kept32 = kept_feats.float()
    indices, weights = [], []
    for start in range(0, n_removed, _DISTANCE_ROW_CHUNK):
        rows = removed_feats[start : start + _DISTANCE_ROW_CHUNK].float()
        dist = torch.cdist(rows, kept32)
        if removed_segments is not None and kept_segments is not None:
            other = removed_segments[start : start + rows.shape[0], None] != kept_segments[None, :]
            dist = dist.masked_fill(other, math.inf)
        values, index = torch.topk(dist, k_eff, dim=1, largest=False)
        valid = torch.isfinite(values).float()
        weights.append(valid / valid.sum(dim=1, keepdim=True).clamp(min=1.0))
        indices.append(index)
    return torch.cat(indices), torch.cat(weights)


class Reconstruction:
    """Neighbour-Guided Reconstruction of the removed tokens, prepared once per forward.

    ``removed = removed_anchor + sum_j w_j * (kept_now[n_j] - kept_anchor[n_j])`` is linear in
    ``kept_now``: it is stored as ``offset + sum_j w_j * kept_now[n_j]`` with
    ``offset = removed_anchor - sum_j w_j * kept_anchor[n_j]``, so each rebuild (once per
    Attention Stabilization block and once at the end) is one weighted gather-sum
    (``embedding_bag``: no [R, k, D] intermediate), in float32, returned in the dtype of
    ``kept_now``. Without neighbours (``index`` of width 0, or ``None`` for ``frozen``
    restoration) it returns the anchors: the no-NGR ablation.
    """

    def __init__(
        self,
        kept_anchor: torch.Tensor,
        removed_anchor: torch.Tensor,
        neighbor_index: torch.Tensor | None,
        neighbor_weight: torch.Tensor | None,
    ) -> None:
        self.offset = removed_anchor.float()
        self.index: torch.Tensor | None = None
        if neighbor_index is not None and neighbor_index.shape[1] > 0 and removed_anchor.shape[0] > 0:
            self.index = neighbor_index
            self.weight = neighbor_weight.float()
            self.offset = self.offset - self._weighted_sum(kept_anchor)

    def _weighted_sum(self, kept: torch.Tensor) -> torch.Tensor:
        return F.embedding_bag(self.index, kept.float(), per_sample_weights=self.weight, mode="sum")

    def __call__(self, kept_now: torch.Tensor) -> torch.Tensor:
        if self.index is None:
            return self.offset.to(kept_now.dtype)
        return (self.offset + self._weighted_sum(kept_now)).to(kept_now.dtype)


def scatter_full(
    kept_states: torch.Tensor,
    removed_states: torch.Tensor,
    kept: torch.Tensor,
    removed: torch.Tensor,
) -> torch.Tensor:
    """The full sequence in original order from its kept and removed parts."""
    n_tokens = kept.shape[0] + removed.shape[0]
    full = kept_states.new_empty((n_tokens, *kept_states.shape[1:]))
    full[kept] = kept_states
    full[removed] = removed_states.to(kept_states.dtype)
    return full


def subset_cu_seqlens(cu: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """Segment boundaries of the kept tokens, segments left empty dropped.

    Each boundary becomes the number of kept tokens before it, so a kept token stays in the
    segment it came from (the published code assigns the first token of an image to the previous
    one; see docs/method.md).
    """
    counts = torch.searchsorted(kept, cu.to(kept.dtype))
    return torch.unique_consecutive(counts).to(cu.dtype)


def neighbor_search_flops(n_removed: int, n_kept: int, dim: int) -> int:
    """Analytic FLOPs of the distance matrix (one multiply-add = 2 FLOPs): ``2 * R * M * D``."""
    return 2 * n_removed * n_kept * dim
