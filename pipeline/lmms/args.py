"""``model_args`` of the lmms-eval models into the method's configs.

IPCV's settings go by their ``IPCVConfig`` names (``prune_layer=3,reduction_ratio=0.65,as_layers=7,
neighbors=10``; ``ipcv=false`` switches IPCV off), LLM-side pruning by ``llm_`` + the
``LLMPruneConfig`` name (``llm_method=dart,llm_layer=2``; ``llm_ratio`` is short for
``llm_reduction_ratio``); no ``llm_method``, no LLM pruning. A name that is neither, nor a loading
option, is an error: a mistyped setting must not silently leave the model uncompressed.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import ipcv
from ipcv.config import LLM_METHODS

_FALSE = {"false", "0", "no", "off"}
_TRUE = {"true", "1", "yes", "on"}


def as_bool(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE | _FALSE:
        return text in _TRUE
    raise ValueError(f"{name} must be true or false, got {value!r}")


def _coerce(value: Any, default: Any, name: str) -> Any:
    """``value`` (text from the command line, or already typed) as the type of the field's default."""
    if isinstance(default, bool):
        return as_bool(value, name)
    try:
        if isinstance(default, int):
            number = float(value)
            if number != int(number):
                raise ValueError
            return int(number)
        if isinstance(default, float):
            return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a {type(default).__name__}, got {value!r}") from None
    return str(value)


def method_keys() -> set[str]:
    """Every ``model_args`` name ``method_configs`` reads."""
    return ({"ipcv", "llm_ratio"} | {f.name for f in dataclasses.fields(ipcv.IPCVConfig)}
            | {f"llm_{f.name}" for f in dataclasses.fields(ipcv.LLMPruneConfig)})


def method_configs(args: dict[str, Any]) -> tuple[ipcv.IPCVConfig | None, ipcv.LLMPruneConfig | None, dict[str, Any]]:
    """(IPCV config or None, LLM pruning config or None, the arguments that are neither).

    IPCV is on by default (the models are named for it) at the published setting; the configs'
    own checks reject values out of range with their message."""
    rest = dict(args)
    vision_on = as_bool(rest.pop("ipcv", True), "ipcv")
    vision_values: dict[str, Any] = {}
    for field in dataclasses.fields(ipcv.IPCVConfig):
        if field.name in rest:
            vision_values[field.name] = _coerce(rest.pop(field.name), field.default, field.name)
    llm_values: dict[str, Any] = {}
    if "llm_ratio" in rest:
        rest["llm_reduction_ratio"] = rest.pop("llm_ratio")
    for field in dataclasses.fields(ipcv.LLMPruneConfig):
        key = f"llm_{field.name}"
        if key in rest:
            llm_values[field.name] = _coerce(rest.pop(key), field.default, key)
    if vision_values and not vision_on:
        raise ValueError(f"ipcv=false with IPCV settings ({', '.join(vision_values)}): drop one or the other")
    vision = ipcv.IPCVConfig(**vision_values) if vision_on else None
    if llm_values and "method" not in llm_values:
        raise ValueError(f"LLM pruning settings ({', '.join('llm_' + k for k in llm_values)}) without llm_method "
                         f"(one of {', '.join(LLM_METHODS)})")
    llm = ipcv.LLMPruneConfig(**llm_values) if llm_values else None
    return vision, llm, rest
