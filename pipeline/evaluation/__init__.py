"""Benchmark accuracy: data in the field's layouts, its prompts and scoring, a synthetic benchmark."""

from __future__ import annotations

from typing import Any

from pipeline.evaluation.sources import DataError
from pipeline.evaluation.tasks import TASKS, get_task


def check_sources(evaluation: dict[str, Any] | None) -> dict[str, int]:
    """Read every real task source once (rows and fields, not media) so a wrong path or a
    malformed row stops a sweep before anything runs; returns the sample count per task."""
    counts: dict[str, int] = {}
    for task in (evaluation or {}).get("tasks", []):
        if task["source"] == "synthetic":
            counts[task["task"]] = task["limit"]
            continue
        samples = get_task(task["task"]).load(task["source"], split=task.get("split"), limit=task.get("limit"),
                                              media_root=task.get("media_root"))
        counts[task["task"]] = len(samples)
    return counts


__all__ = ["DataError", "TASKS", "check_sources", "get_task"]
