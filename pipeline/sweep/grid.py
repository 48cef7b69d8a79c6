"""Grid expansion: a profile becomes cells (model x input x method), each with a stable id.

A cell is a pure function of its config; its id is a hash of the config's canonical JSON, so a
sweep can be stopped, resumed and rerun without measuring a finished cell twice.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass, replace
from typing import Any

import ipcv
from pipeline import methods
from pipeline.models import family_for_name, model_depths
from pipeline.sweep.spec import ModelSpec, ProfileError, SweepSpec


@dataclass(frozen=True)
class InputSpec:
    kind: str  # "image" or "video"
    resolution: int
    count: int = 1  # images per request
    frames: int = 0  # video frames
    prompt: str = ""
    source_resolution: int | None = None  # downsampling baseline: the resolution it stands in for

    @property
    def group_resolution(self) -> int:
        return self.source_resolution or self.resolution

    @property
    def key(self) -> str:
        """Compact and stable, e.g. ``image448``, ``video448x8f`` (the gate's figure keys)."""
        return f"{self.kind}{self.resolution}" + (f"x{self.frames}f" if self.frames else "")


# IPCVConfig fields added after outputs existed: a cell at their default keeps the id it had
_VISION_ADDED_LATER = ("as_queries",)


@dataclass(frozen=True)
class Cell:
    model: ModelSpec
    input: InputSpec
    method: str  # a name of pipeline/methods.py
    vision: dict[str, Any] | None
    llm: dict[str, Any] | None
    measurement: dict[str, Any]
    evaluation: dict[str, Any] | None = None  # benchmark tasks scored on this cell

    def config(self) -> dict[str, Any]:
        """Everything that determines the cell's result."""
        model = self.model.model_dump()
        for later in ("weights", "overrides"):  # added later: cells that leave them at defaults keep their ids
            if model[later] == type(self.model).model_fields[later].default:
                del model[later]
        vision = None if self.vision is None else dict(self.vision)
        for later in _VISION_ADDED_LATER if vision is not None else ():  # the same for IPCV settings
            if vision.get(later) == getattr(ipcv.IPCVConfig, later):
                vision.pop(later)
        config = {
            "model": model,
            "input": self.input.__dict__,
            "method": self.method,
            "vision": vision,
            "llm": self.llm,
            "measurement": {k: v for k, v in self.measurement.items() if k != "max_retries"},
        }
        if self.evaluation:  # only when present, so cells without benchmarks keep their ids
            config["evaluation"] = self.evaluation
        return config

    @property
    def id(self) -> str:
        canonical = json.dumps(self.config(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    @property
    def reference_input(self) -> InputSpec:
        """The input of the uncompressed reference this cell is compared with: its own, or for the
        downsampling baseline the full-resolution input it stands in for."""
        if self.input.source_resolution is None:
            return self.input
        return replace(self.input, resolution=self.input.source_resolution, source_resolution=None)

    @property
    def reference_key(self) -> tuple:
        """Cells with the same key share one uncompressed reference (same model, same input)."""
        ref = self.reference_input
        tasks = json.dumps(self.evaluation, sort_keys=True) if self.evaluation else None
        return (self.model.name, ref.kind, ref.resolution, ref.count, ref.frames, ref.prompt, tasks)

    def label(self) -> str:
        what = f"{self.input.kind} {self.input.resolution}" + (f"x{self.input.frames}f" if self.input.frames else "")
        return f"{self.model.name} | {what} | {self.method}"

    @property
    def key(self) -> str:
        """``model|input|method``: names a cell among cells of one setting per method (the gate)."""
        return f"{self.model.name}|{self.input.key}|{self.method}"


def _product(grid: Any) -> list[dict[str, Any]]:
    fields = grid.model_dump()
    keys = list(fields)
    return [dict(zip(keys, values)) for values in itertools.product(*(fields[k] for k in keys))]


def _configs(grid: Any, config_class: type, where: str) -> list[dict[str, Any]]:
    """Every combination of a method grid, validated by the method's own config class."""
    if grid is None:
        return []
    out = []
    for values in _product(grid):
        try:
            out.append(config_class(**values).to_dict())
        except ValueError as err:
            raise ProfileError(f"{where}: {err}") from None
    return out


def _inputs(spec: SweepSpec) -> list[InputSpec]:
    out = []
    prompt = spec.inputs.prompt
    if spec.inputs.images:
        out += [InputSpec("image", r, count=spec.inputs.images.count, prompt=prompt) for r in spec.inputs.images.resolutions]
    if spec.inputs.videos:
        v = spec.inputs.videos
        out += [InputSpec("video", r, frames=f, prompt=prompt) for f in v.frames for r in v.resolutions]
    return out


def expand(spec: SweepSpec) -> list[Cell]:
    """All cells of a profile, in a stable order; duplicates (same id) appear once."""
    visions = _configs(spec.methods.ipcv, ipcv.IPCVConfig, "methods.ipcv")
    llms = _configs(spec.methods.llm, ipcv.LLMPruneConfig, "methods.llm")
    measurement = spec.measurement.model_dump()
    evaluation = None
    if spec.evaluation:
        evaluation = {"max_new_tokens": spec.evaluation.max_new_tokens,
                      "tasks": [t.cell_config() for t in spec.evaluation.tasks]}
    for model in spec.models:
        _check_settings(model, visions, llms)
    cells: dict[str, Cell] = {}
    for model in spec.models:
        for inp in _inputs(spec):
            for method, cell_input, vision, llm in methods.expand(spec.methods, inp, visions, llms):
                cell = Cell(model, cell_input, method, vision, llm, measurement, evaluation)
                cells.setdefault(cell.id, cell)
    if not cells:
        raise ProfileError("methods: the profile makes no cells (no baseline and no method switched on)")
    return list(cells.values())


def _check_settings(spec: ModelSpec, visions: list[dict[str, Any]], llms: list[dict[str, Any]]) -> None:
    """Settings that name blocks or layers a model does not have, or that its family cannot serve
    (InternVL: a per-image budget), fail here, before anything runs, for models whose family or
    depths are known without loading them (presets, local checkpoints, published architectures)."""
    model = spec.name
    family = family_for_name(model)
    for values in visions if family else []:
        try:
            family.check_vision_settings(values)
        except ValueError as err:
            raise ProfileError(f"methods.ipcv: {err} (model {model})") from None
    depths = model_depths(model, spec.overrides)
    if depths is None:
        return
    vision_depth, llm_layers = depths
    for section, configs, config_class, depth in (("methods.ipcv", visions, ipcv.IPCVConfig, vision_depth),
                                                  ("methods.llm", llms, ipcv.LLMPruneConfig, llm_layers)):
        for values in configs:
            try:
                config_class(**values).check_depth(depth)
            except ValueError as err:
                raise ProfileError(f"{section}: {err} (model {model})") from None
