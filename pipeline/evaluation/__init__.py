"""Benchmark accuracy: data in the field's layouts, its prompts and scoring, a synthetic benchmark."""

from __future__ import annotations

import re
from typing import Any

from pipeline.evaluation.sources import DataError
from pipeline.evaluation.tasks import TASKS, get_task


def task_key(task: dict[str, Any]) -> str:
    """What a task's columns and answers are keyed by: the study's own task name (``acc_<key>``),
    or ``lmms_<name>`` for an lmms-eval task (so the two never share columns)."""
    if task.get("backend", "own") == "own":
        return task["task"]
    return "lmms_" + slug(task["task"])


def slug(name: str) -> str:
    """``name`` as a column name part: lower case, runs of anything but letters and digits as ``_``."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def check_sources(evaluation: dict[str, Any] | None) -> dict[str, int]:
    """Read every real task source once (rows and fields, not media) so a wrong path or a
    malformed row stops a sweep before anything runs; returns the sample count per task (an
    lmms-eval task: checked to exist, its count is its limit, 0 for all)."""
    counts: dict[str, int] = {}
    for task in (evaluation or {}).get("tasks", []):
        if task.get("backend", "own") == "lmms-eval":
            from pipeline.lmms.backend import check_task

            check_task(task)
            counts[task_key(task)] = task.get("limit") or 0
            continue
        if task["source"] == "synthetic":
            counts[task["task"]] = task["limit"]
            continue
        samples = get_task(task["task"]).load(task["source"], split=task.get("split"), limit=task.get("limit"),
                                              media_root=task.get("media_root"))
        counts[task["task"]] = len(samples)
    return counts


__all__ = ["DataError", "TASKS", "check_sources", "get_task", "slug", "task_key"]
