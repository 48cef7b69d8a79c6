"""Selection rules of the LLM-side methods (FastV, DART) as pure tensor functions.

Shapes: ``B`` rows, ``S`` positions, ``H`` query heads, ``Hkv`` key/value heads, ``hd`` head
dimension. Positions are indices into the prefill sequence; returned indices are sorted.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ipcv.algorithm import kept_count


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding of ``x [B, H, S, hd]`` with ``cos, sin [B, S, hd]`` (M-RoPE already merged)."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return x * cos + rotate_half(x) * sin


def last_token_attention(
    query_last: torch.Tensor, keys: torch.Tensor, key_valid: torch.Tensor, scaling: float
) -> torch.Tensor:
    """Attention the last prompt token pays to every position, averaged over heads: ``[B, S]``.

    ``query_last [B, H, 1, hd]`` and ``keys [B, Hkv, S, hd]`` after RoPE; ``key_valid [B, S]``
    masks padding. Computed in float32: ``mean_h softmax(q_h k_h^T * scaling)``.
    """
    groups = query_last.shape[1] // keys.shape[1]
    keys = keys.repeat_interleave(groups, dim=1)
    logits = (query_last.float() @ keys.float().transpose(-1, -2)).squeeze(2) * scaling  # [B, H, S]
    logits = logits.masked_fill(~key_valid[:, None, :], float("-inf"))
    return logits.softmax(dim=-1).mean(dim=1)


def fastv_keep(scores: torch.Tensor, image_positions: torch.Tensor, reduction_ratio: float) -> torch.Tensor:
    """FastV: of each row's image positions ``[B, n]``, the ``floor(n (1 - r'))`` most attended."""
    keep = kept_count(image_positions.shape[1], reduction_ratio)
    image_scores = scores.gather(1, image_positions)
    top = image_scores.topk(keep, dim=1).indices
    return image_positions.gather(1, top).sort(dim=1).values


def dart_keep(
    states: torch.Tensor,
    key_l1: torch.Tensor,
    image_positions: torch.Tensor,
    text_positions: torch.Tensor,
    reduction_ratio: float,
    pivot_image_tokens: int,
    pivot_text_tokens: int,
) -> torch.Tensor:
    """DART for one row: image pivots kept, plus per pivot the least cosine-similar image tokens.

    ``states [S, D]`` (compared by cosine), ``key_l1 [S]`` (pivot ranking), ``image_positions
    [n]``, ``text_positions [m]`` (the text after the last image/video span). Pivots: the
    ``pivot_image_tokens`` image and ``pivot_text_tokens`` text positions with the largest key
    L1 norm. Budget per pivot ``int(n (1 - r') / n_pivots)``; each pivot, image pivots first then
    text pivots, each in position order, takes its budget of the image tokens least similar to it
    from those not yet taken (image pivots are never candidates). Returns sorted positions.
    """
    n_image = image_positions.shape[0]
    p_img = min(pivot_image_tokens, n_image)
    p_txt = min(pivot_text_tokens, text_positions.shape[0])
    image_pivots = image_positions[key_l1[image_positions].topk(p_img).indices].sort().values
    text_pivots = text_positions[key_l1[text_positions].topk(p_txt).indices].sort().values
    pivots = torch.cat([image_pivots, text_pivots])
    budget = int(n_image * (1 - reduction_ratio) / max(1, pivot_image_tokens + pivot_text_tokens))
    available = torch.ones(n_image, dtype=torch.bool, device=states.device)
    available[torch.isin(image_positions, image_pivots)] = False
    image_states = F.normalize(states[image_positions].float(), dim=-1)
    similarities = image_states @ F.normalize(states[pivots].float(), dim=-1).T  # [n, pivots], one product
    chosen = [image_pivots]
    for column in range(pivots.shape[0]):
        take = min(budget, int(available.sum()))
        if take == 0:
            break
        similarity = similarities[:, column].masked_fill(~available, float("inf"))
        picked = similarity.topk(take, largest=False).indices
        available[picked] = False
        chosen.append(image_positions[picked])
    return torch.cat(chosen).sort().values


def dart_keep_rows(
    states: torch.Tensor,
    key_l1: torch.Tensor,
    image_positions: torch.Tensor,
    valid: torch.Tensor,
    reduction_ratio: float,
    pivot_image_tokens: int,
    pivot_text_tokens: int,
) -> tuple[torch.Tensor, int]:
    """DART over a batch: ``states [B, S, D]``, ``key_l1 [B, S]``, ``image_positions [B, n]``,
    ``valid [B, S]`` (False on padding). Each row's text pivots come from its real tokens after
    its last image/video position. Returns the kept image positions ``[B, n_keep]`` and the pivot
    count of a row (for the FLOPs of the similarity products). Rows must keep the same number of
    tokens (a tensor is rectangular), else ``ValueError``."""
    batch, length = int(key_l1.shape[0]), int(key_l1.shape[1])
    rows = []
    pivots = 0
    for b in range(batch):
        last_image = int(image_positions[b, -1])
        text = torch.arange(last_image + 1, length, device=key_l1.device)
        text = text[valid[b][text]]
        pivots = min(pivot_image_tokens, image_positions.shape[1]) + min(pivot_text_tokens, text.numel())
        rows.append(dart_keep(states[b], key_l1[b], image_positions[b], text,
                              reduction_ratio, pivot_image_tokens, pivot_text_tokens))
    width = min(r.numel() for r in rows)
    if any(r.numel() != width for r in rows):
        raise ValueError("DART kept different numbers of image tokens per row; use batch size 1")
    return torch.stack(rows), pivots


def keep_positions(n_positions: int, image_positions: torch.Tensor, kept_image: torch.Tensor) -> torch.Tensor:
    """All positions of a row except the dropped image positions, sorted: ``[S']``."""
    keep = torch.ones(n_positions, dtype=torch.bool, device=image_positions.device)
    keep[image_positions] = False
    keep[kept_image] = True
    return keep.nonzero(as_tuple=True)[0]
