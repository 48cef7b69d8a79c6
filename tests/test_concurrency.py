"""One patched model called from several threads at once: each call keeps its own state."""

from __future__ import annotations

import threading

import torch

import ipcv
from pipeline.models.qwen_vl import random_patches
from tests.conftest import multimodal_request, tiny


def test_one_patched_model_serves_two_threads(family):
    model = tiny(family)
    requests = [multimodal_request(random_patches([(1, 8, 8)], seed=40)),
                multimodal_request(random_patches([(2, 8, 12)], seed=41))]  # two requests of different sizes
    vision = ipcv.IPCVConfig(reduction_ratio=0.5, prune_layer=3, as_layers=2)
    llm = ipcv.LLMPruneConfig(method="fastv", layer=2, reduction_ratio=0.5)
    errors: list[BaseException] = []
    wrong: list[int] = []
    with ipcv.apply(model, vision=vision, llm=llm), torch.inference_mode():
        alone = [model(**r).logits for r in requests]

        def work(i: int) -> None:
            for _ in range(15):
                try:
                    out = model(**requests[i]).logits
                    if out.shape != alone[i].shape or not torch.allclose(out, alone[i], rtol=1e-5, atol=1e-6):
                        wrong.append(i)
                except Exception as err:  # collected for the assertion
                    errors.append(err)

        threads = [threading.Thread(target=work, args=(i,)) for i in (0, 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == [] and wrong == [], (errors[:2], wrong[:5])
