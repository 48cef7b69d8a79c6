"""Shared fixtures: tiny seeded models of both families and request builders."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a hub (set before transformers loads)
# Ray resolves "127.0.0.1" in a cluster address to this machine's outward IP unless told that this
# is a single-machine setup; tests keep every Ray process on the loopback address.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import pytest  # noqa: E402
import torch  # noqa: E402
from transformers.utils import logging as hf_logging

from pipeline.models import VisionInput, build_tiny
from pipeline.models.qwen_vl import random_patches

hf_logging.set_verbosity_error()

FAMILIES = ["tiny-qwen2-vl", "tiny-qwen2.5-vl"]
IMAGE_TOKEN, VIDEO_TOKEN, VISION_START, VISION_END = 500, 501, 502, 503


@pytest.fixture(params=FAMILIES)
def family(request) -> str:
    return request.param


def tiny(name: str, **kw) -> torch.nn.Module:
    return build_tiny(name, seed=0, **kw)


def tower_of(model: torch.nn.Module) -> torch.nn.Module:
    return model.model.visual


def run_tower(tower: torch.nn.Module, inp: VisionInput):
    dtype = next(tower.parameters()).dtype
    with torch.no_grad():
        return tower(inp.pixel_values.to(dtype), grid_thw=inp.grid_thw)


def multimodal_request(inp: VisionInput, video: bool = False) -> dict:
    """input_ids with one vision span per grid row (merged-token count), then a short text."""
    token, kind = (VIDEO_TOKEN, 2) if video else (IMAGE_TOKEN, 1)
    ids, types = [], []
    for t, h, w in inp.grid_thw.tolist():
        n = t * h * w // 4
        ids += [VISION_START] + [token] * n + [VISION_END]
        types += [0] + [kind] * n + [0]
    ids += [10, 11, 12]
    types += [0, 0, 0]
    input_ids = torch.tensor([ids])
    request = dict(
        input_ids=input_ids,
        attention_mask=torch.ones_like(input_ids),
        mm_token_type_ids=torch.tensor([types]),
    )
    if video:
        request.update(pixel_values_videos=inp.pixel_values, video_grid_thw=inp.grid_thw)
    else:
        request.update(pixel_values=inp.pixel_values, image_grid_thw=inp.grid_thw)
    return request


TWO_IMAGES = [(1, 12, 12), (1, 8, 10)]
VIDEO = [(3, 8, 8)]


@pytest.fixture
def two_images() -> VisionInput:
    return random_patches(TWO_IMAGES, seed=1)


@pytest.fixture
def video() -> VisionInput:
    return random_patches(VIDEO, seed=2)


def left_padded_batch(a: dict, b: dict) -> dict:
    """Two single-row requests as one batch, the shorter one left-padded (pad id 2, mask 0)."""
    pad = a["input_ids"].shape[1] - b["input_ids"].shape[1]
    zeros = torch.zeros(1, pad, dtype=torch.long)
    return {
        "input_ids": torch.cat([a["input_ids"], torch.cat([torch.full((1, pad), 2), b["input_ids"]], 1)]),
        "attention_mask": torch.cat([a["attention_mask"], torch.cat([zeros, b["attention_mask"]], 1)]),
        "mm_token_type_ids": torch.cat([a["mm_token_type_ids"], torch.cat([zeros, b["mm_token_type_ids"]], 1)]),
        "pixel_values": torch.cat([a["pixel_values"], b["pixel_values"]]),
        "image_grid_thw": torch.cat([a["image_grid_thw"], b["image_grid_thw"]]),
    }

