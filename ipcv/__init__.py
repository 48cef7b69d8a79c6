"""IPCV: training-free compression inside the vision encoder of multimodal LLMs.

Importable with torch and transformers alone. ``apply(model, vision=IPCVConfig(...),
llm=LLMPruneConfig(...))`` patches one loaded model instance in place (either or both) and
returns a handle whose ``remove()`` undoes it.
"""

from ipcv.api import IPCVHandle, apply
from ipcv.config import IPCVConfig, LLMPruneConfig
from ipcv.families import supported_description
from ipcv.llm import LLMStats
from ipcv.stats import VisionStats

__all__ = [
    "IPCVConfig",
    "IPCVHandle",
    "LLMPruneConfig",
    "LLMStats",
    "VisionStats",
    "apply",
    "supported_description",
]
__version__ = "0.1.0"
