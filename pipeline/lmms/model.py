"""The lmms-eval models: a study model (preset or checkpoint), patched with IPCV and/or LLM-side
pruning, answering an lmms-eval task's requests.

A thin wrapper over the study's own loading (``pipeline.models.load_model``), request building
(the family's request builder: a checkpoint's processor and chat template, the word tokenizer of
the random-weight presets) and greedy answering (``pipeline.evaluation.runner.answer``), rather
than a subclass of lmms-eval's ``qwen2_vl`` / ``qwen2_5_vl`` wrappers: those load the checkpoint,
processor and tokenizer with ``from_pretrained`` (the presets have no files to load), and under
transformers 5 they need a working torchvision (``qwen_vl_utils``) or decord at import, which a
CPU torch cannot get from the package index (docs/accuracy.md). Answering the study's way also
makes a task's answers the same whether it runs from the lmms-eval command line or in a sweep
worker, where the model is the worker's, already patched for the cell (``IPCVModel.around``).

Each sample is one request (batch size 1): images scaled to about ``resolution``² pixels
(aspect kept, sides multiples of the family's patch grid), a video's ``frames`` frames to
``resolution`` x ``resolution``, as the study's own tasks send them. Decoding is greedy; the
task's ``until`` strings cut the answer, ``max_new_tokens`` bounds it.
"""

from __future__ import annotations

from typing import Any

import torch
from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms
from loguru import logger
from PIL import Image
from torch import nn
from tqdm import tqdm

import ipcv
from pipeline.evaluation.runner import answer, fit_pixels
from pipeline.evaluation.sources import load_video_frames
from pipeline.lmms.args import method_configs
from pipeline.models import RequestSpec, family_of, load_model, load_processor

DEFAULT_MAX_NEW_TOKENS = 128  # what lmms-eval's Qwen-VL wrappers generate when a task sets no limit


class IPCVModel(lmms):
    """An lmms-eval model over a study model. ``model_args``: ``pretrained`` (a preset such as
    ``tiny-qwen2-vl``, a checkpoint folder or hub id), ``device``, ``dtype``, ``attn_implementation``,
    ``weights`` (``random``: a published architecture with seeded random weights), ``seed``,
    ``resolution``, ``frames``, and the method settings of ``pipeline.lmms.args``."""

    is_simple = True
    family_key: str | None = None  # the study family the registered name serves (None: any)

    def __init__(self, pretrained: str = "tiny-qwen2-vl", device: str | None = None, dtype: str | None = None,
                 attn_implementation: str = "sdpa", weights: str = "checkpoint", seed: int = 0,
                 resolution: int = 448, frames: int = 8, batch_size: int | str = 1, **method_args: Any) -> None:
        super().__init__()
        method_args.pop("max_batch_size", None)  # lmms-eval passes its batch options to every model
        vision, llm, unknown = method_configs(method_args)
        if unknown:
            raise TypeError(f"unknown model_args {', '.join(sorted(unknown))} for {type(self).__name__} "
                            "(docs/accuracy.md lists the model_args)")
        _check_batch(batch_size)
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = dtype or ("bfloat16" if device.startswith("cuda") else "float32")
        model = load_model(str(pretrained), dtype=dtype, attn_implementation=attn_implementation, device=device,
                           seed=int(seed), weights=weights)
        family = family_of(model)
        if self.family_key is not None and family.key != self.family_key:
            raise ValueError(f"{pretrained!r} is a {family.label} model; {type(self).__name__} serves "
                             f"{self.family_key} (pick the ipcv_* model of its family)")
        builder = family.request_builder(model, load_processor(str(pretrained), weights=weights))
        self._setup(model, builder, int(resolution), int(frames))
        self.handle = ipcv.apply(model, vision=vision, llm=llm) if vision is not None or llm is not None else None

    @classmethod
    def around(cls, model: nn.Module, builder: Any, resolution: int, frames: int) -> IPCVModel:
        """An lmms-eval model over an already loaded model, patched (or not) by the caller: a sweep
        worker's model in a cell's setting. Nothing is loaded or patched here."""
        self = cls.__new__(cls)
        lmms.__init__(self)
        self._setup(model, builder, resolution, frames)
        self.handle = None
        return self

    def _setup(self, model: nn.Module, builder: Any, resolution: int, frames: int) -> None:
        family = family_of(model)
        family.requirements.check_resolution(resolution)
        family.requirements.check_frames(frames)
        self.model, self.builder, self.resolution, self.frames = model, builder, resolution, frames
        self.multiple = family.requirements.resolution_multiple
        self._warned_sampling = False

    # -- what lmms-eval calls -------------------------------------------------------------------
    def generate_until(self, requests: list[Instance]) -> list[str]:
        out = []
        for request in tqdm(requests, disable=self.rank != 0, desc="Model Responding"):
            context, gen_kwargs, doc_to_visual, doc_id, task, split = request.args
            visuals = doc_to_visual(self.task_dict[task][split][doc_id]) if doc_to_visual else []
            text = self.respond(context, visuals, gen_kwargs or {})
            out.append(text)
            self.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)
        return out

    def respond(self, context: str, visuals: Any, gen_kwargs: dict[str, Any]) -> str:
        """The greedy answer to one request: the task's text and its visuals."""
        settings = dict(gen_kwargs)
        until = settings.pop("until", None)
        until = [until] if isinstance(until, str) else list(until or [])
        max_new_tokens = int(settings.pop("max_new_tokens", DEFAULT_MAX_NEW_TOKENS))
        if not self._warned_sampling and (settings.get("do_sample") or float(settings.get("temperature") or 0) > 0):
            logger.warning("the IPCV models decode greedily; the task's sampling settings are ignored")
            self._warned_sampling = True
        spec = self.request(context.replace("<image>", "").strip(), visuals)
        text, _ = answer(self.model, self.builder, spec, max_new_tokens)
        for stop in until:
            if stop and stop in text:
                text = text[: text.index(stop)]
        return text.strip()

    def request(self, prompt: str, visuals: Any) -> RequestSpec:
        """One request from a task's visuals: PIL images, or one video (a file, a folder of frames)."""
        items = _flatten(visuals)
        videos = [v for v in items if isinstance(v, str)]
        images = [v for v in items if isinstance(v, Image.Image)]
        if len(videos) + len(images) != len(items):
            kinds = sorted({type(v).__name__ for v in items if not isinstance(v, (str, Image.Image))})
            raise TypeError(f"visuals of type {', '.join(kinds)} are not supported (images and videos are)")
        if videos and (images or len(videos) > 1):
            raise ValueError("a request with a video holds that one video alone")
        if videos:
            frames = [f.resize((self.resolution, self.resolution), Image.Resampling.BICUBIC)
                      for f in load_video_frames(videos[0], None, self.frames)]
            return RequestSpec([], frames, prompt, self.resolution)
        if not images:
            raise ValueError("a request without an image or video (text-only tasks are not supported)")
        fitted = [fit_pixels(i.convert("RGB"), self.resolution, self.multiple) for i in images]
        return RequestSpec(fitted, [], prompt, self.resolution)

    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        raise NotImplementedError("the IPCV models answer generate_until tasks only (no loglikelihood)")

    def generate_until_multi_round(self, requests: list[Instance]) -> list[str]:
        raise NotImplementedError("the IPCV models answer generate_until tasks only (no multi-round)")


def _check_batch(batch_size: int | str) -> None:
    if str(batch_size).strip() not in ("1", "None"):
        raise ValueError(f"batch_size must be 1 (each sample is one request), got {batch_size!r}")


def _flatten(visuals: Any) -> list[Any]:
    if visuals is None:
        return []
    if not isinstance(visuals, (list, tuple)):
        return [visuals]
    return [v for item in visuals for v in _flatten(item)]


class IPCVQwen2VL(IPCVModel):
    """``ipcv_qwen2_vl``: Qwen2-VL presets and checkpoints."""

    family_key = "qwen2_vl"


class IPCVQwen2_5VL(IPCVModel):
    """``ipcv_qwen2_5_vl``: Qwen2.5-VL presets and checkpoints."""

    family_key = "qwen2_5_vl"


class IPCVInternVL3(IPCVModel):
    """``ipcv_internvl3``: InternVL3 presets and checkpoints."""

    family_key = "internvl"
