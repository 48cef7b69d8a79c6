"""One Neighbour-Guided Reconstruction rebuild as a single Triton kernel (half precision, CUDA).

The torch path of a rebuild (``algorithm.Reconstruction`` then ``algorithm.scatter_full``) is
memory-bound and takes five to seven kernels: it gathers the R x k neighbour rows into an
[R, k, D] tensor in memory, sums it in float32, adds the float32 offset, rounds, and writes the
kept and the rebuilt rows into the full sequence with two ``index_copy_``. At 1344² on a
Qwen2-VL-7B tower that is about 0.21 ms per rebuild, eight times a forward (H200,
docs/benchmarks.md), most of IPCV's restoration overhead.

Here one program writes one block of columns of one row of the full sequence: a rebuilt row reads
its k neighbour rows (the kept states are small enough to stay in L2), sums them in float32
registers, scales by 1/k (uniform weights) or weights each (scoped search), adds its offset and
stores the rounded row at its position; a kept row is copied to its position. Each row of the
result is written once and nothing else is materialised. The arithmetic is the torch path's
(float32 accumulation of exactly representable half-precision values, one rounding at the end);
only the order of the float32 sums may differ (and the compiler may fuse the scale and the offset
into one multiply-add), so results agree to the output's rounding.

Imported only when ``algorithm.KERNELS.fused_rebuild`` is on (it needs the ``triton`` package,
which CUDA builds of torch bring along). With ``TRITON_INTERPRET=1`` set before the import, the
kernel runs on CPU tensors through Triton's interpreter: that is how the tests check it without a
GPU.
"""

from __future__ import annotations

import contextlib
import os

import torch
import triton
import triton.language as tl

# Columns per program: 1280 (Qwen2-VL), 1024 (InternViT-300M) and 3200 (InternViT-6B) are
# multiples of 128; 256 half-precision values are 8 bytes per thread with 2 warps.
BLOCK = 256
WARPS = 2
INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"


@triton.jit
def _rebuild_rows(kept_ptr, offset_ptr, index_ptr, weight_ptr, kept_pos_ptr, removed_pos_ptr, out_ptr,
                  n_removed, width, scale,
                  K: tl.constexpr, UNIFORM: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    inside = cols < width
    if row < n_removed:
        acc = tl.zeros([BLOCK], dtype=tl.float32)
        for j in tl.static_range(K):
            source = tl.load(index_ptr + row * K + j)
            values = tl.load(kept_ptr + source * width + cols, mask=inside, other=0.0).to(tl.float32)
            if UNIFORM:
                acc += values
            else:
                acc += tl.load(weight_ptr + row * K + j) * values
        if UNIFORM:
            acc = acc * scale
        acc += tl.load(offset_ptr + row * width + cols, mask=inside, other=0.0)
        target = tl.load(removed_pos_ptr + row)
        tl.store(out_ptr + target * width + cols, acc.to(out_ptr.dtype.element_ty), mask=inside)
    else:
        source = row - n_removed
        target = tl.load(kept_pos_ptr + source)
        tl.store(out_ptr + target * width + cols, tl.load(kept_ptr + source * width + cols, mask=inside), mask=inside)


def rebuild_full(kept_now: torch.Tensor, offset: torch.Tensor, index: torch.Tensor, weight: torch.Tensor | None,
                 kept_pos: torch.Tensor, removed_pos: torch.Tensor, block: int = BLOCK) -> torch.Tensor:
    """The full sequence ``[n_kept + n_removed, D]`` in ``kept_now``'s dtype: row ``kept_pos[i]``
    is ``kept_now[i]``, row ``removed_pos[r]`` is ``offset[r] + sum_j w_rj kept_now[index[r, j]]``
    with ``w_rj = weight[r, j]``, or ``1/k`` when ``weight`` is ``None`` (summed first, then
    scaled, as the torch path does).

    ``offset``: float32 [R, D]; ``index``: long [R, k] (k >= 1); ``weight``: float32 [R, k];
    positions: long, together a permutation of the full sequence's rows."""
    n_kept, width = kept_now.shape
    n_removed, k = index.shape
    # The kernel writes raw memory: what index_copy_ would refuse must be refused here
    if k == 0 or offset.shape != (n_removed, width) or offset.dtype != torch.float32:
        raise ValueError(f"rebuild_full needs k >= 1 neighbours and a float32 [{n_removed}, {width}] offset; "
                         f"got k={k}, offset {tuple(offset.shape)} {offset.dtype}")
    if kept_pos.shape != (n_kept,) or removed_pos.shape != (n_removed,):
        raise ValueError(f"rebuild_full: {n_kept} kept and {n_removed} removed rows, but positions of shape "
                         f"{tuple(kept_pos.shape)} and {tuple(removed_pos.shape)}")
    if {t.dtype for t in (index, kept_pos, removed_pos)} != {torch.long}:
        raise ValueError("rebuild_full: index and positions must be torch.long")
    if weight is not None and weight.shape != index.shape:
        raise ValueError(f"rebuild_full: weight {tuple(weight.shape)} does not match index {tuple(index.shape)}")
    tensors = [kept_now, offset, index, kept_pos, removed_pos] + ([] if weight is None else [weight])
    if len({t.device for t in tensors}) != 1:
        raise ValueError(f"rebuild_full: tensors on several devices {sorted({str(t.device) for t in tensors})}")
    kept_now, offset, index = kept_now.contiguous(), offset.contiguous(), index.contiguous()
    kept_pos, removed_pos = kept_pos.contiguous(), removed_pos.contiguous()
    weights = index if weight is None else weight.float().contiguous()  # an unused pointer when uniform
    out = kept_now.new_empty((n_kept + n_removed, width))
    grid = (n_kept + n_removed, triton.cdiv(width, block))
    # Triton launches on the current CUDA device: make it the states' (a tower on another GPU of a
    # model spread over several)
    with torch.cuda.device(kept_now.device) if kept_now.is_cuda else contextlib.nullcontext():
        _rebuild_rows[grid](kept_now, offset, index, weights, kept_pos, removed_pos, out, n_removed, width, 1.0 / k,
                            K=k, UNIFORM=weight is None, BLOCK=block, num_warps=WARPS)
    return out
