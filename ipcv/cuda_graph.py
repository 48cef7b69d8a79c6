"""One call of a vision tower (patched or not) captured as a CUDA graph and replayed.

At small inputs the tower is host-bound: at 448² the GPU of an H200 is busy for about 6.5 ms of a
16 ms Qwen2-VL-7B encoder forward, the rest is Python and kernel launches (docs/benchmarks.md),
so IPCV's saved GPU work cannot show and its extra launches cost time. A CUDA graph records the
kernels of one call once and replays them without the host, so latency becomes GPU time for the
unpatched and the patched tower alike.

A graph replays the same kernels on the same buffers: every host-side decision of the call (the
segment lengths transformers reads, IPCV's kept counts, the shapes) is taken once, at capture.
That is right for one input layout (same image sizes, same ratio) and wrong for any other, so a
``GraphedCall`` belongs to one layout; copy new pixels of that layout into the input buffer the
call reads and replay. A call that reads a device value on the host cannot be captured (the
capture fails at that read): call the tower with its layout values computed on the host
(``pipeline.models`` family adapters: ``host_layout_call``). IPCV's path reads nothing back when
the host knows the kept counts (one image, or the per-image budget), or on a varlen (flash)
attention, which takes the kept boundaries on the device; on sdpa / eager a video under the global
budget, or Qwen2.5-VL's windows, take kept counts per segment from the device (transformers'
per-segment loop reads them) and are refused. So are calls for which IPCV would copy host values
to the device (``ipcv.algorithm.to_device``: random selection, images of different sizes or
several requests under the global budget, a per-image neighbour scope): a replay could read a
pinned host buffer handed out again since. A captured call publishes no statistics.

Compare a graphed IPCV tower only with the unpatched tower graphed the same way: a speed-up
between a graphed and an eager call is a property of the replay, not of IPCV.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


class GraphedCall:
    """``fn`` (no arguments; it reads its inputs from tensors it holds) captured on the current
    CUDA device after ``warmup`` eager calls on a side stream (which also fills the caching
    allocator and lets lazy initialisation happen outside the capture). Calling the object
    replays the graph and returns the output of the captured call; its tensors are overwritten by
    the next replay."""

    def __init__(self, fn: Callable[[], Any], warmup: int = 2) -> None:
        if not torch.cuda.is_available():
            raise RuntimeError("GraphedCall needs a CUDA device: CUDA graphs replay GPU kernels")
        self.fn = fn
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(max(1, warmup)):
                fn()
        torch.cuda.current_stream().wait_stream(side)
        torch.cuda.synchronize()
        self.graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(self.graph):
                self.output = fn()
        except RuntimeError as err:
            if "capturing" in str(err) or "capture" in str(err):
                raise RuntimeError(
                    "this call cannot be captured as a CUDA graph: it reads a device value on the host "
                    "(e.g. segment lengths or kept counts) or copies host values to the device; call the "
                    "tower with its layout computed on the "
                    "host, and IPCV with one image per call, budget='per_image' or a varlen attention "
                    f"(torch said: {str(err).splitlines()[0][:200]})"
                ) from err
            raise

    def __call__(self) -> Any:
        self.graph.replay()
        return self.output
