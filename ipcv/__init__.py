"""IPCV: training-free compression inside the vision encoder of multimodal LLMs.

Importable with torch and transformers alone. ``apply(model, vision=IPCVConfig(...))`` patches
one loaded model instance in place and returns a handle whose ``remove()`` undoes it.
"""

from ipcv.api import IPCVHandle, apply
from ipcv.config import IPCVConfig
from ipcv.families import supported_description
from ipcv.stats import VisionStats

__all__ = ["IPCVConfig", "IPCVHandle", "VisionStats", "apply", "supported_description"]
__version__ = "0.1.0"
