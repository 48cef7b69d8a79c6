"""Running cells: a ``CellRunner`` holds one loaded model and measures that model's cells in turn.

``ModelWorker`` is the same runner as a Ray actor (one per GPU or GPU group, or per CPU slot).
A cell that raises (a CUDA OOM, a bad setting) returns a ``failed`` row with its error; only a
dead worker makes the driver retry a cell. A model that cannot be loaded fails each of its
cells with the load error.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import torch

import ipcv
from pipeline import fidelity
from pipeline.evaluation import runner as evaluation_runner
from pipeline.evaluation.synthetic import write_synthetic
from pipeline.evaluation.tasks import Sample, Task, get_task
from pipeline.grid import Cell, InputSpec
from pipeline.models import load_model
from pipeline.profiler import ProfileSettings, profile
from pipeline.requests import RequestBuilder, synthetic_spec
from pipeline.spec import ModelSpec


def _device(model: ModelSpec) -> str:
    return "cuda" if model.gpus > 0 and torch.cuda.is_available() else "cpu"


def _spec_of(inp: InputSpec):
    return synthetic_spec(inp.resolution, images=inp.count, video_frames=inp.frames, prompt=inp.prompt)


class CellRunner:
    def __init__(self, model: ModelSpec) -> None:
        self.spec = model
        self.loads = 0
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}"
        self.model = None
        self.load_error: str | None = None
        try:
            self.model = load_model(model.name, dtype=model.dtype, attn_implementation=model.attn_implementation,
                                    device=_device(model), seed=model.seed)
            self.loads += 1
        except Exception as err:  # a bad checkpoint fails its cells, not the sweep
            self.load_error = f"model load failed: {type(err).__name__}: {err}"
        self._task_samples: dict[str, tuple[Task, list[Sample]]] = {}
        self._scratch: tempfile.TemporaryDirectory | None = None
        self.processor = None  # real checkpoints: set from AutoProcessor when available
        if self.model is not None and not _is_preset(model.name):
            try:
                from transformers import AutoProcessor

                self.processor = AutoProcessor.from_pretrained(model.name)
            except Exception:  # fall back to the built-in request builder
                self.processor = None

    def info(self) -> dict[str, Any]:
        return {"worker_id": self.worker_id, "loads": self.loads, "model": self.spec.name}

    def reference(self, inp: InputSpec, max_new_tokens: int, evaluation: dict[str, Any] | None = None
                  ) -> fidelity.Outputs | None:
        """Uncompressed outputs for one input, and its answers to the benchmark samples at that
        input's resolution (computed once per model x input by the driver)."""
        if self.model is None:
            return None
        outputs = fidelity.collect(self.model, self._request(inp), max_new_tokens)
        if evaluation:
            try:
                outputs.task_answers = {t["task"]: self._answers(t, inp, evaluation["max_new_tokens"])
                                        for t in evaluation["tasks"]}
            except Exception as err:  # the cells report it; the profile-request fidelity stays usable
                outputs.task_error = f"{type(err).__name__}: {err}"
        return outputs

    def _samples(self, task: dict[str, Any]) -> tuple[Task, list[Sample]]:
        """A task's samples, loaded once per worker (synthetic ones rendered into a temp folder)."""
        key = json.dumps(task, sort_keys=True)
        if key not in self._task_samples:
            spec = get_task(task["task"])
            source = task["source"]
            if source == "synthetic":  # rendered once per worker, removed with it
                if self._scratch is None:
                    self._scratch = tempfile.TemporaryDirectory(prefix="ipcv-synthetic-")
                folder = Path(self._scratch.name) / f"{task['task']}-{len(self._task_samples)}"
                source = str(write_synthetic(task["task"], folder, task["limit"], seed=task["seed"]))
            self._task_samples[key] = (spec, spec.load(source, split=task.get("split"), limit=task.get("limit"),
                                                       media_root=task.get("media_root")))
        return self._task_samples[key]

    def _answers(self, task: dict[str, Any], inp: InputSpec, max_new_tokens: int) -> evaluation_runner.Answers:
        spec, samples = self._samples(task)
        return evaluation_runner.answer_all(self.model, RequestBuilder(self.model, self.processor), spec, samples,
                                            inp.resolution, task["frames"], max_new_tokens)

    def _request(self, inp: InputSpec) -> dict[str, torch.Tensor]:
        params = next(self.model.parameters())
        built = RequestBuilder(self.model, self.processor)(_spec_of(inp))
        return {k: (v.to(params.device, params.dtype) if k.startswith("pixel_values") else v.to(params.device))
                for k, v in built.items()}

    def run(self, cell: Cell, reference: fidelity.Outputs | None, attempt: int = 1) -> dict[str, Any]:
        started = time.time()
        row = base_row(cell)
        row.update(worker_id=self.worker_id, worker_loads=self.loads, attempts=attempt,
                   started_at=started, node_id=_node_id())
        try:
            if self.model is None:
                raise RuntimeError(self.load_error)
            row.update(self._measure(cell, reference))
            row["status"], row["error"] = "ok", None
        except Exception as err:
            row["status"] = "failed"
            kind = "CUDA out of memory" if isinstance(err, torch.cuda.OutOfMemoryError) else type(err).__name__
            row["error"] = f"{kind}: {err}"[:2000]
            row["traceback"] = traceback.format_exc()[-4000:]
        row["finished_at"] = time.time()
        row["duration_s"] = row["finished_at"] - started
        return row

    def _measure(self, cell: Cell, reference: fidelity.Outputs | None) -> dict[str, Any]:
        m = cell.measurement
        vision = ipcv.IPCVConfig(**cell.vision) if cell.vision else None
        llm = ipcv.LLMPruneConfig(**cell.llm) if cell.llm else None
        settings = ProfileSettings(warmup=m["warmup"], repeats=m["repeats"], max_new_tokens=m["max_new_tokens"],
                                   count_flops=m["count_flops"])
        report = profile(self.model, _spec_of(cell.input), model_name=cell.model.name, vision=vision, llm=llm,
                         settings=settings, processor=self.processor)
        out = flatten_report(report)
        if reference is not None:
            handle = ipcv.apply(self.model, vision=vision, llm=llm) if (vision or llm) else None
            try:
                run = fidelity.collect(self.model, self._request(cell.input), m["max_new_tokens"])
            finally:
                if handle:
                    handle.remove()
            out.update(fidelity.compare(reference, run))
        if cell.evaluation:
            out.update(self._evaluate(cell, vision, llm, reference))
        return out

    def _evaluate(self, cell: Cell, vision, llm, reference: fidelity.Outputs | None) -> dict[str, Any]:
        """Benchmark accuracy of the cell's setting, and its answers' agreement with the
        uncompressed model's (fidelity on the benchmark)."""
        if reference is not None and reference.task_error:
            raise RuntimeError(f"benchmark reference failed: {reference.task_error}")
        out: dict[str, Any] = {}
        records: list[dict[str, Any]] = []
        handle = ipcv.apply(self.model, vision=vision, llm=llm) if (vision or llm) else None
        try:
            for task in cell.evaluation["tasks"]:
                spec, samples = self._samples(task)
                answers = self._answers(task, cell.input, cell.evaluation["max_new_tokens"])
                ref = reference.task_answers.get(task["task"]) if reference is not None else None
                out.update(evaluation_runner.score(spec, samples, answers, ref))
                records += evaluation_runner.predictions(spec, samples, answers, ref)
        finally:
            if handle:
                handle.remove()
        headline = [out[f"acc_{t['task']}"] for t in cell.evaluation["tasks"]]
        out["accuracy"] = sum(headline) / len(headline)
        if reference is not None:
            agreement = [out[f"fidelity_{t['task']}_answer_match"] for t in cell.evaluation["tasks"]]
            out["fidelity_benchmark_answer_match"] = sum(agreement) / len(agreement)
        out["predictions"] = records
        return out


def _node_id() -> str | None:
    try:
        import ray

        return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
    except Exception:
        return None


def _is_preset(name: str) -> bool:
    from pipeline.models import PRESETS

    return name in PRESETS


def base_row(cell: Cell) -> dict[str, Any]:
    """The config columns of a cell's row."""
    vision, llm = cell.vision or {}, cell.llm or {}
    return {
        "cell_id": cell.id,
        "model": cell.model.name,
        "dtype": cell.model.dtype,
        "attn_implementation": cell.model.attn_implementation,
        "gpus_per_worker": cell.model.gpus,
        "input_kind": cell.input.kind,
        "resolution": cell.input.resolution,
        "group_resolution": cell.input.group_resolution,
        "images": cell.input.count if cell.input.kind == "image" else 0,
        "frames": cell.input.frames,
        "method": cell.method,
        **{f"ipcv_{k}": vision.get(k) for k in ("prune_layer", "reduction_ratio", "as_layers", "neighbors",
                                                 "selection", "restore", "budget", "neighbor_scope")},
        **{f"llm_{k}": llm.get(k) for k in ("method", "layer", "reduction_ratio")},
        "weights": "random (tiny preset)" if _is_preset(cell.model.name) else "checkpoint",
        "status": "pending",
        "error": None,
    }


def flatten_report(report) -> dict[str, Any]:
    """Metric columns, each named with its unit."""
    out: dict[str, Any] = {}
    for name, stage in report.stages.items():
        if stage.time is not None:
            out[f"{name}_ms"] = stage.time.median_ms
            out[f"{name}_ms_p10"] = stage.time.p10_ms
            out[f"{name}_ms_p90"] = stage.time.p90_ms
        out[f"{name}_peak_bytes"] = stage.peak_memory_bytes
        for route, value in stage.flops.items():
            out[f"{name}_flops" if route == "analytic" else f"{name}_flops_{route}"] = value
    out["decode_ms_per_token"] = report.decode_per_token.median_ms if report.decode_per_token else None
    out["kv_cache_bytes"] = report.kv_cache_bytes
    v, p = report.stages["vision"].tokens, report.stages["prefill"].tokens
    out["vision_tokens_in"] = v.get("patches_in")
    out["vision_tokens_kept"] = v.get("kept_after_prune_layer")
    out["llm_visual_tokens_in"] = p.get("visual_tokens_in")
    out["llm_visual_tokens_kept"] = p.get("visual_tokens_kept")
    out["total_flops"] = (out.get("vision_flops") or 0) + (out.get("prefill_flops") or 0)
    out["clock"] = report.stages["vision"].time.clock if report.stages["vision"].time else None
    prov = report.provenance
    out.update(device=prov.get("device"), device_type=prov.get("device_type"), torch_version=prov.get("torch"),
               transformers_version=prov.get("transformers"), ipcv_version=ipcv.__version__)
    out["not_measured"] = "; ".join(report.not_measured) or None
    return out


try:
    import ray

    ModelWorker = ray.remote(CellRunner)
except ImportError:  # the study's Ray parts need ray; the rest does not
    ModelWorker = None
