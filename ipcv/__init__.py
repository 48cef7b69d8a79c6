"""IPCV: training-free compression inside the vision encoder of multimodal LLMs.

Importable with torch and transformers alone. ``apply(model, vision=IPCVConfig(...),
llm=LLMPruneConfig(...))`` patches one loaded model instance in place (either or both) and
returns a handle whose ``remove()`` undoes it. ``GraphedCall`` replays one tower call (patched
or not) as a CUDA graph, for inputs of one layout (``ipcv/cuda_graph.py``).

The configs are plain dataclasses and load at once; the patch (and torch with it) loads on first
use of ``apply`` or the other names, so that tools that only read settings (a CLI's ``--help``,
a profile validator) start fast.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from ipcv.config import IPCVConfig, LLMPruneConfig

__version__ = "0.1.0"

_LAZY = {
    "GraphedCall": "ipcv.cuda_graph",
    "IPCVHandle": "ipcv.api",
    "apply": "ipcv.api",
    "supported_description": "ipcv.families",
    "LLMStats": "ipcv.llm",
    "VisionStats": "ipcv.stats",
}

__all__ = ["GraphedCall", "IPCVConfig", "IPCVHandle", "LLMPruneConfig", "LLMStats", "VisionStats", "apply", "supported_description"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'ipcv' has no attribute {name!r}")
