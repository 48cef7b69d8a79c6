"""Vision inputs for measurements: synthetic images through the model family's real preprocessing.

Images are rendered locally (gradients, shapes, stripes: structure for the encoder to react to,
no download) and turned into ``pixel_values`` / ``grid_thw`` by the Qwen-VL image processor, at an
exact resolution (a multiple of 28 = patch 14 x merge 2).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw

PATCH_MULTIPLE = 28


@dataclass
class VisionInput:
    pixel_values: torch.Tensor
    grid_thw: torch.Tensor
    description: str


def check_resolution(resolution: int) -> None:
    if resolution < PATCH_MULTIPLE or resolution % PATCH_MULTIPLE:
        raise ValueError(f"resolution must be a positive multiple of {PATCH_MULTIPLE}, got {resolution}")


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


def image_processor(resolution: int):
    """The Qwen-VL image processor, pinned to exactly ``resolution``^2 pixels."""
    try:
        from transformers import Qwen2VLImageProcessorPil as Processor
    except ImportError:  # older transformers without the PIL-backend class name
        from transformers import Qwen2VLImageProcessor as Processor
    pixels = resolution * resolution
    return Processor(min_pixels=pixels, max_pixels=pixels)


def synthetic_images(resolution: int, count: int = 1, seed: int = 0) -> VisionInput:
    check_resolution(resolution)
    if count < 1:
        raise ValueError(f"count of images must be >= 1, got {count}")
    images = [synthetic_image(resolution, seed + i) for i in range(count)]
    batch = image_processor(resolution)(images=images, return_tensors="pt")
    return VisionInput(
        batch["pixel_values"], batch["image_grid_thw"], f"{count} synthetic image(s) {resolution}x{resolution}"
    )


def random_patches(grid_thw: list[tuple[int, int, int]], seed: int = 0, patch_inputs: int = 1176) -> VisionInput:
    """Random ``pixel_values`` for any grid, for encoder-only measurements and tests."""
    grid = torch.tensor(grid_thw, dtype=torch.long)
    n = int(grid.prod(dim=-1).sum())
    generator = torch.Generator().manual_seed(seed)
    return VisionInput(torch.randn(n, patch_inputs, generator=generator), grid, f"random patches, grid {grid_thw}")
