"""Answering benchmark samples with a (possibly patched) model, and scoring the answers.

Each sample is sent as one request at the cell's resolution: an image is scaled to about
``resolution``² pixels keeping its aspect ratio (sides multiples of the family's patch grid, 28
for Qwen-VL), video frames to
``resolution`` x ``resolution``. Answers are greedy, up to ``max_new_tokens``, decoded with the
checkpoint's own processor (tiny presets: their word tokenizer).

Accuracy is the benchmark's own score against its ground truth. Fidelity on the benchmark is the
agreement of a compressed model's answers (exact text) and first answer tokens with the
uncompressed model's on the same samples, at the input the compressed run stands in for.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image
from torch import nn

from pipeline.evaluation.tasks import Sample, Task
from pipeline.models import RequestSpec, family_of, supported_requirements, to_device
from pipeline.models.requests import RequestBuilder


@dataclass
class Answers:
    """A model's answers to a task's samples."""

    task: str
    texts: list[str] = field(default_factory=list)
    first_tokens: list[int] = field(default_factory=list)


def fit_pixels(image: Image.Image, resolution: int, multiple: int | None = None) -> Image.Image:
    """``image`` scaled to about ``resolution``² pixels, aspect kept, sides multiples of
    ``multiple`` (default: the patch grid every supported family accepts)."""
    m = multiple or supported_requirements().resolution_multiple
    width, height = image.size
    scale = resolution / math.sqrt(width * height)
    size = (max(m, round(width * scale / m) * m), max(m, round(height * scale / m) * m))
    return image if image.size == size else image.resize(size, Image.Resampling.BICUBIC)


def request_for(task: Task, sample: Sample, resolution: int, frames: int, multiple: int | None = None) -> RequestSpec:
    if task.video:
        clip = [f.resize((resolution, resolution), Image.Resampling.BICUBIC) for f in task.frames(sample, frames)]
        return RequestSpec([], clip, sample.prompt, resolution)
    return RequestSpec([fit_pixels(i, resolution, multiple) for i in task.images(sample)], [], sample.prompt, resolution)


def answer(model: nn.Module, builder: RequestBuilder, spec: RequestSpec, max_new_tokens: int) -> tuple[str, int]:
    """The greedy answer's text and its first token."""
    request = to_device(builder(spec), model)
    with torch.inference_mode():
        out = model.generate(**request, max_new_tokens=max_new_tokens, do_sample=False)
    new = out[0, request["input_ids"].shape[1]:].tolist()
    return builder.decode(new), (new[0] if new else -1)


def answer_all(model: nn.Module, builder: RequestBuilder, task: Task, samples: list[Sample], resolution: int,
               frames: int, max_new_tokens: int, on_sample: Callable[[], None] | None = None) -> Answers:
    out = Answers(task.name)
    multiple = family_of(model).requirements.resolution_multiple
    for sample in samples:
        text, first = answer(model, builder, request_for(task, sample, resolution, frames, multiple), max_new_tokens)
        out.texts.append(text)
        out.first_tokens.append(first)
        if on_sample:
            on_sample()
    return out


def score(task: Task, samples: list[Sample], answers: Answers, reference: Answers | None) -> dict[str, float]:
    """Row columns for one task: ``acc_<task>[_<metric>]``, ``fidelity_<task>_*``, sample count."""
    prefix = f"acc_{task.name}"
    metrics = task.metrics(samples, answers.texts)
    row: dict[str, float] = {prefix: metrics.pop("accuracy"), f"{prefix}_samples": len(samples)}
    row.update({f"{prefix}_{k}": v for k, v in metrics.items()})
    if reference is not None:
        n = len(samples)
        row[f"fidelity_{task.name}_answer_match"] = sum(a == b for a, b in zip(answers.texts, reference.texts)) / n
        row[f"fidelity_{task.name}_top1_agreement"] = sum(
            a == b for a, b in zip(answers.first_tokens, reference.first_tokens)) / n
    return row


def predictions(task: Task, samples: list[Sample], answers: Answers, reference: Answers | None) -> list[dict[str, Any]]:
    """One record per sample (kept next to the cell's row, so every answer can be inspected)."""
    out = []
    for i, (sample, text) in enumerate(zip(samples, answers.texts)):
        out.append({
            "task": task.name, "sample_id": sample.id, "row": sample.row, "category": sample.category,
            "answer": text, "truth": str(sample.truth), "score": task.score(sample, text),
            "reference_answer": reference.texts[i] if reference else None,
        })
    return out
