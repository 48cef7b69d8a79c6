"""Loading models: tiny presets and other architecture sizes with seeded random weights, or real
checkpoints from a local path or hub id; their processors; requests onto a model's device.

Random-weight models are built from configs (no download). A preset is built on the CPU in
float32 under a forked random state and then cast, so the same seed gives the same weights on
every machine and in every dtype; ``build_random(..., on_device=True)`` builds directly on the
target device in the target dtype instead (fast for real sizes; weights then depend on the device).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from pipeline.models import attention
from pipeline.models.family import ModelFamily
from pipeline.models.registry import FAMILIES


@dataclass(frozen=True)
class Preset:
    name: str
    family: ModelFamily
    size: str

    @property
    def description(self) -> str:
        return f"{self.family.label} architecture, size {self.size}, random weights"


PRESETS: dict[str, Preset] = {
    name: Preset(name, family, size) for family in FAMILIES for name, size in family.presets.items()
}

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def is_preset(name: str) -> bool:
    return name in PRESETS


def parse_dtype(name: str) -> torch.dtype:
    try:
        return DTYPES[name]
    except KeyError:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {name!r}") from None


def build_random(
    family: ModelFamily,
    size: str,
    *,
    seed: int = 0,
    dtype: str = "float32",
    attn_implementation: str = "sdpa",
    device: str = "cpu",
    vision: dict[str, Any] | None = None,
    text: dict[str, Any] | None = None,
    on_device: bool = False,
    tower_only: bool = False,
) -> nn.Module:
    """An architecture size of ``family`` with weights drawn from ``seed`` (``tower_only``: its
    vision tower alone; ``vision`` / ``text``: settings overriding the size's)."""
    torch_dtype = parse_dtype(dtype)
    check_device(device)
    make = (lambda: family.build_tower(size)) if tower_only else (lambda: family.build(size, vision, text))
    if on_device:
        with torch.random.fork_rng(devices=[torch.device(device)] if device.startswith("cuda") else []):
            torch.manual_seed(seed)
            previous = torch.get_default_dtype()
            torch.set_default_dtype(torch_dtype)
            try:
                with torch.device(device):
                    model = make()
            finally:
                torch.set_default_dtype(previous)
        model.set_attn_implementation(attn_implementation)
        return model.eval()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = make()
    model.set_attn_implementation(attn_implementation)
    return model.to(torch_dtype).eval().to(device)


def build_tiny(
    name: str,
    seed: int = 0,
    dtype: str = "float32",
    attn_implementation: str = "sdpa",
    vision: dict[str, Any] | None = None,
) -> nn.Module:
    """A preset with weights drawn from ``seed``: the same seed gives the same model."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}")
    preset = PRESETS[name]
    return build_random(preset.family, preset.size, seed=seed, dtype=dtype,
                        attn_implementation=attn_implementation, vision=vision)


def load_model(
    name_or_path: str,
    dtype: str = "bfloat16",
    attn_implementation: str = "sdpa",
    device: str = "cpu",
    seed: int = 0,
    weights: str = "checkpoint",
    overrides: dict[str, dict[str, Any]] | None = None,
    gpus: int = 1,
) -> nn.Module:
    """A preset by name; with ``weights="random"`` a published architecture by its checkpoint name
    (``pipeline/models/architectures.py``), built with seeded random weights directly on
    ``device`` in ``dtype`` (no download, no CPU copy; ``overrides``: ``{"vision": {...},
    "text": {...}}`` settings, e.g. a reduced depth); else a real checkpoint from a local path or
    hub id. ``gpus > 1`` on CUDA spreads the model over the first ``gpus`` visible GPUs
    (``pipeline/models/sharding.py``)."""
    if attn_implementation == attention.NAME:  # the tower on PyTorch's varlen kernel, the rest on sdpa
        attention.check_setting(dtype, device)
        model = load_model(name_or_path, dtype, "sdpa", device, seed, weights, overrides, gpus)
        return attention.on_vision_tower(model)
    if name_or_path in PRESETS:
        check_device(device)
        return build_tiny(name_or_path, seed=seed, dtype=dtype, attn_implementation=attn_implementation).to(device)
    sharded = device.startswith("cuda") and gpus > 1
    if sharded:
        check_device(device)
        from pipeline.models.sharding import gpu_budgets

        budgets = gpu_budgets(gpus)
    if weights == "random":
        from pipeline.models.architectures import architecture_for

        arch = architecture_for(name_or_path)
        overrides = overrides or {}
        if sharded:
            return build_sharded(arch.family, arch.size, budgets, seed=seed, dtype=dtype,
                                 attn_implementation=attn_implementation, vision=overrides.get("vision"),
                                 text=overrides.get("text"))
        if device.startswith("cuda"):
            with torch.device("meta"):
                shape_only = arch.family.build(arch.size, overrides.get("vision"), overrides.get("text"))
            check_fits(name_or_path, sum(p.numel() for p in shape_only.parameters()), dtype, torch.device(device))
        return build_random(arch.family, arch.size, seed=seed, dtype=dtype, attn_implementation=attn_implementation,
                            device=device, vision=overrides.get("vision"), text=overrides.get("text"), on_device=True)
    if weights != "checkpoint":
        raise ValueError(f"weights must be 'checkpoint' or 'random', got {weights!r}")
    from transformers import AutoModelForImageTextToText

    torch_dtype = parse_dtype(dtype)
    check_device(device)
    try:
        if sharded:
            return load_sharded_checkpoint(name_or_path, budgets, dtype, attn_implementation)
        model = AutoModelForImageTextToText.from_pretrained(
            name_or_path, dtype=torch_dtype, attn_implementation=attn_implementation
        )
    except (OSError, ValueError) as err:
        raise ValueError(
            f"could not load model {name_or_path!r}: not a preset ({', '.join(PRESETS)}), "
            f"nor a loadable local path or hub id ({type(err).__name__}: {err})"
        ) from err
    return model.to(device).eval()


def build_sharded(
    family: ModelFamily,
    size: str,
    budgets: dict[int | str, int],
    *,
    seed: int = 0,
    dtype: str = "bfloat16",
    attn_implementation: str = "sdpa",
    vision: dict[str, Any] | None = None,
    text: dict[str, Any] | None = None,
    stand_in: str | None = None,
) -> nn.Module:
    """An architecture size spread over the devices of ``budgets`` (bytes of weights each, by GPU
    index), weights drawn from ``seed`` where they live: built on the meta device, placed by a
    device map, initialised, then hooked to move activations. ``stand_in`` (e.g. ``"cpu"``)
    places every planned part on that device instead, hooks included: the sharded path without
    the GPUs (the plan stays in ``model.planned_device_map``)."""
    from pipeline.models import sharding

    torch_dtype = parse_dtype(dtype)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch_dtype)
    try:
        with torch.device("meta"):
            model = family.build(size, vision, text)
    finally:
        torch.set_default_dtype(previous)
    planned = sharding.plan_device_map(model, family, budgets, torch_dtype)
    device_map = {name: stand_in for name in planned} if stand_in else planned
    sharding.materialize(model, device_map)
    sharding.initialise_random(model, family, seed, sharding.devices_of(model))
    model.set_attn_implementation(attn_implementation)
    model = sharding.dispatch(model.eval(), device_map)
    model.planned_device_map = planned
    return model


def load_sharded_checkpoint(name_or_path: str, budgets: dict[int | str, int], dtype: str,
                            attn_implementation: str) -> nn.Module:
    """A checkpoint spread over the devices of ``budgets`` by the same plan as random weights
    (the vision stage whole on the first device), loaded by transformers with that device map."""
    from transformers import AutoConfig, AutoModelForImageTextToText

    from pipeline.models.registry import family_of
    from pipeline.models.sharding import plan_device_map

    torch_dtype = parse_dtype(dtype)
    config = AutoConfig.from_pretrained(name_or_path)
    with torch.device("meta"):
        shell = AutoModelForImageTextToText.from_config(config, dtype=torch_dtype)
    device_map = plan_device_map(shell, family_of(shell), budgets, torch_dtype)
    return AutoModelForImageTextToText.from_pretrained(
        name_or_path, dtype=torch_dtype, attn_implementation=attn_implementation, device_map=device_map).eval()


def load_processor(name_or_path: str, weights: str = "checkpoint") -> Any | None:
    """What a checkpoint's prompts are written with: its processor; where that cannot load (e.g.
    transformers 5's Qwen-VL processor needs torchvision for its video part) its tokenizer,
    with the family's image processor for pixels. ``None`` for presets and random-weight
    architectures, which build requests themselves (a small word tokenizer). A checkpoint with
    neither is an error: its prompts are never tokenised by anything but its own tokenizer."""
    if is_preset(name_or_path) or weights == "random":
        return None
    from transformers import AutoProcessor, AutoTokenizer

    try:
        return AutoProcessor.from_pretrained(name_or_path)
    except Exception as processor_err:
        try:
            tokenizer = AutoTokenizer.from_pretrained(name_or_path)
            if len(tokenizer) <= 1:  # transformers builds an empty one where no tokenizer files are
                raise ValueError("it is empty (no tokenizer files)")
            return tokenizer
        except Exception as tokenizer_err:
            raise ValueError(
                f"could not load the processor ({type(processor_err).__name__}: {processor_err}) nor the "
                f"tokenizer ({type(tokenizer_err).__name__}: {tokenizer_err}) of {name_or_path!r}"
            ) from tokenizer_err


def check_fits(label: str, n_params: int, dtype: str, device: torch.device, free_bytes: int | None = None,
               total_bytes: int | None = None) -> None:
    """A clear error, naming the sizes, when a model's weights alone exceed the GPU's free memory
    (instead of an out-of-memory error half-way through building it). Activations and the KV
    cache need more on top; this only refuses what cannot work at all."""
    if free_bytes is None or total_bytes is None:
        free_bytes, total_bytes = torch.cuda.mem_get_info(device)
    need = n_params * torch.empty(0, dtype=parse_dtype(dtype)).element_size()
    if need > free_bytes:
        raise ValueError(
            f"{label}: {n_params / 1e9:.2f}B parameters take {need / 2**30:.1f} GiB in {dtype}, more than the "
            f"{free_bytes / 2**30:.1f} GiB free of {total_bytes / 2**30:.1f} GiB on {device}; give the model several "
            f"GPUs (gpus: N in the profile shards it over them), a GPU with more memory, or a smaller model")


def check_device(device: str) -> None:
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available on this machine")
    if not (device == "cpu" or device.startswith("cuda")):
        raise ValueError(f"device must be 'cpu' or 'cuda[:N]', got {device!r}")


def to_device(request: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """A built request on the model's device, pixels in the model's dtype."""
    params = next(model.parameters())
    return {k: (v.to(params.device, params.dtype) if k.startswith("pixel_values") else v.to(params.device))
            for k, v in request.items()}
