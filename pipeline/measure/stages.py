"""One request, measured stage by stage: preprocess, vision, prefill, decode, end to end.

``measure_request`` is what ``ipcv-study profile`` prints and what every sweep cell records.

For each stage: latency (median, p10, p90 over repeats after warm-up; CUDA events on GPU, CPU
``perf_counter`` on CPU, labelled by ``clock``), peak memory (GPU only: a CPU figure would not be
honest, so it is reported as not measured, never 0), FLOPs by three routes (analytic, fvcore
with our attention handles, FlopCounterMode; see pipeline/measure/flop_count.py), and tokens. IPCV's own
overhead is timed in separate runs. Every report carries its provenance.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

import ipcv
from ipcv.llm import cache_bytes
from pipeline.measure.flop_count import PREFILL, VISION, flop_counter_flops, fvcore_flops
from pipeline.measure.llm_flops import prefill_flops, record_llm_layout
from pipeline.measure.timing import Span, StageClock, Timing, provenance, span_ends, summarize
from pipeline.measure.vision_flops import record_vision_layout, vision_flops
from pipeline.models import ModelFamily, RequestSpec, family_of, to_device
from pipeline.models.sharding import devices_of

STAGES = ("preprocess", "vision", "prefill", "decode", "e2e")


class StageError(RuntimeError):
    """A stage could not be measured (e.g. CUDA out of memory); the message names stage and shapes."""


@dataclass
class MeasureSettings:
    warmup: int = 1
    repeats: int = 3
    max_new_tokens: int = 8
    count_flops: bool = True

    def __post_init__(self) -> None:
        if self.warmup < 0 or self.repeats < 1 or self.max_new_tokens < 1:
            raise ValueError(
                f"need warmup >= 0, repeats >= 1, max_new_tokens >= 1; got {self.warmup}, "
                f"{self.repeats}, {self.max_new_tokens}"
            )


@dataclass
class StageReport:
    time: Timing | None = None
    peak_memory_bytes: int | None = None  # summed over the GPUs of a model spread over several
    peak_memory_by_device: dict[str, int] | None = None  # each GPU's own peak (several GPUs only)
    flops: dict[str, int | None] = field(default_factory=dict)
    tokens: dict[str, Any] = field(default_factory=dict)


@dataclass
class RequestReport:
    model: str
    request: str
    vision: dict[str, Any] | None
    llm: dict[str, Any] | None
    provenance: dict[str, Any]
    stages: dict[str, StageReport]
    decode_per_token: Timing | None = None
    ipcv_overhead_ms: dict[str, float] | None = None
    kv_cache_bytes: int | None = None
    uncounted_ops: dict[str, int] = field(default_factory=dict)
    not_measured: list[str] = field(default_factory=list)
    flop_convention: str = "FLOPs = 2 x multiply-adds; matrix products only (docs/benchmarks.md)"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=str)


def _shapes(request: dict[str, torch.Tensor]) -> str:
    return ", ".join(f"{k} {tuple(v.shape)}" for k, v in request.items() if k != "attention_mask")


@contextmanager
def _stage(name: str, request: dict[str, torch.Tensor]) -> Iterator[None]:
    try:
        yield
    except torch.cuda.OutOfMemoryError as err:
        raise StageError(f"CUDA out of memory in stage '{name}' ({_shapes(request)}): {err}") from err


class _PeakMemory:
    """Peak allocated bytes inside each call of the given stages (GPU), per device of the model,
    from forward hooks: each device's peak statistic is reset when a stage opens and read when it
    closes."""

    def __init__(self, stages: dict[str, Span], devices: list[torch.device]) -> None:
        self.stages, self.devices = stages, [d for d in devices if d.type == "cuda"]
        self.peaks: dict[str, list[dict[str, int]]] = {n: [] for n in stages}
        self._handles: list[Any] = []

    def _reset(self) -> None:
        for device in self.devices:
            torch.cuda.reset_peak_memory_stats(device)

    def _read(self, name: str) -> None:
        self.peaks[name].append({str(d): torch.cuda.max_memory_allocated(d) for d in self.devices})

    def __enter__(self) -> _PeakMemory:
        for name, span in self.stages.items():
            first, last = span_ends(span)
            self._handles.append(first.register_forward_pre_hook(lambda m, a: self._reset()))
            self._handles.append(last.register_forward_hook(lambda m, a, o, n=name: self._read(n)))
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self._handles:
            h.remove()

    def record(self, report: StageReport, calls: list[dict[str, int]]) -> None:
        """The largest call's peak on each device, and their sum, into a stage's report."""
        if not calls:
            return
        per_device = {d: max(call[d] for call in calls) for d in calls[0]}
        report.peak_memory_bytes = sum(per_device.values())
        report.peak_memory_by_device = per_device if len(per_device) > 1 else None


def measure_request(
    model: nn.Module,
    spec: RequestSpec,
    *,
    model_name: str,
    vision: ipcv.IPCVConfig | None = None,
    llm: ipcv.LLMPruneConfig | None = None,
    settings: MeasureSettings | None = None,
    processor: Any | None = None,
) -> RequestReport:
    """Measure ``spec`` on ``model`` with the given compression (none: the uncompressed model).
    A CUDA out-of-memory raises ``StageError`` naming the stage and the input shapes."""
    settings = settings or MeasureSettings()
    params = next(model.parameters())
    report = RequestReport(
        model=model_name, request=spec.describe(),
        vision=vision.to_dict() if vision else None, llm=llm.to_dict() if llm else None,
        provenance={**provenance(params.device), "dtype": str(params.dtype).removeprefix("torch."),
                    "attn_implementation": model.config._attn_implementation, "batch_size": 1},
        stages={name: StageReport() for name in STAGES},
    )
    with compressed(model, vision, llm) as handle:
        _Measurement(model, spec, settings, handle, report, processor).run()
    return report


@contextmanager
def compressed(model: nn.Module, vision: ipcv.IPCVConfig | None, llm: ipcv.LLMPruneConfig | None
               ) -> Iterator[ipcv.IPCVHandle | None]:
    """``model`` with the given compression applied for the block (``None`` for neither)."""
    handle = ipcv.apply(model, vision=vision, llm=llm) if (vision or llm) else None
    try:
        yield handle
    finally:
        if handle:
            handle.remove()


class _Measurement:
    """The parts of one measurement, in order: tokens and FLOPs, latency, IPCV's own overhead,
    peak memory. Holds what they share (model, stage modules, built request)."""

    def __init__(self, model: nn.Module, spec: RequestSpec, settings: MeasureSettings, handle: Any,
                 report: RequestReport, processor: Any | None) -> None:
        self.model, self.spec, self.settings, self.handle, self.report = model, spec, settings, handle, report
        self.family: ModelFamily = family_of(model)
        self.builder = self.family.request_builder(model, processor)
        self.tower = self.family.tower(model)
        self.vision_span = self.family.vision_span(model)
        self.lm = self.family.language_model(model)
        self.device = next(model.parameters()).device
        self.devices = devices_of(model)
        self.request = to_device(self.builder(spec), model)
        self.generate_kwargs = dict(max_new_tokens=settings.max_new_tokens, min_new_tokens=settings.max_new_tokens,
                                    do_sample=False)

    def run(self) -> None:
        self.tokens_and_flops()
        self.latency()
        if self.handle and self.handle.vision_config is not None:
            self.ipcv_overhead()
        self.peak_memory()

    def tokens_and_flops(self) -> None:
        """Tokens per stage and analytic FLOPs from one instrumented prefill forward."""
        model, stages, request = self.model, self.report.stages, self.request
        with _stage("prefill", request), torch.inference_mode():
            with record_vision_layout(model) as vis_layout, \
                    record_llm_layout(self.lm, self.family.lm_head(model)) as llm_layout:
                out = model(**request, logits_to_keep=1)
        vstats = self.handle.vision_stats if self.handle else None
        lstats = self.handle.llm_stats if self.handle else None
        encoder_in, to_merger, to_llm = self.family.vision_tokens(model, request)
        stages["vision"].tokens = {
            "patches_in": encoder_in,
            "kept_after_prune_layer": vstats.total_kept if vstats else encoder_in,
            "to_merger": to_merger,
            "visual_tokens_out": to_llm,
        }
        vision_ids = torch.tensor(self.family.vision_token_ids(model), device=self.device)
        n_visual = int(torch.isin(request["input_ids"], vision_ids).sum())
        length = int(request["input_ids"].shape[1])
        stages["prefill"].tokens = {
            "sequence": length,
            "visual_tokens_in": n_visual,
            "visual_tokens_kept": lstats.image_tokens_kept[0] if lstats else n_visual,
            "sequence_after_pruning": lstats.sequence_kept if lstats else length,
        }
        stages["decode"].tokens = {"generated": self.settings.max_new_tokens}
        self.report.kv_cache_bytes = lstats.kv_cache_bytes if lstats else cache_bytes(getattr(out, "past_key_values", None))
        del out
        stages["vision"].flops["analytic"] = vision_flops(
            self.family.vision_dims(model), vis_layout, vstats.neighbor_search_flops if vstats else 0
        )["total"]
        stages["prefill"].flops["analytic"] = prefill_flops(
            self.family.llm_dims(self.lm.config), llm_layout, lstats.selection_flops if lstats else 0
        )["total"]
        if self.settings.count_flops:
            _other_flop_routes(model, request, self.report)
        else:
            self.report.not_measured.append("fvcore and FlopCounterMode FLOPs: switched off (count_flops=False)")

    def latency(self) -> None:
        """Whole requests (preprocess + generate) timed around; stages from forward hooks."""
        settings, device = self.settings, self.device
        samples: dict[str, list[float]] = {name: [] for name in STAGES}
        per_token: list[float] = []
        with StageClock({"vision": self.vision_span, "llm": self.lm}, device, self.devices) as clock:
            for run in range(settings.warmup + settings.repeats):
                _sync(device)
                t0 = time.perf_counter()
                built = self.builder(self.spec)
                t1 = time.perf_counter()
                with _stage("decode", self.request), torch.inference_mode():
                    self.model.generate(**to_device(built, self.model), **self.generate_kwargs)
                _sync(device)
                t2 = time.perf_counter()
                calls = clock.take()
                if run < settings.warmup:
                    continue
                samples["preprocess"].append(1000 * (t1 - t0))
                samples["e2e"].append(1000 * (t2 - t0))
                samples["vision"].append(sum(calls["vision"]))
                samples["prefill"].append(calls["llm"][0])
                samples["decode"].append(sum(calls["llm"][1:]))
                per_token += calls["llm"][1:]
        clock_label = clock.label
        for name, values in samples.items():
            label = "cpu-perf_counter" if name in ("preprocess", "e2e") else clock_label
            self.report.stages[name].time = summarize(values, settings.warmup, label)
        self.report.decode_per_token = summarize(per_token, settings.warmup, clock_label) if per_token else None

    def ipcv_overhead(self) -> None:
        """IPCV's own steps (selection, neighbours, restoration), timed in separate tower calls."""
        handle = self.handle
        args, kwargs = self.family.tower_call(self.request)
        handle.time_overhead = True
        parts: list[dict[str, float]] = []
        with torch.inference_mode():
            for _ in range(self.settings.repeats):
                self.tower(*args, **kwargs)
                parts.append(handle.vision_stats.overhead_ms)
        handle.time_overhead = False
        self.report.ipcv_overhead_ms = {k: sorted(p[k] for p in parts)[len(parts) // 2] for k in parts[0]}

    def peak_memory(self) -> None:
        stages = self.report.stages
        if self.device.type != "cuda":
            self.report.not_measured.append("peak memory: not measured on CPU (no allocator statistics)")
            return
        with _PeakMemory({"vision": self.vision_span, "llm": self.lm}, self.devices) as peaks, torch.inference_mode():
            self.model.generate(**self.request, **self.generate_kwargs)
        peaks.record(stages["vision"], peaks.peaks["vision"])
        peaks.record(stages["prefill"], peaks.peaks["llm"][:1])
        peaks.record(stages["decode"], peaks.peaks["llm"][1:])


def _other_flop_routes(model: nn.Module, request: dict[str, torch.Tensor], report: RequestReport) -> None:
    stages = report.stages
    try:
        counted, skipped = fvcore_flops(model, request)
        for stage in (VISION, PREFILL):
            stages[stage].flops["fvcore"] = counted[stage]
        report.uncounted_ops = skipped
    except ImportError:
        report.not_measured.append("fvcore FLOPs: fvcore is not installed")
    except Exception as err:  # tracing can fail on exotic models: say so, keep the rest
        report.not_measured.append(f"fvcore FLOPs: tracing failed ({type(err).__name__}: {err})"[:300])
    try:
        counted = flop_counter_flops(model, request)
        for stage in (VISION, PREFILL):
            stages[stage].flops["flop_counter"] = counted[stage]
    except Exception as err:  # e.g. its sdpa formula rejects grouped-query shapes on CUDA
        report.not_measured.append(f"FlopCounterMode FLOPs: failed ({type(err).__name__}: {err})"[:300])
    if next(model.parameters()).device.type == "cpu" and model.config._attn_implementation == "sdpa":
        report.not_measured.append(
            "FlopCounterMode on CPU counts 0 for scaled_dot_product_attention (torch "
            f"{torch.__version__}): its figures here lack attention"
        )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)

