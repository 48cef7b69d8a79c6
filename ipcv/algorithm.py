"""The IPCV algorithm as pure tensor functions, independent of any model family.

Everything here works on a packed sequence of N tokens (all images/frames of a request one after
another) whose image/frame boundaries are given as cumulative lengths ``cu`` (``cu[0] = 0``,
``cu[-1] = N``), the layout the Qwen-VL vision towers use. Index tensors are ``torch.long`` and
kept indices are always sorted, so kept tokens stay in their original order.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields, replace
from fractions import Fraction

import torch
import torch.nn.functional as F

# Rows of the removed x kept distance matrix computed at once: bounds the transient memory of the
# neighbour search (rows x kept x 4 bytes) for long videos at high resolution.
_DISTANCE_ROW_CHUNK = 4096
# The half-precision distance product's kept side is padded to a multiple of this many rows when
# ``KERNELS.padded_product`` is on: the float32 output's rows then start on 32-byte boundaries
# (cuBLAS's fastest tensor-core kernels want at least 16; an odd kept count, 3,225 at 1344², gives
# 4); whether that pays on a GPU is what benchmarks/gpu_kernels.sh measures.
_PRODUCT_ALIGN = 8


@dataclass
class Kernels:
    """Which implementation runs IPCV's rebuild and neighbour search on half-precision states (on a
    CUDA device, where they are meant to pay).

    Each choice computes the default torch path's values up to the order of float32 sums (tests:
    the same rebuilt rows to one rounding, the same neighbour sets except where that order decides
    between near-equidistant kept tokens); they exist so one process can time them
    (``benchmarks/ipcv_parts.py``, ``benchmarks/vision_encoder.py --kernels``) and stay off until a
    GPU run shows they pay.
    Float32 states always take the published code's path, so the float32 outputs and the CI
    gate's figures never depend on this. The environment variable ``IPCV_KERNELS`` (a comma list
    of field names, or ``none``) sets the defaults, e.g. for a sweep's workers.

    ``fused_rebuild``: each NGR rebuild (rebuilt rows into the full sequence) is one Triton kernel
    (``ipcv/rebuild_kernel.py``) instead of a gather, a sum and two scatters; needs ``triton``.
    ``padded_product``: the neighbour search's distance product pads the kept side to a multiple
    of 8 rows, so the matrix kernels see aligned rows.
    ``fused_search``: the unscoped neighbour search (the default ``neighbor_scope``, one request)
    is one Triton kernel (``ipcv/search_kernel.py``): distances a tile at a time and each row's k
    nearest kept in registers, no [R, M] distance matrix; ties go to the lower index. Needs
    ``triton`` with ``tl.topk``; a scoped search keeps the torch path.
    """

    fused_rebuild: bool = False
    padded_product: bool = False
    fused_search: bool = False

    @property
    def any(self) -> bool:
        return any(getattr(self, f.name) for f in fields(self))

    @classmethod
    def parse(cls, text: str) -> Kernels:
        names = [n.strip() for n in text.split(",") if n.strip() and n.strip() != "none"]
        known = [f.name for f in fields(cls)]
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ValueError(f"unknown IPCV kernel choice(s) {unknown}: use a comma list of {known}, or 'none'")
        return cls(**{n: True for n in names})

    def names(self) -> str:
        """The choices that are on, as ``parse`` reads them ("none" for the torch path)."""
        return ",".join(f.name for f in fields(self) if getattr(self, f.name)) or "none"


KERNELS = Kernels.parse(os.environ.get("IPCV_KERNELS", ""))


@contextmanager
def use_kernels(choice: Kernels) -> Iterator[None]:
    """``KERNELS`` set to ``choice`` inside the block (per process; a forward reads it when it
    plans, so set it around whole calls), restored after."""
    global KERNELS
    previous, KERNELS = KERNELS, replace(choice)
    try:
        yield
    finally:
        KERNELS = previous


def _kernel_module(choice: str, states: torch.Tensor):
    """The Triton module of kernel ``choice`` (``fused_rebuild``, ``fused_search``) when it is
    chosen and can run on ``states`` (half precision on a CUDA device, or anywhere under Triton's
    interpreter); else ``None``: the torch path runs, e.g. in a CPU worker of a sweep whose GPU
    workers use the kernel."""
    if not getattr(KERNELS, choice) or states.dtype not in (torch.float16, torch.bfloat16):
        return None
    if not states.is_cuda and os.environ.get("TRITON_INTERPRET", "0") != "1":
        return None
    try:
        if choice == "fused_rebuild":
            from ipcv import rebuild_kernel as module
        else:
            from ipcv import search_kernel as module
    except ImportError as err:
        raise RuntimeError(f"IPCV's {choice} kernel (IPCV_KERNELS / ipcv.algorithm.KERNELS.{choice}) needs the "
                           "'triton' package, which CUDA builds of torch install; turn the choice off or install "
                           f"triton ({err})") from err
    return module


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


def random_scores(n_tokens: int, seed: int) -> torch.Tensor:
    """Scores for the random-selection control, on the host: reproducible for a seed,
    independent of device (move them with ``to_device``)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(n_tokens, generator=generator)


def capturing() -> bool:
    """Whether a CUDA graph is being captured on this thread's current stream."""
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


def to_device(host: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on ``device`` without waiting for the device.

    A plain ``.to("cuda")`` of a host tensor synchronises the stream (it copies from pageable
    memory); from pinned memory with ``non_blocking`` the copy is queued like any kernel, and the
    caching host allocator keeps the pinned block alive until the copy has run. A CUDA graph
    would replay such a copy from a pinned block the allocator may since have handed out again,
    so a copy is refused while a graph is captured (``ipcv.cuda_graph.GraphedCall`` says so)."""
    if device.type != "cuda":
        return host.to(device)
    if capturing():
        raise RuntimeError("a copy of host values to the device during CUDA graph capture: a replay could read "
                           "a pinned host buffer reused since (IPCV copies for random selection, images of different "
                           "sizes or several requests in one call, a per-image neighbour scope; a varlen attention "
                           "for segment boundaries left on the host)")
    return host.pin_memory().to(device, non_blocking=True)


def select_and_split(
    scores: torch.Tensor, sizes: list[int], keeps: list[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Kept and removed positions (each sorted) for the top ``keeps[i]`` scores of each segment.

    Segments are consecutive runs of ``sizes[i]`` tokens (one image/frame, or one request for the
    global budget). Counts are host integers, so nothing waits for the device: segments of one
    size take one batched top-k, and one stable sort of the keep mask puts the kept positions,
    in order, before the removed ones, in order (no ``nonzero``, whose size the host must read).
    """
    n_tokens = int(scores.shape[0])
    if sum(sizes) != n_tokens or len(sizes) != len(keeps):
        raise ValueError(f"segments of {sizes} tokens do not cover the {n_tokens} scores")
    device = scores.device
    if len(sizes) == 1:
        top = torch.topk(scores, keeps[0], sorted=False).indices
    elif len(set(sizes)) == 1 and len(set(keeps)) == 1:
        rows = torch.topk(scores.view(len(sizes), sizes[0]), keeps[0], dim=1, sorted=False).indices
        top = (rows + torch.arange(0, n_tokens, sizes[0], device=device)[:, None]).reshape(-1)
    else:
        starts = [0, *itertools.accumulate(sizes)][:-1]
        top = torch.cat([torch.topk(scores[a : a + n], k, sorted=False).indices + a
                         for a, n, k in zip(starts, sizes, keeps)])
    drop = torch.ones(n_tokens, dtype=torch.uint8, device=device).index_fill_(0, top, 0)
    order = torch.argsort(drop, stable=True)
    n_kept = sum(keeps)
    return order[:n_kept], order[n_kept:]


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

    Float32 features go through ``torch.cdist`` (the published code's search, selection for
    selection). Half-precision features are ranked by ``||b||^2 - 2 a.b`` (the squared distance
    less the row's constant ``||a||^2``) from one matrix product with float32 accumulation: the
    products of bf16/fp16 values are exact in float32, so this is the float32 distance up to the
    order of the sums, at tensor-core speed instead of float32 ``cdist``'s. With
    ``KERNELS.padded_product`` the kept side is padded with rows of infinite norm (never nearer than
    a kept token; an index that lands on one, for a token short of neighbours or with non-finite
    features, is clamped into range). With ``KERNELS.fused_search`` an unscoped half-precision
    search on a GPU is one Triton kernel ranking the same quantity (``ipcv/search_kernel.py``).

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
    exact = kept_feats.dtype == torch.float32
    scoped = removed_segments is not None and kept_segments is not None
    # float32: the kept features themselves (cdist); half precision: ||b||^2 in float32
    kept_side = kept_feats if exact else kept_feats.float().square().sum(dim=1)
    search = None if scoped else _kernel_module("fused_search", kept_feats)
    if search is not None:
        index = search.nearest(removed_feats, kept_feats, kept_side, k_eff)
        return index, torch.full((n_removed, k_eff), 1.0 / k_eff, dtype=torch.float32, device=device)
    padded = not exact and KERNELS.padded_product and n_kept % _PRODUCT_ALIGN != 0
    if padded:
        kept_feats, kept_side = pad_kept_side(kept_feats, kept_side)
        if scoped:
            kept_segments = F.pad(kept_segments, (0, kept_side.shape[0] - n_kept), value=-1)
    indices, weights = [], []
    for start in range(0, n_removed, _DISTANCE_ROW_CHUNK):
        rows = removed_feats[start : start + _DISTANCE_ROW_CHUNK]
        if exact:
            dist = torch.cdist(rows, kept_side)
        else:
            dist = torch.add(kept_side, _dot_float32(rows, kept_feats), alpha=-2.0)
        if scoped:
            other = removed_segments[start : start + rows.shape[0], None] != kept_segments[None, :]
            dist = dist.masked_fill(other, math.inf)
        values, index = torch.topk(dist, k_eff, dim=1, largest=False)
        if padded:  # a token short of neighbours (weight 0), or with non-finite features, may take a pad row
            index = index.clamp(max=n_kept - 1)
        indices.append(index)
        if scoped:  # a token may have fewer qualifying neighbours, or none
            valid = torch.isfinite(values).float()
            weights.append(valid / valid.sum(dim=1, keepdim=True).clamp(min=1.0))
    index = indices[0] if len(indices) == 1 else torch.cat(indices)
    if not scoped:  # every removed token has k' neighbours
        return index, torch.full((n_removed, k_eff), 1.0 / k_eff, dtype=torch.float32, device=device)
    return index, (weights[0] if len(weights) == 1 else torch.cat(weights))


def pad_kept_side(kept_feats: torch.Tensor, norms: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The kept side of the distance product padded to a multiple of ``_PRODUCT_ALIGN`` rows that
    are never nearest: zero features, infinite norm (``KERNELS.padded_product``)."""
    pad = -kept_feats.shape[0] % _PRODUCT_ALIGN
    return F.pad(kept_feats, (0, 0, 0, pad)), F.pad(norms, (0, pad), value=math.inf)


def _dot_float32(rows: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """``rows @ kept.T`` with float32 accumulation and output, for half-precision inputs."""
    if rows.device.type == "cuda":
        try:
            return torch.mm(rows, kept.T, out_dtype=torch.float32)
        except (RuntimeError, TypeError):  # a torch without mm's out_dtype
            pass
    return rows.float() @ kept.float().T


# The half-precision rebuild gathers rows when there are at least this many (removed tokens x
# neighbours): measured on an H200 (benchmarks/ipcv_parts.py), at 6,660 rows (448²) embedding_bag's
# fewer kernels win (0.063 vs 0.120 ms), at 53k-60k rows (16 frames x 448², 1344²) the gather does
# (0.151-0.167 vs 0.229-0.261 ms); the switch lies between, at a size not measured on its own.
_GATHER_MIN_ROWS = 16384
# Largest transient of that gather (rows x width x 2 bytes); larger rebuilds take the float32
# embedding_bag path, which needs no [R, k, D] intermediate.
_GATHER_BYTES = 512 * 2**20


class Reconstruction:
    """Neighbour-Guided Reconstruction of the removed tokens, prepared once per forward.

    ``removed = removed_anchor + sum_j w_j * (kept_now[n_j] - kept_anchor[n_j])`` is linear in
    ``kept_now``: it is stored as ``offset + sum_j w_j * kept_now[n_j]`` with
    ``offset = removed_anchor - sum_j w_j * kept_anchor[n_j]``, so each rebuild (once per
    Attention Stabilization block and once at the end) is one weighted gather-sum in float32,
    returned in the dtype of ``kept_now``. Float32 states and non-uniform weights (scoped
    neighbours) go through ``embedding_bag`` (no [R, k, D] intermediate). Half-precision states
    with ``uniform`` weights (every removed token has k neighbours of weight 1/k: the unscoped
    search) at large sizes are gathered as they are and summed with float32 accumulation, then
    scaled by 1/k: the bf16/fp16 values are exact in float32, so this is the same sum in another
    order, with half the bytes read and without converting ``kept_now`` to float32 first (measured
    faster on an H200 from 16 frames x 448² on, slower at 448², docs/benchmarks.md). ``full``
    returns the whole sequence, kept and rebuilt tokens in place: with ``KERNELS.fused_rebuild``
    on, half-precision CUDA states take one Triton kernel for it (``ipcv/rebuild_kernel.py``).
    Without neighbours (``index`` of width 0, or ``None`` for ``frozen`` restoration) it returns
    the anchors: the no-NGR ablation.
    """

    def __init__(
        self,
        kept_anchor: torch.Tensor,
        removed_anchor: torch.Tensor,
        neighbor_index: torch.Tensor | None,
        neighbor_weight: torch.Tensor | None,
        uniform: bool = False,
    ) -> None:
        self.offset = removed_anchor.float()
        self.index: torch.Tensor | None = None
        self.fused = None  # ipcv.rebuild_kernel, when ``full`` runs it
        if neighbor_index is not None and neighbor_index.shape[1] > 0 and removed_anchor.shape[0] > 0:
            n_removed, width = neighbor_index.shape
            self.fused = _kernel_module("fused_rebuild", kept_anchor)
            if self.fused is not None:
                self.fused_args = (neighbor_index.contiguous(), None if uniform else neighbor_weight.float())
            self.index = neighbor_index.reshape(-1)
            self.width = width
            half = kept_anchor.dtype in (torch.float16, torch.bfloat16)
            rows = self.index.numel()
            self.gather = (uniform and half and rows >= _GATHER_MIN_ROWS
                           and rows * kept_anchor.shape[-1] * 2 <= _GATHER_BYTES)
            if not self.gather:  # one flat bag per removed token: the 2-D form rebuilds these offsets every call
                self.bags = torch.arange(0, n_removed * width, width, device=neighbor_index.device)
                self.weight = neighbor_weight.float().reshape(-1)
            self.offset = self.offset - self._weighted_sum(kept_anchor)

    def _weighted_sum(self, kept: torch.Tensor) -> torch.Tensor:
        if self.gather:
            rows = kept.index_select(0, self.index).view(-1, self.width, kept.shape[-1])
            return rows.sum(dim=1, dtype=torch.float32).mul_(1.0 / self.width)
        return F.embedding_bag(self.index, kept.float(), self.bags, per_sample_weights=self.weight, mode="sum")

    def __call__(self, kept_now: torch.Tensor) -> torch.Tensor:
        if self.index is None:
            return self.offset.to(kept_now.dtype)
        return self._weighted_sum(kept_now).add_(self.offset).to(kept_now.dtype)

    def full(self, kept_now: torch.Tensor, kept: torch.Tensor, removed: torch.Tensor) -> torch.Tensor:
        """The full sequence: ``kept_now`` at positions ``kept``, the rebuilt removed tokens at
        ``removed``; one kernel when ``KERNELS.fused_rebuild`` chose the fused rebuild."""
        if self.fused is not None:
            return self.fused.rebuild_full(kept_now, self.offset, *self.fused_args, kept, removed)
        return scatter_full(kept_now, self(kept_now), kept, removed)


def scatter_full(
    kept_states: torch.Tensor,
    removed_states: torch.Tensor,
    kept: torch.Tensor,
    removed: torch.Tensor,
) -> torch.Tensor:
    """The full sequence in original order from its kept and removed parts (of one dtype)."""
    n_tokens = kept.shape[0] + removed.shape[0]
    full = kept_states.new_empty((n_tokens, *kept_states.shape[1:]))
    full.index_copy_(0, kept, kept_states)
    return full.index_copy_(0, removed, removed_states)


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
