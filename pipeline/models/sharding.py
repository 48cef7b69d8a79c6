"""Models larger than one GPU: the layers spread over a worker's GPUs with accelerate's big-model
inference (a device map), one GPU computing at a time.

Why a device map and not tensor parallelism: a worker is one process holding N GPUs (a Ray actor
with ``num_gpus=N``), while transformers' tensor-parallel plans need one process per GPU
(torchrun); and the per-instance patches (IPCV in the vision tower, FastV / DART between decoder
layers) read whole hidden states and attention inputs, which tensor parallelism splits across
processes. With a device map every module runs whole on one GPU and accelerate's hooks move the
activations between GPUs, so the patches work unchanged. Batch-1 latency is that of the layers
run in sequence (plus one activation copy per GPU boundary), which is what a single request
costs on such a deployment.

The vision stage (tower and, for InternVL, the projector) is never split: it stays whole on the
first GPU, so IPCV's token plan lives on one device. ``max_memory`` is balanced over the GPUs
(accelerate's ``get_balanced_memory``) so that every GPU keeps room for activations and the KV
cache instead of the first one filling up.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from pipeline.models.family import ModelFamily

DeviceMap = dict[str, int | str]
GiB = 2**30


def _quiet_accelerate() -> None:
    # planning on a machine without the GPUs (tests, a CPU driver) warns once per device
    logging.getLogger("accelerate.utils.modeling").setLevel(logging.ERROR)


def unsplit_modules(model: nn.Module, family: ModelFamily) -> list[str]:
    """Module classes a device map must keep whole: the model's own (decoder and vision layers)
    and the vision stage's (tower, projector)."""
    names = list(getattr(model, "_no_split_modules", None) or [])
    first, last = family.vision_span(model)
    return list(dict.fromkeys(names + [type(first).__name__, type(last).__name__]))


def plan_device_map(model: nn.Module, family: ModelFamily, budgets: dict[int | str, int], dtype: torch.dtype
                    ) -> DeviceMap:
    """Where each module of ``model`` (real or on the meta device) goes, within ``budgets`` (bytes
    of weights per device). Raises when the weights do not fit, naming the sizes."""
    from accelerate.utils import get_balanced_memory, infer_auto_device_map

    _quiet_accelerate()
    keep_whole = unsplit_modules(model, family)
    need = sum(p.numel() for p in model.parameters()) * torch.empty(0, dtype=dtype).element_size()
    if need > sum(budgets.values()):
        raise ValueError(_too_big(need, budgets, dtype))
    balanced = get_balanced_memory(model, max_memory=dict(budgets), no_split_module_classes=keep_whole, dtype=dtype)
    device_map = infer_auto_device_map(model, max_memory=balanced, no_split_module_classes=keep_whole, dtype=dtype)
    outside = {d for d in device_map.values() if d not in budgets}
    if outside:  # accelerate puts what does not fit on "cpu" / "disk"; a worker's GPUs must hold it all
        raise ValueError(_too_big(need, budgets, dtype) + f" (accelerate would offload to {sorted(map(str, outside))})")
    return device_map


def _size(n: int) -> str:
    return f"{n / GiB:.1f} GiB" if n >= GiB else f"{n / 2**20:.1f} MiB"


def _too_big(need: int, budgets: dict[int | str, int], dtype: torch.dtype) -> str:
    per = ", ".join(f"{d}: {_size(b)}" for d, b in budgets.items())
    return (f"the weights take {_size(need)} in {str(dtype).removeprefix('torch.')}, more than the worker's "
            f"{len(budgets)} GPU(s) can hold ({per} usable); give the model more GPUs (gpus: N) or larger ones")


def gpu_budgets(gpus: int, reserve: float = 0.15) -> dict[int, int]:
    """Bytes of weights each of the first ``gpus`` visible GPUs may take: its free memory less
    ``reserve`` of its total (activations, the KV cache, CUDA kernels)."""
    if torch.cuda.device_count() < gpus:
        raise ValueError(f"the model asks for {gpus} GPUs but this worker sees {torch.cuda.device_count()}")
    budgets = {}
    for index in range(gpus):
        free, total = torch.cuda.mem_get_info(index)
        budgets[index] = max(0, int(free - reserve * total))
    return budgets


def place(device: int | str) -> torch.device:
    return torch.device(f"cuda:{device}" if isinstance(device, int) else device)


def materialize(model: nn.Module, device_map: DeviceMap) -> nn.Module:
    """A model built on the meta device (in its target dtype) given storage on the devices of
    ``device_map``; values undefined until initialised."""
    for prefix, device in sorted(device_map.items(), key=lambda item: len(item[0])):
        module = model.get_submodule(prefix) if prefix else model
        module.to_empty(device=place(device), recurse=True)
    return model


def initialise_random(model: nn.Module, family: ModelFamily, seed: int, devices: list[torch.device]) -> None:
    """Draw a materialised model's weights (and recompute its buffers) from ``seed``, on the
    devices they are on, as the model's own initialisation does."""
    for module in model.modules():
        module._is_hf_initialized = False
    for tensor in list(model.parameters()) + list(model.buffers()):
        if hasattr(tensor, "_is_hf_initialized"):
            tensor._is_hf_initialized = False
    cuda = [d for d in dict.fromkeys(devices) if d.type == "cuda"]
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        model.init_weights()
        family.finish_random_init(model)


def dispatch(model: nn.Module, device_map: DeviceMap) -> nn.Module:
    """accelerate's hooks that move activations to each module's device (kept on a single device
    too, so the CPU stand-in runs the same path)."""
    from accelerate import dispatch_model

    return dispatch_model(model, {k: place(v) for k, v in device_map.items()}, force_hooks=True)


def devices_of(model: nn.Module) -> list[torch.device]:
    """The devices a model's weights are on, in order of first appearance."""
    return list(dict.fromkeys(p.device for p in model.parameters()))
