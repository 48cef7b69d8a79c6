"""An evaluation task of a sweep run by lmms-eval (``backend: lmms-eval`` in a profile).

The worker's model, already in the cell's setting (patched by the executor, or uncompressed for
the reference), answers through ``IPCVModel.around``; ``simple_evaluate`` runs the task, its own
prompts, filters, ``process_results`` and aggregations. Row columns (``lmms_<name>`` with ``name``
the task name, lower case, other characters as ``_``):

- ``lmms_<name>_<metric>``: every number lmms-eval reports for the task (a filter other than
  ``none`` is appended, e.g. ``lmms_ai2d_exact_match_flexible_extract``), on its own scale;
- ``lmms_<name>``: the headline, the spec's ``metric`` (default: the task's first) divided by the
  spec's ``scale`` (100 for tasks that report percent) so that it is a share like ``acc_<task>``;
- ``lmms_<name>_samples``; ``lmms_<name>_answer_match``: share of answers equal to the uncompressed
  model's (fidelity on the task).

Per-sample records (answer, target, the headline metric's per-sample score where it is a number)
go beside the row as the study's own tasks' do.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from torch import nn

from pipeline.evaluation import DataError, slug, task_key
from pipeline.evaluation.runner import Answers

_MANAGERS: dict[tuple[str, ...], Any] = {}


def column_name(task: str) -> str:
    """``lmms_<task>`` with the task name lower case, anything but letters and digits as ``_``."""
    return task_key({"task": task, "backend": "lmms-eval"})


def task_manager(include_path: str | None) -> Any:
    """lmms-eval's task index (its shipped tasks, plus the folder given), built once per process:
    indexing reads every task YAML (seconds)."""
    import lmms_eval.models  # noqa: F401 (sets lmms-eval's log level, WARNING, before the index logs each file)
    from lmms_eval.tasks import TaskManager

    key = (include_path,) if include_path else ()
    if key not in _MANAGERS:
        _MANAGERS[key] = TaskManager("WARNING", include_path=include_path)
    return _MANAGERS[key]


def check_task(task: dict[str, Any]) -> None:
    """Fail before a sweep starts when lmms-eval is missing or does not know the task."""
    try:
        manager = task_manager(task.get("include_path"))
    except ImportError as err:
        raise DataError(f"task {task['task']!r} has backend lmms-eval, which is not installed "
                         f"(pip install -e \".[lmms]\"): {err}") from None
    if task["task"] not in manager.all_tasks:
        where = f" (include_path {task['include_path']})" if task.get("include_path") else ""
        raise DataError(f"lmms-eval has no task {task['task']!r}{where}; `lmms-eval --tasks list` lists them")


@dataclass
class TaskResult:
    """What one lmms-eval task gave: row columns, per-sample records, the answers in doc order."""

    columns: dict[str, float] = field(default_factory=dict)
    records: list[dict[str, Any]] = field(default_factory=list)
    answers: Answers = field(default_factory=lambda: Answers(""))


def evaluate_task(model: nn.Module, builder: Any, task: dict[str, Any], resolution: int,
                  reference: Answers | None = None) -> TaskResult:
    """Run one lmms-eval task (a profile task's cell config) on ``model`` as it is now."""
    from lmms_eval.evaluator import simple_evaluate

    from pipeline.lmms.model import IPCVModel

    lm = IPCVModel.around(model, builder, resolution, task["frames"])
    with tempfile.TemporaryDirectory(prefix="ipcv-lmms-") as scratch:  # submission files some tasks write
        results = simple_evaluate(model=lm, tasks=[task["task"]], limit=task.get("limit"),
                                  gen_kwargs=task.get("gen_kwargs"), task_manager=task_manager(task.get("include_path")),
                                  log_samples=True, bootstrap_iters=0, verbosity="WARNING", process_docs_parallel=1,
                                  cli_args=SimpleNamespace(output_path=scratch, process_with_media=False))
    return to_result(task, results, reference)


def to_result(task: dict[str, Any], results: dict[str, Any], reference: Answers | None) -> TaskResult:
    """Row columns and records from ``simple_evaluate``'s results (leaf tasks of a group: each its
    own columns; the headline and answers are the first leaf's)."""
    key = column_name(task["task"])
    out = TaskResult(answers=Answers(key))
    samples = results.get("samples") or {}
    if not samples:
        raise RuntimeError(f"lmms-eval returned no samples for task {task['task']!r}")
    for number, (leaf, logged) in enumerate(samples.items()):
        prefix = key if len(samples) == 1 else column_name(leaf)
        metrics = _metrics(results["results"].get(leaf, {}))
        out.columns.update({f"{prefix}_{name}": value for name, (value, _) in metrics.items()})
        if number:
            continue
        headline = slug(task["metric"]) if task.get("metric") else next(iter(metrics), None)
        if headline not in metrics:
            raise RuntimeError(f"lmms-eval task {leaf!r} reported no metric {task.get('metric')!r}; "
                               f"it reported {', '.join(metrics) or 'none'}")
        value, metric_name = metrics[headline]
        out.columns[key] = value / task.get("scale", 1.0)
        out.columns[f"{key}_samples"] = len(logged)
        logged = sorted(logged, key=lambda s: s["doc_id"])
        out.answers.texts = [_answer(s) for s in logged]
        if reference is not None:
            same = [a == b for a, b in zip(out.answers.texts, reference.texts)]
            out.columns[f"{key}_answer_match"] = sum(same) / len(same)
        for i, sample in enumerate(logged):
            out.records.append({
                "task": key, "sample_id": str(sample["doc_id"]), "row": int(sample["doc_id"]) + 1,
                "category": _category(sample), "answer": out.answers.texts[i], "truth": str(sample.get("target")),
                "score": _score(sample.get(metric_name)),
                "reference_answer": reference.texts[i] if reference is not None else None,
            })
    return out


def _metrics(values: dict[str, Any]) -> dict[str, tuple[float, str]]:
    """``{"pope_accuracy,none": 0.5, "pope_accuracy_stderr,none": "N/A", "alias": ...}`` ->
    ``{"pope_accuracy": (0.5, "pope_accuracy")}``: numbers only, no standard errors, a filter other
    than none appended to the column key; with the metric's own name (what samples log)."""
    out = {}
    for name, value in values.items():
        metric, _, filter_name = name.partition(",")
        if "_stderr" in metric or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        suffix = "" if filter_name in ("", "none") else "_" + filter_name
        out[slug(metric + suffix)] = (float(value), metric)
    return out


def _answer(sample: dict[str, Any]) -> str:
    filtered = sample.get("filtered_resps")
    while isinstance(filtered, list) and filtered:
        filtered = filtered[0]
    return str(filtered) if filtered is not None else ""


def _score(value: Any) -> float | None:
    """A sample's score where the metric logs one (a number, or a record with a numeric score)."""
    if isinstance(value, dict):
        value = value.get("score")
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _category(sample: dict[str, Any]) -> str | None:
    doc = sample.get("doc") or {}
    value = doc.get("category") if isinstance(doc, dict) else None
    return str(value) if value is not None else None
