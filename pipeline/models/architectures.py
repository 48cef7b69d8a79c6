"""Published architectures by checkpoint name, to build with random weights (``weights: random``).

Latency, memory, FLOPs and the KV cache depend on the architecture, not on trained values, so the
cost side of the study runs at real sizes without downloading weights (optimum-benchmark's
``no_weights``). Each entry names the family and the architecture size whose settings copy the
checkpoint's ``config.json`` (``pipeline/models/qwen_vl.py``, ``pipeline/models/internvl.py``), and the parameter count its model
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

    def matches(self, name: str) -> bool:
        """Whether ``name`` is this checkpoint's base or instruct hub id (any case)."""
        return _key(self.checkpoint) == _key(name)


ARCHITECTURES: tuple[Architecture, ...] = (
    Architecture("Qwen/Qwen2-VL-2B-Instruct", "qwen2_vl", "2b", "2.21B"),
    Architecture("Qwen/Qwen2-VL-7B-Instruct", "qwen2_vl", "7b", "8.29B"),
    Architecture("Qwen/Qwen2-VL-72B-Instruct", "qwen2_vl", "72b", "73.4B"),
    Architecture("Qwen/Qwen2.5-VL-3B-Instruct", "qwen2_5_vl", "3b", "3.75B"),
    Architecture("Qwen/Qwen2.5-VL-7B-Instruct", "qwen2_5_vl", "7b", "8.29B"),
    Architecture("Qwen/Qwen2.5-VL-32B-Instruct", "qwen2_5_vl", "32b", None),
    Architecture("Qwen/Qwen2.5-VL-72B-Instruct", "qwen2_5_vl", "72b", "73.4B"),
    Architecture("OpenGVLab/InternVL3-1B-hf", "internvl", "1b", "0.938B"),
    Architecture("OpenGVLab/InternVL3-2B-hf", "internvl", "2b", "2.09B"),
    Architecture("OpenGVLab/InternVL3-8B-hf", "internvl", "8b", "7.94B"),
    Architecture("OpenGVLab/InternVL3-14B-hf", "internvl", "14b", "15.1B"),
    Architecture("OpenGVLab/InternVL3-38B-hf", "internvl", "38b", "38.4B"),
    Architecture("OpenGVLab/InternVL3-78B-hf", "internvl", "78b", "78.4B"),
)


def _key(name: str) -> str:
    """A checkpoint name without what does not change the architecture: case, ``-hf`` (InternVL's
    transformers-native copies), ``-instruct``."""
    name = name.strip().lower()
    for suffix in ("-hf", "-instruct"):
        name = name.removesuffix(suffix)
    return name


def architecture_for(name: str) -> Architecture:
    """The architecture of a checkpoint name (its base or instruct hub id, any case)."""
    for arch in ARCHITECTURES:
        if arch.matches(name):
            return arch
    raise ValueError(f"no built-in architecture for {name!r} (weights: random needs one of: "
                     f"{', '.join(a.checkpoint for a in ARCHITECTURES)}, or a tiny preset)")


def has_architecture(name: str) -> bool:
    return any(a.matches(name) for a in ARCHITECTURES)
