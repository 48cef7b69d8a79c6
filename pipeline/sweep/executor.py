"""The cell executor: one loaded model, measuring that model's cells in turn.

The same ``CellExecutor`` runs every cell, whichever way it is driven: as a Ray actor
(``ModelWorker``, one per GPU or GPU group, or per CPU slot) in the sweep, inline in one process
(``run_inline``: the gate, ``ipcv-study run --executor local``), and for ``ipcv-study evaluate``.
A cell that raises (a CUDA OOM, a bad setting) returns a ``failed`` row with its error; only a
dead worker makes the Ray driver retry a cell. A model that cannot be loaded fails each of its
cells with the load error.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

import ipcv
from pipeline.evaluation import runner as evaluation_runner
from pipeline.evaluation import task_key
from pipeline.evaluation.synthetic import write_synthetic
from pipeline.evaluation.tasks import Sample, Task, get_task
from pipeline.measure import fidelity
from pipeline.measure.stages import MeasureSettings, compressed, measure_request
from pipeline.measure.time_ratios import RatioEstimate, stage_time_ratios
from pipeline.models import RequestSpec, family_of, load_model, load_processor, synthetic_spec, to_device
from pipeline.sweep.grid import Cell, InputSpec
from pipeline.sweep.rows import base_row, report_columns
from pipeline.sweep.spec import ModelSpec


def device_for(model: ModelSpec) -> str:
    return "cuda" if model.gpus > 0 and torch.cuda.is_available() else "cpu"


def request_spec(inp: InputSpec) -> RequestSpec:
    """The synthetic request of a grid input."""
    return synthetic_spec(inp.resolution, images=inp.count, video_frames=inp.frames, prompt=inp.prompt)


def configs(cell: Cell) -> tuple[ipcv.IPCVConfig | None, ipcv.LLMPruneConfig | None]:
    """The method configs a cell carries."""
    return (ipcv.IPCVConfig(**cell.vision) if cell.vision else None,
            ipcv.LLMPruneConfig(**cell.llm) if cell.llm else None)


class CellExecutor:
    """Holds one loaded model (``device``: default from the model spec's ``gpus``) and measures
    cells on it; every method a driver calls is public."""

    def __init__(self, model: ModelSpec, device: str | None = None) -> None:
        self.spec = model
        self.loads = 0
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}"
        self.model = None
        self.load_error: str | None = None
        try:
            self.model = load_model(model.name, dtype=model.dtype, attn_implementation=model.attn_implementation,
                                    device=device or device_for(model), seed=model.seed, weights=model.weights,
                                    overrides=model.overrides, gpus=max(1, int(model.gpus)))
            self.loads += 1
        except Exception as err:  # a bad checkpoint fails its cells, not the sweep
            self.load_error = f"model load failed: {type(err).__name__}: {err}"
        self._task_samples: dict[str, tuple[Task, list[Sample]]] = {}
        self._scratch: tempfile.TemporaryDirectory | None = None
        # real checkpoints: their own processor when it loads; else the family's request builder
        self.processor = load_processor(model.name, weights=model.weights) if self.model is not None else None
        self.builder = family_of(self.model).request_builder(self.model, self.processor) if self.model is not None else None

    def close(self) -> None:
        """Remove what this executor rendered to temporary storage (synthetic benchmarks): a
        worker that is killed afterwards leaves nothing behind."""
        if self._scratch is not None:
            self._scratch.cleanup()
            self._scratch = None

    def info(self) -> dict[str, Any]:
        return {"worker_id": self.worker_id, "loads": self.loads, "model": self.spec.name}

    def request(self, inp: InputSpec) -> dict[str, torch.Tensor]:
        """The built request of a grid input, on the model's device."""
        return to_device(self.builder(request_spec(inp)), self.model)

    def reference(self, inp: InputSpec, max_new_tokens: int, evaluation: dict[str, Any] | None = None
                  ) -> fidelity.Outputs | None:
        """Uncompressed outputs for one input, and its answers to the benchmark samples at that
        input's resolution (computed once per model x input by the driver)."""
        if self.model is None:
            return None
        outputs = fidelity.collect(self.model, self.request(inp), max_new_tokens)
        if evaluation:
            try:
                outputs.task_answers = {task_key(t): self.answers(t, inp.resolution, evaluation["max_new_tokens"])
                                        for t in evaluation["tasks"]}
            except Exception as err:  # the cells report it; the profile-request fidelity stays usable
                outputs.task_error = f"{type(err).__name__}: {err}"
        return outputs

    def task_samples(self, task: dict[str, Any]) -> tuple[Task, list[Sample]]:
        """A task's samples, loaded once per executor (synthetic ones rendered into a temp folder)."""
        key = json.dumps(task, sort_keys=True)
        if key not in self._task_samples:
            spec = get_task(task["task"])
            source = task["source"]
            if source == "synthetic":  # rendered once per executor, removed with it
                if self._scratch is None:
                    self._scratch = tempfile.TemporaryDirectory(prefix="ipcv-synthetic-")
                folder = Path(self._scratch.name) / f"{task['task']}-{len(self._task_samples)}"
                source = str(write_synthetic(task["task"], folder, task["limit"], seed=task["seed"]))
            self._task_samples[key] = (spec, spec.load(source, split=task.get("split"), limit=task.get("limit"),
                                                       media_root=task.get("media_root")))
        return self._task_samples[key]

    def answers(self, task: dict[str, Any], resolution: int, max_new_tokens: int,
                on_sample: Callable[[], None] | None = None) -> evaluation_runner.Answers:
        """The model's answers (as currently patched) to a task's samples at ``resolution``."""
        if task.get("backend") == "lmms-eval":
            from pipeline.lmms.backend import evaluate_task

            return evaluate_task(self.model, self.builder, task, resolution).answers
        spec, samples = self.task_samples(task)
        return evaluation_runner.answer_all(self.model, self.builder, spec, samples, resolution, task["frames"],
                                            max_new_tokens, on_sample)

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

    def time_ratios(self, cell: Cell, repeats: int) -> dict[str, RatioEstimate]:
        """Stage time with the cell's method over without it, from interleaved runs (the gate)."""
        vision, llm = configs(cell)
        return stage_time_ratios(self.model, self.request(cell.input), vision, llm, repeats)

    def _measure(self, cell: Cell, reference: fidelity.Outputs | None) -> dict[str, Any]:
        m = cell.measurement
        vision, llm = configs(cell)
        settings = MeasureSettings(warmup=m["warmup"], repeats=m["repeats"], max_new_tokens=m["max_new_tokens"],
                                   count_flops=m["count_flops"])
        report = measure_request(self.model, request_spec(cell.input), model_name=cell.model.name, vision=vision,
                                 llm=llm, settings=settings, processor=self.processor)
        out = report_columns(report)
        if reference is not None:
            with compressed(self.model, vision, llm):
                run = fidelity.collect(self.model, self.request(cell.input), m["max_new_tokens"])
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
        headline, agreement = [], []
        with compressed(self.model, vision, llm):
            for task in cell.evaluation["tasks"]:
                key = task_key(task)
                ref = reference.task_answers.get(key) if reference is not None else None
                if task.get("backend") == "lmms-eval":  # lmms-eval's prompts, scoring and columns
                    from pipeline.lmms.backend import evaluate_task

                    result = evaluate_task(self.model, self.builder, task, cell.input.resolution, ref)
                    out.update(result.columns)
                    records += result.records
                    headline.append(out[key])
                    agreement += [out[f"{key}_answer_match"]] if ref is not None else []
                    continue
                spec, samples = self.task_samples(task)
                answers = self.answers(task, cell.input.resolution, cell.evaluation["max_new_tokens"])
                out.update(evaluation_runner.score(spec, samples, answers, ref))
                records += evaluation_runner.predictions(spec, samples, answers, ref)
                headline.append(out[f"acc_{key}"])
                agreement += [out[f"fidelity_{key}_answer_match"]] if ref is not None else []
        out["accuracy"] = sum(headline) / len(headline)
        if reference is not None and agreement:
            out["fidelity_benchmark_answer_match"] = sum(agreement) / len(agreement)
        out["predictions"] = records
        return out


def run_inline(cells: list[Cell], max_new_tokens: int) -> Iterator[tuple[CellExecutor, Cell, dict[str, Any]]]:
    """Run cells in this process, no Ray: one executor per model (its model loaded once, released
    before the next model loads), one uncompressed reference per model x input. Yields each
    finished row with its cell and executor."""
    by_model: dict[ModelSpec, list[Cell]] = {}
    for cell in cells:
        by_model.setdefault(cell.model, []).append(cell)
    for mine in by_model.values():
        executor = CellExecutor(mine[0].model)
        references: dict[tuple, Any] = {}
        for cell in mine:
            if cell.reference_key not in references:
                references[cell.reference_key] = executor.reference(cell.reference_input, max_new_tokens,
                                                                    cell.evaluation)
            yield executor, cell, executor.run(cell, references[cell.reference_key])
        executor.close()
        del executor, references


def _node_id() -> str | None:
    try:
        import ray

        return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
    except Exception:
        return None


try:
    import ray

    ModelWorker = ray.remote(CellExecutor)
except ImportError:  # the study's Ray parts need ray; the rest does not
    ModelWorker = None
