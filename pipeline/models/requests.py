"""What a request sends, independent of the model family: images or video frames and a prompt.

Images are rendered locally (gradients, shapes, stripes: structure for the encoder to react to,
no download). Each family's adapter turns a ``RequestSpec`` into model inputs with its own image
processor and chat template (the ``preprocess`` stage); tiny presets have no tokenizer to load,
so ``TinyTokenizer``, a small deterministic word tokenizer, stands in for the text.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image, ImageDraw

from pipeline.models.family import ModelFamily, Requirements


@dataclass
class RequestSpec:
    """What to send: ``images`` (PIL) or ``video_frames`` (PIL), and a prompt."""

    images: list[Image.Image]
    video_frames: list[Image.Image]
    prompt: str
    resolution: int

    def describe(self) -> str:
        if self.video_frames:
            return f"video {len(self.video_frames)} frames {self.resolution}x{self.resolution}"
        return f"{len(self.images)} image(s) {self.resolution}x{self.resolution}"


@dataclass
class VisionInput:
    """Pixels and layout for calling a vision tower alone, as its family lays them out."""

    pixel_values: torch.Tensor
    grid_thw: torch.Tensor | None  # Qwen-VL's [t, h, w] per image or video; None for fixed tiles (InternVL)
    description: str

    def to(self, device: torch.device | str, dtype: torch.dtype) -> VisionInput:
        grid = self.grid_thw.to(device) if self.grid_thw is not None else None
        return VisionInput(self.pixel_values.to(device, dtype), grid, self.description)


class AnswerDecoding:
    """Generated ids as the answer text a benchmark scores, whichever way the builder tokenises:
    a checkpoint's processor, its tokenizer alone, or the word tokenizer of random weights."""

    processor: Any | None
    text_tokenizer: Any | None
    tokenizer: TinyTokenizer
    eos: int | list[int]

    def decode(self, ids: list[int]) -> str:
        if self.processor is not None:
            return self.processor.batch_decode([ids], skip_special_tokens=True)[0].strip()
        if self.text_tokenizer is not None:
            return self.text_tokenizer.decode(ids, skip_special_tokens=True).strip()
        eos = self.eos if isinstance(self.eos, list) else [self.eos]
        return self.tokenizer.decode([i for i in ids if i not in eos])


class RequestBuilder(Protocol):
    """A family's request builder: model inputs from a ``RequestSpec``, answer text from ids."""

    def __call__(self, spec: RequestSpec) -> dict[str, torch.Tensor]: ...

    def decode(self, ids: list[int]) -> str: ...


def synthetic_image(resolution: int, seed: int) -> Image.Image:
    """A reproducible picture with smooth regions, edges and small detail."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:resolution, 0:resolution] / resolution
    base = np.stack([x, y, 0.5 + 0.5 * np.sin(6 * np.pi * x * y)], axis=-1)
    image = Image.fromarray((base * 255).astype("uint8"))
    draw = ImageDraw.Draw(image)
    for _ in range(12):
        x0, y0 = rng.integers(0, resolution - 8, size=2)
        size = int(rng.integers(8, max(9, resolution // 4)))
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        if rng.random() < 0.5:
            draw.rectangle([x0, y0, x0 + size, y0 + size], fill=colour)
        else:
            draw.ellipse([x0, y0, x0 + size, y0 + size], fill=colour)
    for i in range(0, resolution, max(4, resolution // 32)):
        draw.line([(i, 0), (i, resolution // 10)], fill=(0, 0, 0), width=1)
    return image


def synthetic_spec(resolution: int, images: int = 1, video_frames: int = 0, seed: int = 0,
                   prompt: str = "Describe the picture in one sentence.",
                   requirements: Requirements | None = None) -> RequestSpec:
    """Synthetic images (or a video whose frames change every 4 frames) and a prompt. Frame
    counts are checked against ``requirements`` (default: what every supported family accepts)."""
    if video_frames:
        if requirements is None:
            from pipeline.models.registry import supported_requirements  # the registry imports this module

            requirements = supported_requirements()
        requirements.check_frames(video_frames)
        frames = [synthetic_image(resolution, seed + i // 4) for i in range(video_frames)]
        return RequestSpec([], frames, prompt, resolution)
    if images < 1:
        raise ValueError(f"images must be >= 1, got {images}")
    return RequestSpec([synthetic_image(resolution, seed + i) for i in range(images)], [], prompt, resolution)


def synthetic_vision_input(family: ModelFamily, resolution: int, count: int = 1, seed: int = 0) -> VisionInput:
    """``count`` synthetic images through the family's image processor, for the tower alone."""
    family.requirements.check_resolution(resolution)
    if count < 1:
        raise ValueError(f"count of images must be >= 1, got {count}")
    images = [synthetic_image(resolution, seed + i) for i in range(count)]
    inp = family.vision_input(images, resolution)
    inp.description = f"{count} synthetic image(s) {resolution}x{resolution}"
    return inp


class TinyTokenizer:
    """Words to ids in [10, limit): deterministic, no vocabulary file.

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
