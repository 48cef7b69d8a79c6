"""Latency the way this field keeps getting wrong: warm-up, synchronisation, repeats, spread.

On CUDA each repeat is bracketed by CUDA events and read after one synchronisation; on CPU,
``time.perf_counter``. Nothing frees memory inside the timed region.
"""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

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


def summarize(samples: list[float], warmup: int, clock: str) -> Timing:
    """Median and spread of millisecond samples."""
    return Timing(statistics.median(samples), _quantile(samples, 0.1), _quantile(samples, 0.9), len(samples), warmup, clock)


def clock_name(device: torch.device) -> str:
    return "cuda-events" if device.type == "cuda" else "cpu-perf_counter"


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
    else:
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            samples.append(1000.0 * (time.perf_counter() - t0))
    return summarize(samples, warmup, clock_name(device))


Span = torch.nn.Module | tuple[torch.nn.Module, torch.nn.Module]


def span_ends(span: Span) -> tuple[torch.nn.Module, torch.nn.Module]:
    """A stage as (the module whose call opens it, the module whose call closes it): one module,
    or two where a stage runs over consecutive modules (InternVL: vision tower, then projector)."""
    return span if isinstance(span, tuple) else (span, span)


class StageClock:
    """Times the calls of given modules (e.g. the vision tower and the language model) from
    forward hooks: CUDA events on GPU, read after one synchronisation in ``take()``;
    ``perf_counter`` on CPU. A model spread over several GPUs (``devices``) is timed with
    ``perf_counter`` after synchronising all of them at each stage boundary: an event records on
    one GPU's stream only and would miss the work queued on the others. Hooks are removed on exit."""

    def __init__(self, stages: dict[str, Span], device: torch.device,
                 devices: list[torch.device] | None = None) -> None:
        self.stages = stages
        self.device = device
        self.gpus = [d for d in devices or [] if d.type == "cuda"]
        self.events = device.type == "cuda" and len(self.gpus) <= 1
        self._open: dict[str, Any] = {}
        self._done: dict[str, list[Any]] = {name: [] for name in stages}
        self._handles: list[Any] = []

    @property
    def label(self) -> str:
        """The clock, as rows and reports name it."""
        if self.events or self.device.type != "cuda":
            return clock_name(self.device)
        return f"perf_counter-synced-{len(self.gpus)}-gpus"

    def _now(self) -> Any:
        if self.events:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        for gpu in self.gpus:
            torch.cuda.synchronize(gpu)
        return time.perf_counter()

    def __enter__(self) -> StageClock:
        for name, span in self.stages.items():
            first, last = span_ends(span)
            self._handles.append(first.register_forward_pre_hook(lambda m, a, n=name: self._start(n)))
            self._handles.append(last.register_forward_hook(lambda m, a, o, n=name: self._stop(n), always_call=True))
        return self

    def _start(self, name: str) -> None:
        self._open[name] = self._now()

    def _stop(self, name: str) -> None:
        if name in self._open:
            self._done[name].append((self._open.pop(name), self._now()))

    def __exit__(self, *exc: Any) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def take(self) -> dict[str, list[float]]:
        """Milliseconds of every call since the last ``take``, per stage."""
        if self.events:
            torch.cuda.synchronize(self.device)
            out = {n: [a.elapsed_time(b) for a, b in pairs] for n, pairs in self._done.items()}
        else:
            out = {n: [1000.0 * (b - a) for a, b in pairs] for n, pairs in self._done.items()}
        self._done = {name: [] for name in self.stages}
        return out


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
        from pipeline.provenance import cpu_model

        info["device"] = cpu_model() or platform.processor() or platform.machine()
        info["cpu_threads"] = torch.get_num_threads()
    return info
