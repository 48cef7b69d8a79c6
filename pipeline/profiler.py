"""One request, measured stage by stage: preprocess, vision, prefill, decode, end to end.

For each stage: latency (median, p10, p90 over repeats after warm-up; CUDA events on GPU, CPU
``perf_counter`` on CPU, labelled by ``clock``), peak memory (GPU only: a CPU figure would not be
honest, so it is reported as not measured, never 0), FLOPs by three routes (analytic, fvcore
with our attention handles, FlopCounterMode; see pipeline/flop_count.py), and tokens. IPCV's own
overhead is timed in separate runs. Every report carries its provenance.
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator

import torch
from torch import nn

import ipcv
from ipcv.llm import cache_bytes
from pipeline.flop_count import PREFILL, VISION, flop_counter_flops, fvcore_flops
from pipeline.llm_flops import LLMDims, prefill_flops, record_llm_layout
from pipeline.requests import RequestBuilder, RequestSpec
from pipeline.timing import StageClock, Timing, clock_name, provenance, summarize
from pipeline.vision_flops import VisionDims, record_vision_layout, vision_flops

STAGES = ("preprocess", "vision", "prefill", "decode", "e2e")


class ProfileError(RuntimeError):
    """A stage could not be measured (e.g. CUDA out of memory); the message names stage and shapes."""


@dataclass
class ProfileSettings:
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
    peak_memory_bytes: int | None = None
    flops: dict[str, int | None] = field(default_factory=dict)
    tokens: dict[str, Any] = field(default_factory=dict)


@dataclass
class ProfileReport:
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


def _to_device(request: dict[str, torch.Tensor], device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in request.items():
        value = value.to(device)
        out[key] = value.to(dtype) if key.startswith("pixel_values") else value
    return out


def _shapes(request: dict[str, torch.Tensor]) -> str:
    return ", ".join(f"{k} {tuple(v.shape)}" for k, v in request.items() if k != "attention_mask")


@contextmanager
def _stage(name: str, request: dict[str, torch.Tensor]) -> Iterator[None]:
    try:
        yield
    except torch.cuda.OutOfMemoryError as err:
        raise ProfileError(f"CUDA out of memory in stage '{name}' ({_shapes(request)}): {err}") from err


class _PeakMemory:
    """Peak allocated bytes inside each call of the given modules (GPU), from forward hooks."""

    def __init__(self, stages: dict[str, nn.Module], device: torch.device) -> None:
        self.stages, self.device = stages, device
        self.peaks: dict[str, list[int]] = {n: [] for n in stages}
        self._handles: list[Any] = []

    def __enter__(self) -> "_PeakMemory":
        for name, module in self.stages.items():
            self._handles.append(module.register_forward_pre_hook(lambda m, a: torch.cuda.reset_peak_memory_stats(self.device)))
            self._handles.append(module.register_forward_hook(
                lambda m, a, o, n=name: self.peaks[n].append(torch.cuda.max_memory_allocated(self.device))
            ))
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self._handles:
            h.remove()


def profile(
    model: nn.Module,
    spec: RequestSpec,
    *,
    model_name: str,
    vision: ipcv.IPCVConfig | None = None,
    llm: ipcv.LLMPruneConfig | None = None,
    settings: ProfileSettings | None = None,
    processor: Any | None = None,
) -> ProfileReport:
    settings = settings or ProfileSettings()
    params = next(model.parameters())
    device, dtype = params.device, params.dtype
    builder = RequestBuilder(model, processor)
    tower, lm = model.model.visual, model.model.language_model
    stages = {name: StageReport() for name in STAGES}
    report = ProfileReport(
        model=model_name, request=spec.describe(),
        vision=vision.to_dict() if vision else None, llm=llm.to_dict() if llm else None,
        provenance={**provenance(device), "dtype": str(dtype).removeprefix("torch."),
                    "attn_implementation": model.config._attn_implementation, "batch_size": 1},
        stages=stages,
    )
    handle = ipcv.apply(model, vision=vision, llm=llm) if (vision or llm) else None
    try:
        _measure(model, spec, builder, tower, lm, device, dtype, settings, handle, report)
    finally:
        if handle:
            handle.remove()
    return report


def _measure(model, spec, builder, tower, lm, device, dtype, settings, handle, report) -> None:
    stages = report.stages
    request = _to_device(builder(spec), device, dtype)
    generate_kwargs = dict(max_new_tokens=settings.max_new_tokens, min_new_tokens=settings.max_new_tokens,
                           do_sample=False)

    # tokens and analytic FLOPs, from one instrumented prefill forward
    with _stage("prefill", request), torch.inference_mode():
        with record_vision_layout(tower) as vis_layout, record_llm_layout(lm, model.lm_head) as llm_layout:
            out = model(**request, logits_to_keep=1)
    vstats = handle.vision_stats if handle else None
    lstats = handle.llm_stats if handle else None
    grid = request.get("image_grid_thw", request.get("video_grid_thw"))
    patches = int(grid.prod(dim=-1).sum())
    stages["vision"].tokens = {
        "patches_in": patches,
        "kept_after_prune_layer": vstats.total_kept if vstats else patches,
        "to_merger": patches,
        "visual_tokens_out": patches // 4,
    }
    vision_ids = torch.tensor([model.config.image_token_id, model.config.video_token_id], device=device)
    n_visual = int(torch.isin(request["input_ids"], vision_ids).sum())
    stages["prefill"].tokens = {
        "sequence": int(request["input_ids"].shape[1]),
        "visual_tokens_in": n_visual,
        "visual_tokens_kept": lstats.image_tokens_kept[0] if lstats else n_visual,
        "sequence_after_pruning": lstats.sequence_kept if lstats else int(request["input_ids"].shape[1]),
    }
    stages["decode"].tokens = {"generated": settings.max_new_tokens}
    report.kv_cache_bytes = lstats.kv_cache_bytes if lstats else cache_bytes(getattr(out, "past_key_values", None))
    del out
    stages["vision"].flops["analytic"] = vision_flops(
        VisionDims.from_config(tower.config), vis_layout, vstats.neighbor_search_flops if vstats else 0
    )["total"]
    stages["prefill"].flops["analytic"] = prefill_flops(
        LLMDims.from_config(lm.config), llm_layout, lstats.selection_flops if lstats else 0
    )["total"]
    if settings.count_flops:
        _other_flop_routes(model, request, report)
    else:
        report.not_measured.append("fvcore and FlopCounterMode FLOPs: switched off (count_flops=False)")

    # latency: whole requests (preprocess + generate), stages from forward hooks
    samples: dict[str, list[float]] = {name: [] for name in STAGES}
    per_token: list[float] = []
    with StageClock({"vision": tower, "llm": lm}, device) as clock:
        for run in range(settings.warmup + settings.repeats):
            _sync(device)
            t0 = time.perf_counter()
            built = builder(spec)
            t1 = time.perf_counter()
            with _stage("decode", request), torch.inference_mode():
                model.generate(**_to_device(built, device, dtype), **generate_kwargs)
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
    clock_label = clock_name(device)
    for name, values in samples.items():
        label = "cpu-perf_counter" if name in ("preprocess", "e2e") else clock_label
        stages[name].time = summarize(values, settings.warmup, label)
    report.decode_per_token = summarize(per_token, settings.warmup, clock_label) if per_token else None

    if handle and handle.vision_config is not None:
        handle.time_overhead = True
        parts: list[dict[str, float]] = []
        with torch.inference_mode():
            for _ in range(settings.repeats):
                tower(request.get("pixel_values", request.get("pixel_values_videos")), grid_thw=grid)
                parts.append(handle.vision_stats.overhead_ms)
        handle.time_overhead = False
        report.ipcv_overhead_ms = {k: sorted(p[k] for p in parts)[len(parts) // 2] for k in parts[0]}

    if device.type == "cuda":
        with _PeakMemory({"vision": tower, "llm": lm}, device) as peaks, torch.inference_mode():
            model.generate(**request, **generate_kwargs)
        stages["vision"].peak_memory_bytes = max(peaks.peaks["vision"])
        stages["prefill"].peak_memory_bytes = peaks.peaks["llm"][0]
        stages["decode"].peak_memory_bytes = max(peaks.peaks["llm"][1:], default=None)
    else:
        report.not_measured.append("peak memory: not measured on CPU (no allocator statistics)")


def _other_flop_routes(model: nn.Module, request: dict[str, torch.Tensor], report: ProfileReport) -> None:
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

