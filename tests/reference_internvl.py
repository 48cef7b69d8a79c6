"""The published InternViT IPCV rule, written out step by step from the issue's description
(``IPCV_ViT.forward``), independently of ``ipcv/vision_tiled.py``: plain loops over tiles and
tokens, float32 ``cdist``, the rebuild as "saved state + mean change of the neighbours"."""

from __future__ import annotations

import torch


def reference_internvl(tower, pixels: torch.Tensor, K: int, r_percent: int, A: int, k: int,
                       scope: str = "global", restore: str = "ngr") -> tuple[torch.Tensor, list[list[int]]]:
    """``last_hidden_state`` of the tower under IPCV, and the kept positions of every tile."""
    layers = tower.encoder.layer
    with torch.no_grad():
        h = tower.embeddings(pixels)
        h = h[0] if isinstance(h, tuple) else h
        for i in range(K - 1):
            h = layers[i](h)
        before = h
        after = layers[K - 1](h)
        tiles, length, _ = after.shape
        patches = length - 1
        keep = patches * (100 - r_percent) // 100  # floor(n (1 - r)) in integers
        kept, removed = [], []
        for t in range(tiles):
            score = (after[t, 1:].float() - before[t, 1:].float()).norm(dim=-1)
            top = sorted((score.topk(keep).indices + 1).tolist())
            kept.append([0] + top)
            removed.append([j for j in range(length) if j not in top and j != 0])
        # every kept token of every tile, in tile order, is a candidate neighbour
        pool = [(t, j) for t in range(tiles) for j in kept[t]]
        pool_states = torch.stack([after[t, j].float() for t, j in pool])
        neighbours = {}
        for t in range(tiles):
            for j in removed[t]:
                dist = torch.cdist(after[t, j].float()[None], pool_states)[0]
                if scope == "same_image":  # tile-local
                    dist = torch.where(torch.tensor([pt == t for pt, _ in pool]), dist, torch.inf)
                neighbours[t, j] = dist.topk(min(k, len(pool)), largest=False).indices.tolist()

        def rebuild(current: torch.Tensor) -> torch.Tensor:
            full = after.clone()
            now = {(t, j): current[t, m] for t in range(tiles) for m, j in enumerate(kept[t])}
            for t in range(tiles):
                for m, j in enumerate(kept[t]):
                    full[t, j] = current[t, m]
                if restore != "ngr":
                    continue
                for j in removed[t]:
                    drift = torch.stack([now[pool[n]].float() - after[pool[n]].float() for n in neighbours[t, j]])
                    full[t, j] = (after[t, j].float() + drift.mean(dim=0)).to(after.dtype)
            return full

        current = torch.stack([after[t, kept[t]] for t in range(tiles)])
        for i in range(K, K + A):
            layer = layers[i]
            attended = layer.attention(layer.layernorm_before(rebuild(current)))[0]
            current = current + layer.lambda_1 * torch.stack([attended[t, kept[t]] for t in range(tiles)])
            current = current + layer.lambda_2 * layer.mlp(layer.layernorm_after(current))
        for i in range(K + A, len(layers)):
            current = layers[i](current)
        return tower.layernorm(rebuild(current)), kept
