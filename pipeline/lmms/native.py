"""``ipcv_qwen2_5_vl_native``: lmms-eval's own Qwen2.5-VL chat wrapper, its loaded model patched.

For real checkpoints where numbers should be those of lmms-eval's ``qwen2_5_vl`` (its chat template
and system prompt, ``max_pixels`` / ``min_pixels`` resizing, batching, video sampling) plus the
method. It needs what that wrapper needs at import: ``qwen_vl_utils`` with a working torchvision
and ``decord`` (a CUDA build of torch brings a torchvision that loads; the CPU-only torch of CI
does not, so this class is checked by hand, not in CI: docs/accuracy.md). Presets cannot load
through it (no processor files); ``ipcv_qwen2_5_vl`` serves them.
"""

from __future__ import annotations

from typing import Any

from lmms_eval.models.chat.qwen2_5_vl import Qwen2_5_VL

import ipcv
from pipeline.lmms.args import method_configs, method_keys


class IPCVQwen2_5VLNative(Qwen2_5_VL):
    """lmms-eval's ``qwen2_5_vl`` model_args, plus the method settings of ``pipeline.lmms.args``."""

    def __init__(self, **kwargs: Any) -> None:
        vision, llm, _ = method_configs({k: kwargs.pop(k) for k in list(kwargs) if k in method_keys()})
        super().__init__(**kwargs)
        self.handle = ipcv.apply(self._model, vision=vision, llm=llm) if vision is not None or llm is not None else None
