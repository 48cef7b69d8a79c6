"""What the benchmark scripts share: command-line options, the Qwen2-VL builds they measure,
the attention backends, and writing results.

The scripts import the installed ``ipcv`` / ``pipeline`` packages (``pip install -e .``) and this
module as their sibling (run them as ``python benchmarks/<name>.py``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path
from typing import Any

import torch

from pipeline.models import VisionInput, attention, build_random, family_named, family_of

FAMILY = family_named("qwen2_vl")  # the family the benchmarks measure by default (the paper's Qwen2-VL)
SIZES = tuple(s for s in FAMILY.sizes() if s != "tiny")
# InternVL's encoders by name: InternViT-300M is the tower of InternVL3-1B..14B, InternViT-6B of 38B / 78B
INTERNVIT = {"internvit-300m": "8b", "internvit-6b": "38b", "tiny": "tiny"}


def build(size: str, dtype: str, device: torch.device, attn: str, tower_only: bool = False,
          family: str = "qwen2_vl") -> torch.nn.Module:
    """An architecture size of ``family`` with seeded random weights, built on ``device`` in
    ``dtype`` (``attn`` "sdpa-flash" builds sdpa; ``attention_context`` then forces the flash kernel;
    "torch_flash_varlen" builds sdpa and sets PyTorch's varlen kernel on the vision tower,
    ``pipeline.models.attention``)."""
    varlen, adapter = attn == attention.NAME, family_named(family)
    if varlen:
        attention.check_family(adapter)
    model = build_random(adapter, INTERNVIT.get(size, size) if family == "internvl" else size,
                         dtype=dtype, device=str(device), on_device=True, tower_only=tower_only,
                         attn_implementation="sdpa" if attn.startswith("sdpa") or varlen else attn)
    if varlen:
        attention.use_torch_flash_varlen(model if tower_only else adapter.tower(model))
    return model


def encode(tower: torch.nn.Module, inp: VisionInput) -> torch.Tensor:
    """The tower alone on ``inp`` (already on its device): the features it hands to the LLM."""
    family = family_of(tower)
    args, kwargs = family.vision_input_call(inp)
    return family.features(tower(*args, **kwargs))


def attention_context(attn: str):
    if attn == "sdpa-flash":
        from torch.nn.attention import SDPBackend, sdpa_kernel

        return sdpa_kernel([SDPBackend.FLASH_ATTENTION])
    return contextlib.nullcontext()


def parser(doc: str, *, resolutions: str, warmup: int, repeats: int) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--resolutions", default=resolutions, help="comma list of image sides (multiples of 28: Qwen-VL's patch grid)")
    p.add_argument("--warmup", type=int, default=warmup)
    p.add_argument("--repeats", type=int, default=repeats)
    p.add_argument("--out", type=Path, default=None, help="write <stem>.json and <stem>.md")
    return p


def spread(timing: dict[str, Any] | None) -> str:
    """A latency as the tables write it: ``median [p10, p90]`` in ms (``-`` when not measured)."""
    if timing is None:
        return "-"
    return f"{timing['median_ms']:.2f} [{timing['p10_ms']:.2f}, {timing['p90_ms']:.2f}]"


def command_line() -> str:
    return " ".join(["python", *sys.argv])


def save(out: Path | None, meta: dict[str, Any], rows: list[dict[str, Any]], table: str) -> None:
    print(table)
    if out is None:
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2, default=str))
    out.with_suffix(".md").write_text(table + "\n")
