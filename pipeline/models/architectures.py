"""Published architectures by checkpoint name, to build with random weights (``weights: random``).

Latency, memory, FLOPs and the KV cache depend on the architecture, not on trained values, so the
cost side of the study runs at real sizes without downloading weights (optimum-benchmark's
``no_weights``). Each entry names the family and the architecture size whose settings copy the
checkpoint's ``config.json`` (``pipeline/models/qwen_vl.py``), and the parameter count its model
card shows, which ``tests/test_architectures.py`` checks the build against.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.models.family import ModelFamily
from pipeline.models.registry import family_named


@dataclass(frozen=True)
class Architecture:
    checkpoint: str  # the hub id of the instruct checkpoint
    family_key: str
    size: str
    card_params: str | None  # the model card's parameter count, as displayed ("8.29B"); None if not at hand

    @property
    def family(self) -> ModelFamily:
        return family_named(self.family_key)


ARCHITECTURES: tuple[Architecture, ...] = (
    Architecture("Qwen/Qwen2-VL-2B-Instruct", "qwen2_vl", "2b", "2.21B"),
    Architecture("Qwen/Qwen2-VL-7B-Instruct", "qwen2_vl", "7b", "8.29B"),
    Architecture("Qwen/Qwen2-VL-72B-Instruct", "qwen2_vl", "72b", "73.4B"),
    Architecture("Qwen/Qwen2.5-VL-3B-Instruct", "qwen2_5_vl", "3b", "3.75B"),
    Architecture("Qwen/Qwen2.5-VL-7B-Instruct", "qwen2_5_vl", "7b", "8.29B"),
    Architecture("Qwen/Qwen2.5-VL-32B-Instruct", "qwen2_5_vl", "32b", None),
    Architecture("Qwen/Qwen2.5-VL-72B-Instruct", "qwen2_5_vl", "72b", "73.4B"),
)


def _key(name: str) -> str:
    name = name.strip().lower()
    return name[: -len("-instruct")] if name.endswith("-instruct") else name


def architecture_for(name: str) -> Architecture:
    """The architecture of a checkpoint name (its base or instruct hub id, any case)."""
    for arch in ARCHITECTURES:
        if _key(arch.checkpoint) == _key(name):
            return arch
    raise ValueError(f"no built-in architecture for {name!r} (weights: random needs one of: "
                     f"{', '.join(a.checkpoint for a in ARCHITECTURES)}, or a tiny preset)")


def has_architecture(name: str) -> bool:
    return any(_key(a.checkpoint) == _key(name) for a in ARCHITECTURES)
