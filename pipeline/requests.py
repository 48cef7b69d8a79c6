"""Requests for the profiler: images or video frames and a prompt, preprocessed as the model needs.

Real checkpoints use their own processor (``AutoProcessor``) with the Qwen chat format. Tiny
presets have no tokenizer to load, so a small deterministic word tokenizer stands in for the text
(text is a few dozen tokens; the vision preprocessing, which the stage measures, is the real
Qwen-VL image processor). Video frames are normalised by the same image processor and grouped
into temporal patches with the Qwen-VL patch layout (``video_patches``), because the library's
video processor needs torchvision.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from pipeline.inputs import image_processor, synthetic_image

PATCH, TEMPORAL, MERGE = 14, 2, 2


@dataclass
class RequestSpec:
    """What to send: ``images`` (PIL) or ``video_frames`` (PIL, an even count), and a prompt."""

    images: list[Image.Image]
    video_frames: list[Image.Image]
    prompt: str
    resolution: int

    def describe(self) -> str:
        if self.video_frames:
            return f"video {len(self.video_frames)} frames {self.resolution}x{self.resolution}"
        return f"{len(self.images)} image(s) {self.resolution}x{self.resolution}"


def synthetic_spec(resolution: int, images: int = 1, video_frames: int = 0, seed: int = 0,
                   prompt: str = "Describe the picture in one sentence.") -> RequestSpec:
    if video_frames:
        if video_frames < 2 or video_frames % TEMPORAL:
            raise ValueError(f"video_frames must be an even number >= 2, got {video_frames}")
        frames = [synthetic_image(resolution, seed + i // 4) for i in range(video_frames)]
        return RequestSpec([], frames, prompt, resolution)
    if images < 1:
        raise ValueError(f"images must be >= 1, got {images}")
    return RequestSpec([synthetic_image(resolution, seed + i) for i in range(images)], [], prompt, resolution)


def video_patches(frames: list[Image.Image], resolution: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``pixel_values_videos [t*h*w, 3*2*14*14]`` and ``video_grid_thw [[t, h, w]]`` for frames."""
    processed = image_processor(resolution)(images=frames, return_tensors="np")
    # the processor returned each frame as its own image (frame duplicated over the temporal
    # patch); take one copy of each frame's pixels back out and pair consecutive frames instead
    per_frame = processed["pixel_values"].reshape(len(frames), -1, 3, TEMPORAL, PATCH, PATCH)[:, :, :, 0]
    grid_h = grid_w = resolution // PATCH
    # per_frame: [F, h*w (merge-grouped order), C, P, P] -> [F, C, H, W]
    blocks = per_frame.reshape(len(frames), grid_h // MERGE, grid_w // MERGE, MERGE, MERGE, 3, PATCH, PATCH)
    images = blocks.transpose(0, 5, 1, 3, 6, 2, 4, 7).reshape(len(frames), 3, grid_h * PATCH, grid_w * PATCH)
    return _patchify(images), torch.tensor([[len(frames) // TEMPORAL, grid_h, grid_w]])


def _patchify(frames: np.ndarray) -> torch.Tensor:
    """The Qwen-VL patch layout of ``frames [T, C, H, W]`` (T a multiple of the temporal patch)."""
    t, c, height, width = frames.shape
    gt, gh, gw = t // TEMPORAL, height // PATCH, width // PATCH
    x = frames.reshape(gt, TEMPORAL, c, gh // MERGE, MERGE, PATCH, gw // MERGE, MERGE, PATCH)
    x = x.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)
    return torch.from_numpy(np.ascontiguousarray(x).reshape(gt * gh * gw, c * TEMPORAL * PATCH * PATCH))


class TinyTokenizer:
    """Words to ids in [10, image_token_id): deterministic, no vocabulary file.

    It decodes only the words of ``vocabulary`` (the synthetic benchmark's answer words, whose
    hashes do not collide); any other id decodes as ``[id]``. That is enough to score a tiny
    random-weight model's answers honestly (they are mostly unknown ids: chance level).
    """

    def __init__(self, limit: int, vocabulary: tuple[str, ...] = ()) -> None:
        self.limit = limit
        words: dict[int, list[str]] = {}
        for word in dict.fromkeys(vocabulary):
            words.setdefault(self._id(word), []).append(word)
        self.words = {i: w[0] for i, w in words.items() if len(w) == 1}
        self.collisions = [w for w in words.values() if len(w) > 1]

    def _id(self, word: str) -> int:
        return 10 + zlib.crc32(word.encode()) % (self.limit - 10)

    def __call__(self, text: str) -> list[int]:
        return [self._id(w) for w in text.split()]

    def decode(self, ids: list[int]) -> str:
        return " ".join(self.words.get(i, f"[{i}]") for i in ids)


class RequestBuilder:
    """Turns a ``RequestSpec`` into model inputs (the ``preprocess`` stage)."""

    def __init__(self, model: torch.nn.Module, processor: Any | None = None) -> None:
        cfg = model.config
        self.image_token = cfg.image_token_id
        self.video_token = cfg.video_token_id
        self.start, self.end = cfg.vision_start_token_id, cfg.vision_end_token_id
        self.processor = processor
        from pipeline.evaluation.synthetic import answer_vocabulary

        self.eos = cfg.get_text_config().eos_token_id
        self.tokenizer = TinyTokenizer(min(self.image_token, self.video_token, self.start, self.end),
                                       tuple(answer_vocabulary()))

    def __call__(self, spec: RequestSpec) -> dict[str, torch.Tensor]:
        if self.processor is not None:
            return self._with_processor(spec)
        if spec.video_frames:
            pixels, grid = video_patches(spec.video_frames, spec.resolution)
            vision = {"pixel_values_videos": pixels, "video_grid_thw": grid}
            spans, token, kind = grid, self.video_token, 2
        else:
            batch = image_processor(spec.resolution)(images=spec.images, return_tensors="pt")
            vision = {"pixel_values": batch["pixel_values"], "image_grid_thw": batch["image_grid_thw"]}
            spans, token, kind = batch["image_grid_thw"], self.image_token, 1
        ids, types = [], []
        for t, h, w in spans.tolist():
            n = t * h * w // (MERGE * MERGE)
            ids += [self.start] + [token] * n + [self.end]
            types += [0] + [kind] * n + [0]
        text = self.tokenizer(spec.prompt)
        input_ids = torch.tensor([ids + text])
        return {
            "input_ids": input_ids,
            "attention_mask": torch.ones_like(input_ids),
            "mm_token_type_ids": torch.tensor([types + [0] * len(text)]),
            **vision,
        }

    def decode(self, ids: list[int]) -> str:
        """Generated ids as text (the answer a benchmark scores)."""
        if self.processor is not None:
            return self.processor.batch_decode([ids], skip_special_tokens=True)[0].strip()
        eos = self.eos if isinstance(self.eos, list) else [self.eos]
        return self.tokenizer.decode([i for i in ids if i not in eos])

    def _with_processor(self, spec: RequestSpec) -> dict[str, torch.Tensor]:
        placeholder = "<|vision_start|><|video_pad|><|vision_end|>" if spec.video_frames else (
            "<|vision_start|><|image_pad|><|vision_end|>" * len(spec.images)
        )
        text = f"<|im_start|>user\n{placeholder}{spec.prompt}<|im_end|>\n<|im_start|>assistant\n"
        media = {"videos": [spec.video_frames]} if spec.video_frames else {"images": spec.images}
        return dict(self.processor(text=[text], return_tensors="pt", **media))
