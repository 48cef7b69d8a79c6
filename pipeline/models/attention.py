"""PyTorch's own flash varlen kernel as the attention of a Qwen-VL vision tower.

transformers runs a Qwen-VL tower's attention in one of two ways (its modeling files): an
implementation whose name contains "flash" gets every segment of the call (image, frame, window)
in one varlen call with ``cu_seqlens``; any other (sdpa, eager) gets one call per segment, from a
Python loop that first reads the segment lengths to the host. For a 16-frame video that loop is 8
attention calls in each of 32 blocks, in the unpatched tower and under IPCV alike: a host cost
that hides the GPU work IPCV saves (docs/benchmarks.md). Deployments run flash-attn's varlen
kernel there; ``torch_flash_varlen`` is the same kind of kernel as PyTorch ships it
(``torch.nn.attention.varlen.varlen_attn``, PyTorch >= 2.10), so both towers can be measured on
the varlen path where the flash-attn package is not installed.

It is an attention for vision towers only (bidirectional, no mask, no dropout: inference), and a
CUDA kernel in half precision; anything else is refused with the reason, never run another way
under its name. ``use_torch_flash_varlen(module)`` sets it: transformers' own
``set_attn_implementation`` takes every name with "flash" in it for a hub kernel to download.
``load_model(..., attn_implementation="torch_flash_varlen")`` (a profile's ``attn_implementation``)
loads the model on sdpa and sets it on the vision tower: the language model stays on sdpa.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ipcv.algorithm import to_device

NAME = "torch_flash_varlen"
# the attention implementations a model of the study is loaded with (profiles, CLI, load_model)
IMPLEMENTATIONS = ("eager", "sdpa", "flash_attention_2", NAME)
# What varlen_attn has a kernel for (tests add the CPU and float32 with a reference in its place).
KERNEL_DEVICES = ("cuda",)
KERNEL_DTYPES = (torch.float16, torch.bfloat16)


def _kernel():
    """``varlen_attn``, looked up at the call (tests put a reference in its place on a CPU)."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError as err:  # PyTorch < 2.10
        raise RuntimeError(f"{NAME} needs torch.nn.attention.varlen (PyTorch >= 2.10); this is "
                           f"torch {torch.__version__}") from err
    return varlen_attn


def _check(query: torch.Tensor, attention_mask: Any, dropout: float, is_causal: bool) -> None:
    if query.device.type not in KERNEL_DEVICES:
        raise RuntimeError(f"{NAME} runs PyTorch's flash kernel, which is CUDA only; this tensor is on "
                           f"{query.device.type}: use sdpa there")
    if query.dtype not in KERNEL_DTYPES:
        raise RuntimeError(f"{NAME} runs PyTorch's flash kernel, which takes float16 / bfloat16; got "
                           f"{query.dtype}: use sdpa for float32")
    if attention_mask is not None or is_causal or dropout:
        raise RuntimeError(f"{NAME} is an attention for vision towers: bidirectional, no mask, no dropout "
                           "(use sdpa or flash_attention_2 for a language model)")


def torch_flash_varlen(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                       attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                       cu_seq_lens_q: torch.Tensor | None = None, cu_seq_lens_k: torch.Tensor | None = None,
                       max_length_q: int | None = None, max_length_k: int | None = None,
                       is_causal: bool | None = None, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """transformers' attention interface (``query [B, H, Lq, D]``, keys and values
    ``[B, H, Lk, D]``; returns ``[B, Lq, H, D]``) on ``varlen_attn``'s packed ``[T, H, D]``. With
    ``cu_seq_lens_q`` / ``_k`` the B = 1 sequence holds the segments they bound (queries and keys may
    be bounded differently: IPCV's kept-query attention); without, each of the B rows is one."""
    _check(query, attention_mask, dropout, bool(is_causal))
    batch, heads, q_len, head_dim = query.shape
    k_len = key.shape[2]
    if cu_seq_lens_q is None:
        step_q = torch.arange(batch + 1, device=query.device, dtype=torch.int32)
        cu_seq_lens_q, cu_seq_lens_k = step_q * q_len, step_q * k_len
        max_length_q, max_length_k = q_len, k_len
    elif batch != 1:
        raise ValueError(f"{NAME}: segments bounded by cu_seq_lens come in one packed row, got a batch of {batch}")
    q, k, v = (t.transpose(1, 2).reshape(-1, heads, head_dim) for t in (query, key, value))
    cu_k = cu_seq_lens_q if cu_seq_lens_k is None else cu_seq_lens_k
    cu_q, cu_k = (_on(query.device, c) for c in (cu_seq_lens_q, cu_k))
    kernel = _kernel()
    extra = {}
    if scaling is not None and not math.isclose(scaling, head_dim**-0.5, rel_tol=1e-6):
        if "scale" not in _arguments(kernel):
            raise RuntimeError(f"{NAME}: this torch's varlen_attn has no scale argument and the module scales by "
                               f"{scaling}, not 1/sqrt({head_dim})")
        extra["scale"] = scaling
    if max_length_q is None:  # not handed on: read from the boundaries (the host waits for the device)
        max_length_q = int((cu_q[1:] - cu_q[:-1]).max())
    if max_length_k is None:
        max_length_k = max_length_q if cu_seq_lens_k is None else int((cu_k[1:] - cu_k[:-1]).max())
    if "num_splits" in _arguments(kernel):  # pins the flash kernel (see _arguments)
        extra["num_splits"] = 1
    out = kernel(q, k, v, cu_q, cu_k, int(max_length_q), int(max_length_k), **extra)
    return out.view(batch, q_len, heads, head_dim), None


def _on(device: torch.device, bounds: torch.Tensor) -> torch.Tensor:
    """Segment boundaries as the kernel takes them: int32, contiguous, on its device. Boundaries
    kept on the host go as IPCV's host values do (``ipcv.algorithm.to_device``: the host does not
    wait for the device, and the copy is refused during a graph's capture; the tower called with
    its layout on the host puts them on the device itself, for a graph)."""
    if bounds.device.type == "cpu" and device.type == "cuda":
        bounds = to_device(bounds.to(torch.int32), device)
    return bounds.to(device=device, dtype=torch.int32).contiguous()


@functools.lru_cache(maxsize=8)
def _arguments(kernel: Callable[..., Any]) -> frozenset[str]:
    """The arguments ``kernel`` (this torch's ``varlen_attn``) takes, looked up once per kernel
    (every block calls it). ``scale`` came in PyTorch 2.11; with ``num_splits`` (2.12 on) PyTorch
    2.14 keeps its flash kernel, where it would otherwise route a Hopper or Blackwell call with
    segments over 128 tokens to cuDNN, a kernel these calls (bounds of the longest segment, empty
    segments) were not checked against. One split is what the flash kernel itself runs for a call
    without a paged cache, so the result is unchanged."""
    return frozenset(inspect.signature(kernel).parameters)


def register() -> None:
    """Make ``NAME`` known to transformers' attention lookup (idempotent)."""
    from transformers import AttentionInterface

    AttentionInterface.register(NAME, torch_flash_varlen)


def use_torch_flash_varlen(module: nn.Module) -> nn.Module:
    """Run every transformers attention module of ``module`` (a vision tower) with
    ``torch_flash_varlen``: the name is set on the configs the modules read it from."""
    from transformers import PreTrainedConfig

    register()
    for sub in module.modules():
        config = getattr(sub, "config", None)
        if isinstance(config, PreTrainedConfig):
            config._attn_implementation = NAME
    return module


def check_setting(dtype: str, device: str) -> None:
    """Refuse, before anything is loaded, a setting the kernel cannot run."""
    if dtype not in ("bfloat16", "float16"):
        raise ValueError(f"attn_implementation {NAME} runs PyTorch's flash kernel, which takes bfloat16 / float16; "
                         f"got dtype {dtype}")
    if not device.startswith("cuda"):
        raise ValueError(f"attn_implementation {NAME} runs PyTorch's flash kernel, which is CUDA only; got device "
                         f"{device}")


def on_vision_tower(model: nn.Module) -> nn.Module:
    """``model`` (loaded on sdpa) with its vision tower on ``torch_flash_varlen``; a family whose
    tower does not pack its inputs with ``cu_seqlens`` (InternViT's tiles) is refused."""
    from pipeline.models.registry import family_of

    family = family_of(model)
    check_family(family)
    use_torch_flash_varlen(family.tower(model))
    return model


def check_family(family: Any) -> None:
    """Refuse a model family (``pipeline.models.ModelFamily``) whose tower does not pack its
    inputs with ``cu_seqlens``: transformers' varlen path never runs there."""
    if not family.varlen_vision:
        raise ValueError(f"attn_implementation {NAME} is for vision towers that pack their images into one sequence "
                         f"(Qwen-VL); {family.label}'s tower takes its tiles as a batch: use sdpa")
