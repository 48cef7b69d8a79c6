"""lmms-eval bridge: IPCV-compressed models as lmms-eval models, lmms-eval tasks in a sweep.

Optional (``pip install -e ".[lmms]"``). lmms-eval finds the models through the entry-point group
``lmms_eval.models`` (``manifests`` below), so ``lmms-eval --model ipcv_qwen2_vl --model_args
pretrained=tiny-qwen2-vl,reduction_ratio=0.65 --tasks ...`` works with nothing else to set up.

- ``pipeline.lmms.model``: the lmms-eval model classes (a thin wrapper over the study's own
  loading, request building and greedy answering, so presets, checkpoints and the sweep's
  already-patched models answer the same way; docs/accuracy.md says why not lmms-eval's wrappers).
- ``pipeline.lmms.native``: ``ipcv_qwen2_5_vl_native``, lmms-eval's own Qwen2.5-VL wrapper with its
  loaded model patched (real checkpoints; needs torchvision and decord).
- ``pipeline.lmms.args``: ``model_args`` into ``IPCVConfig`` / ``LLMPruneConfig``.
- ``pipeline.lmms.local_tasks``: the synthetic benchmark written as local lmms-eval tasks (lmms-eval's
  own task definitions pointed at local files) for offline runs and tests.
- ``pipeline.lmms.backend``: an evaluation task of a sweep run through ``simple_evaluate``.

Only this module's ``manifests`` is imported when lmms-eval starts; it imports nothing heavy.
"""

from __future__ import annotations

# lmms-eval model name -> its class in pipeline.lmms.model (each serves one model family)
MODELS: dict[str, str] = {
    "ipcv_qwen2_vl": "IPCVQwen2VL",
    "ipcv_qwen2_5_vl": "IPCVQwen2_5VL",
    "ipcv_internvl3": "IPCVInternVL3",
}


def manifests() -> list:
    """The entry point's payload: one ``ModelManifest`` per model name (simple models: they read a
    task's ``doc_to_visual`` and ``doc_to_text``, which every image and video task defines), and the
    chat model over lmms-eval's own Qwen2.5-VL wrapper (``pipeline.lmms.native``)."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return [ModelManifest(model_id=name, simple_class_path=f"pipeline.lmms.model.{cls}")
            for name, cls in MODELS.items()] + [
        ModelManifest(model_id="ipcv_qwen2_5_vl_native", chat_class_path="pipeline.lmms.native.IPCVQwen2_5VLNative")]
