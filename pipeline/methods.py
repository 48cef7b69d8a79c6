"""The methods a sweep compares, registered once: what each is, which configs it carries, how a
profile's ``methods`` section turns into its cells, its label, order and colour.

Grid fields come from the method's config dataclass (``ipcv.IPCVConfig``, ``ipcv.LLMPruneConfig``):
their names, types and defaults define what a profile may sweep, the ``ipcv_*`` / ``llm_*``
columns of a row, and the defaults a label leaves out. A new LLM-side method added to
``LLMPruneConfig.method`` gets its own entry and a stacked one here without further code; a new
vision-side method is one entry (and its config fields). The grid (``pipeline/sweep/grid.py``),
the profile schema (``pipeline/sweep/spec.py``), the report's ordering and colours and the CLI
read this module.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, get_type_hints

import ipcv
from ipcv.config import LLM_METHODS


@dataclass(frozen=True)
class GridField:
    """One config field a profile may sweep: its name, type and the config's default."""

    name: str
    type: Any
    default: Any


def grid_fields(config_class: type, fixed: tuple[str, ...]) -> tuple[GridField, ...]:
    hints = get_type_hints(config_class)
    return tuple(GridField(f.name, hints[f.name], f.default)
                 for f in dataclasses.fields(config_class) if f.name not in fixed)


# IPCV's seed and DART's pivot counts stay at their defaults in a sweep.
VISION_FIELDS = grid_fields(ipcv.IPCVConfig, fixed=("seed",))
LLM_FIELDS = grid_fields(ipcv.LLMPruneConfig, fixed=("pivot_image_tokens", "pivot_text_tokens"))
VISION_PREFIX, LLM_PREFIX = "ipcv_", "llm_"


def vision_column(field: str) -> str:
    return VISION_PREFIX + field


def llm_column(field: str) -> str:
    return LLM_PREFIX + field


# (input, vision config, llm config) variants a method makes of one input of the grid
Variants = list[tuple[Any, dict[str, Any] | None, dict[str, Any] | None]]
Expand = Callable[[Any, Any, list[dict[str, Any]], list[dict[str, Any]]], Variants]


@dataclass(frozen=True)
class Method:
    """A method of the study. ``expand(methods_section, input, ipcv_configs, llm_configs)`` gives
    its cells' (input, vision config, LLM config) for one input of the grid."""

    name: str
    description: str
    colour: str
    expand: Expand
    vision: bool = False  # carries an IPCVConfig
    llm: str | None = None  # carries an LLMPruneConfig of this method
    changes_input: bool = False  # sends the model another input than the one it is compared with

    @property
    def stages(self) -> frozenset[str]:
        """The stages whose work the method can change ("vision", "prefill"); the others see the
        same input as without it (IPCV hands the LLM every visual token), so their cost may not move."""
        vision = self.vision or self.changes_input
        prefill = self.llm is not None or self.changes_input
        return frozenset({"vision"} if vision else set()) | frozenset({"prefill"} if prefill else set())


def _baseline(m: Any, inp: Any, visions: list, llms: list) -> Variants:
    return [(inp, None, None)] if m.baseline else []


def _ipcv(m: Any, inp: Any, visions: list, llms: list) -> Variants:
    return [(inp, v, None) for v in visions]


def _random(m: Any, inp: Any, visions: list, llms: list) -> Variants:
    if not m.random_selection:
        return []
    return [(inp, {**v, "selection": "random"}, None) for v in visions if v["selection"] != "random"]


def _llm_only(name: str) -> Expand:
    return lambda m, inp, visions, llms: [(inp, None, c) for c in llms if c["method"] == name]


def _stacked(name: str) -> Expand:
    def expand(m: Any, inp: Any, visions: list, llms: list) -> Variants:
        if not m.stacked:
            return []
        return [(inp, v, c) for v in visions for c in llms if c["method"] == name]

    return expand


def _downsample(m: Any, inp: Any, visions: list, llms: list) -> Variants:
    if m.downsample is None or inp.kind != "image":
        return []
    return [(replace(inp, resolution=low, source_resolution=inp.resolution), None, None)
            for low in m.downsample.resolutions if low < inp.resolution]


# matplotlib's tab10, in registry order, so that colours stay what they were
_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
            "#bcbd22", "#17becf")
_LLM_DESCRIPTIONS = {"dart": "DART in the LLM prefill (duplication-aware selection)",
                     "fastv": "FastV in the LLM prefill (attention from the last prompt token)"}


def _registry() -> dict[str, Method]:
    entries = [
        Method("baseline", "the uncompressed model", "", _baseline),
        Method("ipcv", "IPCV in the vision encoder", "", _ipcv, vision=True),
        Method("random", "IPCV's pipeline with random token selection at the same budget (control)", "", _random,
               vision=True),
        *(Method(n, _LLM_DESCRIPTIONS.get(n, f"{n} in the LLM prefill"), "", _llm_only(n), llm=n) for n in LLM_METHODS),
        *(Method(f"ipcv+{n}", f"IPCV stacked with {n}", "", _stacked(n), vision=True, llm=n) for n in LLM_METHODS),
        Method("downsample", "the uncompressed model on a smaller image (plain downsampling baseline)", "",
               _downsample, changes_input=True),
    ]
    return {m.name: replace(m, colour=_COLOURS[i % len(_COLOURS)]) for i, m in enumerate(entries)}


METHODS: dict[str, Method] = _registry()


def method_colour(name: str) -> str:
    """The method's colour in every figure; a name the registry does not know gets one of two
    spare colours, stably by its name."""
    if name in METHODS:
        return METHODS[name].colour
    return _COLOURS[(len(METHODS) + zlib.crc32(name.encode()) % 2) % len(_COLOURS)]


def order(name: str) -> int:
    names = list(METHODS)
    return names.index(name) if name in names else len(names)


def expand(methods_section: Any, inp: Any, visions: list[dict[str, Any]], llms: list[dict[str, Any]]
           ) -> list[tuple[str, Any, dict[str, Any] | None, dict[str, Any] | None]]:
    """Every (method, input, vision config, LLM config) the profile's ``methods`` asks for on one input."""
    return [(m.name, i, v, c) for m in METHODS.values() for i, v, c in m.expand(methods_section, inp, visions, llms)]


def _given(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and value != value)


def _num(value: Any) -> str:
    return f"{value:g}" if isinstance(value, (int, float)) and _given(value) else str(value)


_VISION_DEFAULTS = {f.name: f.default for f in VISION_FIELDS}
_SHOWN_WHEN_CHANGED = ("budget", "neighbor_scope", "restore")


def setting_label(row: Mapping[str, Any]) -> str:
    """A readable label of a cell's setting from its row's config columns, e.g. ``ipcv K=3
    r=0.65``, ``fastv K'=2 r'=0.778``, ``downsample 224px``; settings at the config's default are
    left out."""
    method = str(row.get("method"))
    if method == "baseline":
        return "baseline"
    if method == "downsample":
        return f"downsample {row.get('resolution')}px"
    parts = []
    if _given(row.get(vision_column("reduction_ratio"))):
        get = lambda f: row.get(vision_column(f))  # noqa: E731
        vision = f"K={_num(get('prune_layer'))} r={_num(get('reduction_ratio'))}"
        extras = [f"A={_num(get('as_layers'))}"] if _given(get("as_layers")) and get("as_layers") != _VISION_DEFAULTS["as_layers"] else []
        extras += [str(get(f)) for f in _SHOWN_WHEN_CHANGED if _given(get(f)) and get(f) != _VISION_DEFAULTS[f]]
        if _given(get("as_queries")) and get("as_queries") != _VISION_DEFAULTS["as_queries"]:
            extras.append(f"{get('as_queries')}-queries")
        parts.append(" ".join([method.split("+")[0], vision, *extras]))
    if _given(row.get(llm_column("method"))):
        parts.append(f"{row[llm_column('method')]} K'={_num(row.get(llm_column('layer')))} "
                     f"r'={_num(row.get(llm_column('reduction_ratio')))}")
    return " + ".join(parts) or method
