"""FLOPs per stage by three independent routes: analytic, fvcore, and torch's FlopCounterMode.

Convention everywhere: **FLOPs = 2 x multiply-adds**, matrix products only (projections,
attention scores and weighted sums, MLPs, convolution, merger, IPCV's distance matrix).
fvcore counts one per multiply-add, so its totals are doubled here; its norm handles are switched
off and elementwise operators (activations, softmax, rotary, NGR gathers) are outside the
convention. fvcore has no handle for attention kernels: we add ``aten::scaled_dot_product_attention``
and flash-attn's dense forward (all ``Lq x Lk`` query-key pairs, causal or not: the same
convention as the analytic formulas) and ``aten::cdist``. flash-attn's *varlen* forward cannot be counted from traced
shapes (its segment lengths are tensor values): it is reported as uncounted, never as 0.
"""

from __future__ import annotations

from math import prod
from typing import Any

import torch
from torch import nn

from pipeline.models import family_of

VISION, PREFILL = "vision", "prefill"

# elementwise or data-movement operators: no matrix product, zero by the convention
_ELEMENTWISE = {
    "aten::mul", "aten::add", "aten::sub", "aten::div", "aten::neg", "aten::sigmoid", "aten::silu",
    "aten::gelu", "aten::mean", "aten::pow", "aten::rsqrt", "aten::cos", "aten::sin", "aten::softmax",
    "aten::add_", "aten::mul_", "aten::embedding", "aten::embedding_bag", "aten::masked_scatter",
    "aten::meshgrid", "aten::repeat", "aten::repeat_interleave", "aten::topk", "aten::sort",
    "aten::argmax", "aten::cumsum", "aten::isin", "aten::isfinite", "aten::sum", "aten::le",
    "aten::linalg_vector_norm", "aten::nonzero_numpy", "aten::numel", "aten::new_ones",
    "aten::resolve_conj", "aten::resolve_neg", "aten::layer_norm", "aten::group_norm",
    "aten::batch_norm", "aten::abs", "aten::tanh", "aten::exp", "aten::where", "aten::masked_fill",
    "aten::bitwise_not", "aten::__and__", "aten::eq", "aten::ne", "aten::gt", "aten::lt", "aten::ge",
    "aten::clamp", "aten::div_", "aten::sub_", "aten::fill_", "aten::zero_", "aten::maximum",
    "aten::minimum", "aten::max", "aten::min", "aten::any", "aten::all", "aten::searchsorted",
    "aten::bincount", "aten::unique_consecutive", "aten::floor_divide", "aten::remainder",
    "aten::normal_", "aten::uniform_", "aten::quick_gelu", "aten::erf", "aten::sqrt",
    "aten::reciprocal", "aten::square", "aten::scatter", "aten::scatter_", "aten::gather",
    "aten::index_put_", "aten::masked_select", "aten::logical_not", "aten::logical_and",
    "aten::pad", "aten::argsort", "aten::flip", "aten::roll", "aten::clamp_min", "aten::expand_as",
    "aten::numpy_T", "aten::t", "aten::transpose", "aten::permute", "aten::contiguous",
    "aten::index_copy_", "aten::index_fill_", "aten::index_select", "aten::diff",
}
_VARLEN = {"flash_attn::_flash_attn_varlen_forward", "flash_attn::flash_attn_varlen_func",
           "torch_attn::_varlen_attn"}  # the last: PyTorch's varlen_attn (torch_flash_varlen)


def _shape(value: Any) -> list[int] | None:
    return value.type().sizes() if value.isCompleteTensor() else None


def sdpa_macs(inputs: list[Any], outputs: list[Any]) -> int:
    """``q [.., Lq, E] k [.., Lk, E] v [.., Lk, Ev]``: ``Lq·Lk·(E + Ev)`` per batch x head."""
    q, k, v = (_shape(x) for x in inputs[:3])
    return prod(q[:-2]) * q[-2] * k[-2] * (q[-1] + v[-1])


def cdist_macs(inputs: list[Any], outputs: list[Any]) -> int:
    a, b = _shape(inputs[0]), _shape(inputs[1])
    return prod(a[:-1]) * b[-2] * a[-1]


def flash_dense_macs(inputs: list[Any], outputs: list[Any]) -> int:
    """flash-attn dense forward: ``q [B, Lq, H, E]``, ``k/v [B, Lk, Hkv, E]``."""
    (b, lq, h, e), lk = _shape(inputs[0]), _shape(inputs[1])[1]
    return b * h * lq * lk * 2 * e


def _zero(inputs: list[Any], outputs: list[Any]) -> int:
    return 0


class _Positional(nn.Module):
    """fvcore traces positional tensors; this restores the keyword call of the model."""

    def __init__(self, model: nn.Module, keys: list[str], extra: dict[str, Any]) -> None:
        super().__init__()
        self.model, self.keys, self.extra = model, keys, extra

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        out = self.model(**dict(zip(self.keys, tensors)), **self.extra)
        return out.logits


def stage_modules(model: nn.Module) -> dict[str, list[nn.Module]]:
    return family_of(model).stage_modules(model)


def _names(root: nn.Module, modules: list[nn.Module]) -> list[str]:
    lookup = {id(m): name for name, m in root.named_modules()}
    return [lookup[id(m)] for m in modules]


def fvcore_flops(model: nn.Module, request: dict[str, torch.Tensor]) -> tuple[dict[str, int], dict[str, int]]:
    """FLOPs per stage of one prefill forward traced by fvcore, and the operators it skipped."""
    from fvcore.nn import FlopCountAnalysis

    keys = list(request)
    wrapper = _Positional(model, keys, {"use_cache": False, "logits_to_keep": 1})
    analysis = FlopCountAnalysis(wrapper, tuple(request[k] for k in keys))
    analysis.set_op_handle(
        **{
            "aten::scaled_dot_product_attention": sdpa_macs,
            "aten::cdist": cdist_macs,
            "flash_attn::_flash_attn_forward": flash_dense_macs,
            # norms are outside the convention; a None handle would not replace fvcore's default
            "aten::layer_norm": _zero,
            "aten::group_norm": _zero,
            "aten::batch_norm": _zero,
        }
    )
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    analysis.tracer_warnings("none")
    with torch.inference_mode(False), torch.no_grad():
        by_module = analysis.by_module()
    out = {}
    for stage, modules in stage_modules(model).items():
        # rotary embeddings are outside the convention (transformers 5.17 traces Qwen2's as a matmul)
        out[stage] = 2 * sum(by_module.get(f"model.{name}", 0) - by_module.get(f"model.{name}.rotary_emb", 0)
                             for name in _names(model, modules))
    skipped = {op: n for op, n in analysis.unsupported_ops().items() if op not in _ELEMENTWISE}
    return out, skipped


def flop_counter_flops(model: nn.Module, request: dict[str, torch.Tensor]) -> dict[str, int]:
    """FLOPs per stage of one prefill forward by ``torch.utils.flop_counter.FlopCounterMode``
    (already 2 per multiply-add; attention by its own rules, full Lq·Lk pairs)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(**request, use_cache=False, logits_to_keep=1)
    counts = counter.get_flop_counts()
    out = {}
    for stage, modules in stage_modules(model).items():
        total = 0
        for name in _names(model, modules):
            suffix = "." + name
            total += sum(sum(v.values()) for k, v in counts.items() if k.endswith(suffix))
            total -= sum(sum(v.values()) for k, v in counts.items() if k.endswith(suffix + ".rotary_emb"))
        out[stage] = total
    return out
