"""Latency the way this field keeps getting wrong: warm-up, synchronisation, repeats, spread.

On CUDA each repeat is bracketed by CUDA events and read after one synchronisation; on CPU,
``time.perf_counter``. Nothing frees memory inside the timed region.
"""

from __future__ import annotations

import platform
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

import torch


@dataclass(frozen=True)
class Timing:
    """Milliseconds over ``repeats`` runs after ``warmup``; ``clock`` says what measured them."""

    median_ms: float
    p10_ms: float
    p90_ms: float
    repeats: int
    warmup: int
    clock: str  # "cuda-events" or "cpu-perf_counter"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    lo, hi = int(pos), min(int(pos) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def time_call(fn: Callable[[], Any], device: torch.device, warmup: int = 3, repeats: int = 10) -> Timing:
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")
    for _ in range(warmup):
        fn()
    samples: list[float] = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        pairs = []
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            pairs.append((start, end))
        torch.cuda.synchronize(device)
        samples = [a.elapsed_time(b) for a, b in pairs]
        clock = "cuda-events"
    else:
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            samples.append(1000.0 * (time.perf_counter() - t0))
        clock = "cpu-perf_counter"
    return Timing(
        statistics.median(samples), _quantile(samples, 0.1), _quantile(samples, 0.9), repeats, warmup, clock
    )


def provenance(device: torch.device) -> dict[str, Any]:
    """Where and with what a figure was measured."""
    import transformers

    info: dict[str, Any] = {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "device_type": device.type,
    }
    if device.type == "cuda":
        info["device"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    else:
        info["device"] = platform.processor() or platform.machine()
        info["cpu_threads"] = torch.get_num_threads()
    return info
