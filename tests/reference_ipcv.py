"""IPCV written out step by step, as an independent check of the patch.

It runs the blocks of an unpatched tower by hand, with Python loops for scoring, selection,
neighbour search, reconstruction and segment bookkeeping. From the tower it takes only what the
method treats as given: the input of block 0 and, for every block, the ``cu_seqlens`` and
position embeddings the tower passes (captured on an unpatched run). Returns the sequence after
the last block (the tower's ``last_hidden_state``).
"""

from __future__ import annotations

import math

import torch


def capture_block_calls(tower, inp):
    """Input of block 0 and each block's cu_seqlens / position embeddings, from an unpatched run."""
    calls = []

    def hook(module, args, kwargs):
        calls.append(
            {
                "hidden": args[0] if args else kwargs["hidden_states"],
                "cu": kwargs["cu_seqlens"],
                "pos": kwargs["position_embeddings"],
                "max_seqlen": kwargs.get("max_seqlen"),
            }
        )

    handles = [b.register_forward_pre_hook(hook, with_kwargs=True) for b in tower.blocks]
    try:
        with torch.no_grad():
            tower(inp.pixel_values.to(next(tower.parameters()).dtype), grid_thw=inp.grid_thw)
    finally:
        for h in handles:
            h.remove()
    return calls


def frame_of_each_token(grid_thw) -> list[int]:
    frames = []
    frame = 0
    for t, h, w in grid_thw.tolist():
        for _ in range(t):
            frames += [frame] * (h * w)
            frame += 1
    return frames


def reference_ipcv(tower, inp, *, K, r_percent, A, k, budget="global", scope="global", restore="ngr"):
    """``r_percent``: reduction ratio in percent (integer arithmetic for the kept count)."""
    calls = capture_block_calls(tower, inp)
    blocks = tower.blocks
    frames = frame_of_each_token(inp.grid_thw)
    n = len(frames)

    def call(i, x, cu, pos):
        return blocks[i](x, cu_seqlens=cu, max_seqlen=None, position_embeddings=pos)

    with torch.no_grad():
        x = calls[0]["hidden"]
        for i in range(K - 1):
            x = call(i, x, calls[i]["cu"], calls[i]["pos"])
        h_prev = x
        h_k = call(K - 1, x, calls[K - 1]["cu"], calls[K - 1]["pos"])

        score = [math.sqrt(sum((float(a) - float(b)) ** 2 for a, b in zip(h_k[t], h_prev[t]))) for t in range(n)]
        if budget == "global":
            keep = max(1, n * (100 - r_percent) // 100)
            kept = sorted(sorted(range(n), key=lambda t: -score[t])[:keep])
        else:
            kept = []
            for f in sorted(set(frames)):
                members = [t for t in range(n) if frames[t] == f]
                keep = max(1, len(members) * (100 - r_percent) // 100)
                kept += sorted(sorted(members, key=lambda t: -score[t])[:keep])
            kept = sorted(kept)
        kept_set = set(kept)
        removed = [t for t in range(n) if t not in kept_set]
        row_of = {t: j for j, t in enumerate(kept)}

        def dist(a, b):
            return math.sqrt(sum((float(u) - float(v)) ** 2 for u, v in zip(h_k[a], h_k[b])))

        neighbours = {}
        for t in removed:
            candidates = [j for j in kept if scope == "global" or frames[j] == frames[t]]
            neighbours[t] = sorted(candidates, key=lambda j: dist(t, j))[:k]

        def rebuild(x_kept):
            full = torch.empty((n, x_kept.shape[1]), dtype=x_kept.dtype)
            for t in kept:
                full[t] = x_kept[row_of[t]]
            for t in removed:
                state = h_k[t].clone()
                if restore == "ngr" and neighbours[t]:
                    drift = sum(x_kept[row_of[j]] - h_k[j] for j in neighbours[t]) / len(neighbours[t])
                    state = state + drift
                full[t] = state
            return full

        def kept_segments(cu):
            bounds = [int(c) for c in cu.tolist()]
            out = [0]
            for start, end in zip(bounds[:-1], bounds[1:]):
                count = sum(1 for t in kept if start <= t < end)
                if count:
                    out.append(out[-1] + count)
            return torch.tensor(out, dtype=cu.dtype)

        x = h_k[kept]
        for i in range(K, len(blocks)):
            cu, pos = calls[i]["cu"], calls[i]["pos"]
            block = blocks[i]
            if i < K + A:
                full = rebuild(x)
                attn = block.attn(block.norm1(full), cu_seqlens=cu, max_seqlen=None, position_embeddings=pos)
                x = x + attn[kept]
                x = x + block.mlp(block.norm2(x))
            else:
                x = call(i, x, kept_segments(cu), tuple(p[kept] for p in pos))
        return rebuild(x), kept, neighbours
