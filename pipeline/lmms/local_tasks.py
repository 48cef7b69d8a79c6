"""The synthetic benchmark as local lmms-eval tasks: lmms-eval's own task definitions (prompts,
``process_results``, metrics and aggregations), read from local files instead of the hub.

Each task YAML ``include``s the installed lmms-eval task by its absolute path and replaces only
where the data come from (``dataset_path: parquet``, ``data_files`` beside the YAML) and, where the
original writes a submission file for a leaderboard, the metric list. The rows are the synthetic
benchmark's (``pipeline/evaluation/synthetic.py``, answers known from the pixels) in the layout the
lmms-eval task reads: Parquet with the ``datasets`` ``Image`` feature, plus the columns lmms-eval's
``doc_to_text`` needs (MMBench's ``L2-category``, ``source``, ``split``).

Tasks: ``ipcv_synthetic_pope`` (lmms-eval's ``pope``), ``ipcv_synthetic_mmbench``
(``mmbench_en_dev_static``: MMBench's rule-based answer matching, no GPT judge; reported in
percent), ``ipcv_synthetic_textvqa`` (``textvqa_val``: VQA accuracy as ``exact_match``). Run them with
``--include_path <folder>`` (the lmms-eval command) or ``include_path`` (a profile's task).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import yaml

from pipeline.evaluation import synthetic

PREFIX = "ipcv_synthetic_"


class Function(str):
    """A YAML ``!function`` value (lmms-eval imports the named function)."""


class _Dumper(yaml.SafeDumper):
    pass


_Dumper.add_representer(Function, lambda dumper, name: dumper.represent_scalar("!function", str(name)))

# our synthetic task -> (lmms-eval task YAML under lmms_eval/tasks, its test split, metrics kept: the
# original's, less the ones that write a leaderboard submission file)
_ORIGINALS: dict[str, tuple[str, str, list[dict[str, Any]] | None]] = {
    "pope": ("pope/pope.yaml", "test", None),
    "mmbench": ("mmbench/mmbench_en_dev_static.yaml", "dev",
                [{"metric": "gpt_eval_score", "higher_is_better": True,
                  "aggregation": Function("lmms_eval.tasks.mmbench.en_utils.mmbench_aggregate_dev_results_static")}]),
    "textvqa": ("textvqa/textvqa_val.yaml", "validation",
                [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True,
                  "ignore_case": True, "ignore_punctuation": True}]),
}
TASKS = tuple(_ORIGINALS)


def lmms_task_dir() -> Path:
    """The installed lmms-eval's task folder."""
    import lmms_eval.tasks

    return Path(lmms_eval.tasks.__file__).parent


def _rows(task: str, samples: int, seed: int, folder: Path) -> list[dict[str, Any]]:
    """The synthetic rows of ``task`` in the layout lmms-eval's task reads."""
    rng = np.random.default_rng([seed, list(synthetic.FILES).index(task)])
    if task == "pope":
        return synthetic.pope_rows(samples, rng, 224)  # already POPE's hub layout
    if task == "mmbench":
        rows = synthetic.mmbench_rows(samples, rng, 224)
        return [{**r, "hint": r["hint"] or None, "L2-category": r["category"], "source": "synthetic", "split": "dev"}
                for r in rows]
    rows = synthetic.textvqa_rows(samples, rng, 224, folder)  # images written as files; embed them
    return [{**r, "image": {"bytes": (folder / r["image"]).read_bytes(), "path": r["image"]}} for r in rows]


def _write_parquet(rows: list[dict[str, Any]], path: Path) -> None:
    """Rows to Parquet with ``image`` as the ``datasets`` Image feature (decoded to PIL on load)."""
    import datasets

    data = datasets.Dataset.from_list(rows).cast_column("image", datasets.Image())
    data.to_parquet(str(path))


def write_local_tasks(folder: str | Path, samples: int = 8, seed: int = 0,
                      tasks: tuple[str, ...] = TASKS) -> dict[str, Path]:
    """Write each task's data and YAML under ``folder`` (its ``include_path``); returns the task
    names (``ipcv_synthetic_<task>``) and their YAML files."""
    folder = Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    originals = lmms_task_dir()
    out = {}
    for task in tasks:
        if task not in _ORIGINALS:
            raise ValueError(f"no local lmms-eval task for {task!r}; tasks: {', '.join(_ORIGINALS)}")
        original, split, metrics = _ORIGINALS[task]
        data = folder / f"{PREFIX}{task}.parquet"
        _write_parquet(_rows(task, samples, seed, folder / f"{PREFIX}{task}_media"), data)
        config: dict[str, Any] = {
            "include": str(originals / original),
            "task": f"{PREFIX}{task}",
            "dataset_path": "parquet",
            "dataset_name": None,
            "dataset_kwargs": {"data_files": {split: data.name}},
            "test_split": split,
        }
        if metrics is not None:
            config["metric_list"] = metrics
        path = folder / f"{PREFIX}{task}.yaml"
        path.write_text(yaml.dump(config, Dumper=_Dumper, sort_keys=False))
        out[config["task"]] = path
    return out
