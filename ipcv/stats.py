"""What one forward of a patched vision tower did, for the profiler and for users.

A fresh ``VisionStats`` is made at the start of every call of the tower, so a call that raised
(an OOM, say) never leaves numbers that look like the next call's.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch


@dataclass
class VisionStats:
    """Token counts per image/frame (the ViT's attention unit, in request order) and layer roles.

    ``tokens_in``: patches entering the ViT; ``tokens_kept``: kept after block K-1;
    ``tokens_to_merger``: handed to the merger (equal to ``tokens_in``: IPCV restores them all).
    ``frames_per_item``: frames of each image/video of the request (1 for an image).
    ``as_blocks``: blocks that ran Attention Stabilization; ``pruned_blocks``: blocks that ran
    on kept tokens only. ``neighbor_search_flops``: FLOPs of the distance matrix (2 per MAC).
    ``overhead_ms``: time of IPCV's own work (selection, neighbours, restoration) when measured.
    ``kept_index``: positions of the kept tokens in the tower's internal token order (the
    window order for Qwen2.5-VL), for inspection and visualisation.
    """

    frames_per_item: list[int] = field(default_factory=list)
    tokens_in: list[int] = field(default_factory=list)
    tokens_kept: list[int] = field(default_factory=list)
    tokens_to_merger: list[int] = field(default_factory=list)
    prune_layer: int | None = None
    as_blocks: list[int] = field(default_factory=list)
    pruned_blocks: list[int] = field(default_factory=list)
    neighbor_search_flops: int = 0
    overhead_ms: dict[str, float] | None = None
    kept_index: torch.Tensor | None = None
    complete: bool = False

    @property
    def total_in(self) -> int:
        return sum(self.tokens_in)

    @property
    def total_kept(self) -> int:
        return sum(self.tokens_kept)


class OverheadTimer:
    """Times IPCV's own steps inside the forward, without synchronising on GPU.

    CUDA events are recorded around each step and read only in ``result()``, after the caller
    synchronised; on CPU, ``perf_counter`` is read directly (and labelled CPU time by callers).
    Disabled, it costs nothing.
    """

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._events: dict[str, list[tuple[torch.cuda.Event, torch.cuda.Event]]] = {}
        self._seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str, device: torch.device) -> Iterator[None]:
        if not self.enabled:
            yield
            return
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            yield
            end.record()
            self._events.setdefault(name, []).append((start, end))
        else:
            t0 = time.perf_counter()
            yield
            self._seconds[name] = self._seconds.get(name, 0.0) + time.perf_counter() - t0

    def result(self) -> dict[str, float] | None:
        if not self.enabled:
            return None
        out = {name: 1000.0 * s for name, s in self._seconds.items()}
        if self._events:
            torch.cuda.synchronize()
            for name, pairs in self._events.items():
                out[name] = out.get(name, 0.0) + sum(a.elapsed_time(b) for a, b in pairs)
        return out
