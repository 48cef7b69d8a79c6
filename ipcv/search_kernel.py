"""IPCV's neighbour search (the k nearest kept tokens of each removed token) as one Triton kernel
for half-precision states on a GPU.

The torch path (``algorithm.find_neighbors``) writes the whole [R, M] float32 distance matrix
(``||b||^2 - 2 a.b`` from one matrix product) to memory and reads it back for ``torch.topk``: at
1344² on a Qwen2-VL-7B tower that is 5,991 x 3,225 distances, 0.58 ms for the product and 0.38 ms
for the top-k on an H200 (docs/benchmarks.md), most of the neighbour search's 1.35 ms. Here each
program takes a block of removed tokens and a share of the kept tokens, computes their distances a
tile at a time on the tensor cores (float32 accumulation, as the torch path), and keeps each row's
nearest in registers; nothing of size R x M is written. The shares' candidates ([R, splits, kp]) are
merged by one small ``torch.topk``.

A distance and its column travel together as one int64 key: the float32 distance's bits, made to
sort as integers, above the column index. The keys order by distance, and equal distances by
column, so ties go to the lower index, deterministically (``torch.topk``'s choice among equal values
is unspecified). The distances are the torch path's up to the order of the float32 sums, so the
neighbour sets agree except where two kept tokens are that close to equidistant
(``benchmarks/gpu_checks.py --only kernels`` counts how often).

Imported only when ``algorithm.KERNELS.fused_search`` is on; needs Triton's ``tl.topk``. With
``TRITON_INTERPRET=1`` set before the import the kernel runs on CPU tensors through Triton's
interpreter: that is how the tests check it without a GPU.
"""

from __future__ import annotations

import contextlib
import functools
import os

import torch
import triton
import triton.language as tl

# Tile sizes: rows of removed tokens, columns of kept tokens, feature dimensions per step of the
# product. Compiled for sm_90 (Triton 3.9's ptxas, 16-byte aligned operands and width as at launch),
# 64 x 64 with 8 warps takes 110 registers per thread and no spills (two programs fit on one
# multiprocessor); with 4 warps 174. Whether it is the fastest choice is for benchmarks/ipcv_parts.py.
BLOCK_M = 64
BLOCK_N = 64
BLOCK_D = 64
WARPS = 8
# The kept side is split between programs until there are about this many programs per
# multiprocessor (a 1344² image has only 94 blocks of 64 removed rows for an H200's 132).
PROGRAMS_PER_SM = 2
_LOW32 = 0xFFFFFFFF
INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"
HAS_TOPK = hasattr(tl, "topk")  # Triton 3.4 and later


@triton.jit
def _nearest_keys(removed_ptr, kept_ptr, norms_ptr, keys_ptr, n_removed, n_kept, dim, n_tiles, tiles_per_split,
                  KP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                  UPCAST: tl.constexpr):
    split = tl.program_id(1)
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < n_removed
    dims = tl.arange(0, BLOCK_D)
    # Keys are inverted (~key) so that the nearest is the largest, which is what tl.topk selects in
    # every Triton that has it; the worst inverted key is int64's minimum.
    best = tl.full([BLOCK_M, KP], -9223372036854775808, tl.int64)
    first = split * tiles_per_split
    for tile in range(first, tl.minimum(first + tiles_per_split, n_tiles)):
        cols = tile * BLOCK_N + tl.arange(0, BLOCK_N)
        col_ok = cols < n_kept
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        for d0 in range(0, dim, BLOCK_D):
            d = d0 + dims
            a = tl.load(removed_ptr + rows[:, None].to(tl.int64) * dim + d[None, :],
                        mask=row_ok[:, None] & (d < dim)[None, :], other=0.0)
            b = tl.load(kept_ptr + cols[:, None].to(tl.int64) * dim + d[None, :],
                        mask=col_ok[:, None] & (d < dim)[None, :], other=0.0)
            if UPCAST:  # Triton's interpreter multiplies bf16 operands as raw integers
                acc = tl.dot(a.to(tl.float32), tl.trans(b.to(tl.float32)), acc, input_precision="ieee")
            else:
                acc = tl.dot(a, tl.trans(b), acc)
        norms = tl.load(norms_ptr + cols, mask=col_ok, other=0.0)
        dist = norms[None, :] - 2.0 * acc  # ||b||^2 - 2 a.b, as the torch path ranks
        bits = dist.to(tl.int32, bitcast=True)
        ordered = bits ^ ((bits >> 31) & 0x7FFFFFFF)  # float order as signed-integer order
        # NaN last, after +inf (torch.topk's order), whatever sign bit the device gave it; -0.0 and
        # +0.0 are one distance, so their tie goes to the lower index too
        ordered = tl.where(dist != dist, 0x7FC00000, tl.where(dist == 0.0, 0, ordered))
        key = (ordered.to(tl.int64) << 32) | cols.to(tl.int64)[None, :]
        inverted = tl.where(col_ok[None, :], ~key, tl.full([BLOCK_M, BLOCK_N], -9223372036854775808, tl.int64))
        tile_best = tl.topk(inverted, KP)
        best = tl.topk(tl.reshape(tl.join(best, tile_best), [BLOCK_M, 2 * KP]), KP)
    slots = tl.arange(0, KP)
    out = keys_ptr + (rows[:, None].to(tl.int64) * tl.num_programs(1) + split) * KP + slots[None, :]
    tl.store(out, ~best, mask=row_ok[:, None])


@functools.cache
def _multiprocessors(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


def nearest(removed: torch.Tensor, kept: torch.Tensor, norms: torch.Tensor, k: int, splits: int | None = None,
            block_m: int = BLOCK_M, block_n: int = BLOCK_N, warps: int = WARPS) -> torch.Tensor:
    """Indices ``[R, k]`` (long, nearest first) of the ``k`` kept rows with the smallest
    ``norms[j] - 2 removed[r] . kept[j]`` (float32 accumulation; ties to the lower index).

    ``removed`` [R, D] and ``kept`` [M, D]: float16 or bfloat16 of one dtype; ``norms``: float32
    [M] (``||kept_j||^2``); ``1 <= k <= M``. ``splits``: programs that share the kept side of one
    block of rows (default: enough for ``PROGRAMS_PER_SM`` programs per multiprocessor); the tile
    sizes and warps are there for ``benchmarks/ipcv_parts.py`` to compare."""
    n_removed, dim = removed.shape
    n_kept = kept.shape[0]
    if removed.dtype not in (torch.float16, torch.bfloat16) or kept.dtype != removed.dtype:
        raise ValueError(f"nearest: removed and kept must share a half-precision dtype, got {removed.dtype} "
                         f"and {kept.dtype}")
    if kept.shape[1] != dim or norms.shape != (n_kept,) or norms.dtype != torch.float32:
        raise ValueError(f"nearest: kept {tuple(kept.shape)} and float32 norms [{n_kept}] must match removed "
                         f"{tuple(removed.shape)}; got norms {tuple(norms.shape)} {norms.dtype}")
    if not 1 <= k <= n_kept:
        raise ValueError(f"nearest: k={k} must be between 1 and the {n_kept} kept rows")
    if len({removed.device, kept.device, norms.device}) != 1:
        raise ValueError("nearest: removed, kept and norms must be on one device")
    if not HAS_TOPK:
        raise RuntimeError(f"IPCV's fused neighbour search needs triton.language.topk (Triton >= 3.4); this is "
                           f"Triton {triton.__version__}: turn IPCV_KERNELS' fused_search off")
    kp = triton.next_power_of_2(k)
    block_n = max(block_n, kp)  # a tile's top-kp needs kp columns
    n_tiles = triton.cdiv(n_kept, block_n)
    m_blocks = triton.cdiv(n_removed, block_m)
    if splits is None:
        programs = PROGRAMS_PER_SM * (_multiprocessors(removed.device) if removed.is_cuda else 1)
        splits = triton.cdiv(programs, m_blocks)
    splits = max(1, min(splits, n_tiles))
    tiles_per_split = triton.cdiv(n_tiles, splits)
    splits = triton.cdiv(n_tiles, tiles_per_split)  # no share left without a tile
    keys = torch.empty((n_removed, splits, kp), dtype=torch.int64, device=removed.device)
    removed, kept, norms = removed.contiguous(), kept.contiguous(), norms.contiguous()
    with torch.cuda.device(removed.device) if removed.is_cuda else contextlib.nullcontext():
        _nearest_keys[(m_blocks, splits)](removed, kept, norms, keys, n_removed, n_kept, dim, n_tiles,
                                          tiles_per_split, KP=kp, BLOCK_M=block_m, BLOCK_N=block_n,
                                          BLOCK_D=BLOCK_D, UPCAST=INTERPRETED, num_warps=warps)
    if splits == 1:
        chosen = keys[:, 0, :k]
    else:
        chosen = torch.topk(keys.view(n_removed, splits * kp), k, dim=1, largest=False).values
    return chosen & _LOW32
