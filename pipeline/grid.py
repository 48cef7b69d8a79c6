"""Grid expansion: a profile becomes cells (model x input x method), each with a stable id.

A cell is a pure function of its config; its id is a hash of the config's canonical JSON, so a
sweep can be stopped, resumed and rerun without measuring a finished cell twice.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass
from typing import Any

import ipcv
from pipeline.spec import ModelSpec, ProfileError, SweepSpec


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


@dataclass(frozen=True)
class Cell:
    model: ModelSpec
    input: InputSpec
    method: str  # baseline | ipcv | random | dart | fastv | ipcv+dart | ipcv+fastv | downsample
    vision: dict[str, Any] | None
    llm: dict[str, Any] | None
    measurement: dict[str, Any]

    def config(self) -> dict[str, Any]:
        """Everything that determines the cell's result."""
        return {
            "model": self.model.model_dump(),
            "input": self.input.__dict__,
            "method": self.method,
            "vision": self.vision,
            "llm": self.llm,
            "measurement": {k: v for k, v in self.measurement.items() if k != "max_retries"},
        }

    @property
    def id(self) -> str:
        canonical = json.dumps(self.config(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    @property
    def reference_key(self) -> tuple:
        """Cells with the same key share one uncompressed reference (same model, same input)."""
        return (self.model.name, self.input.kind, self.input.resolution, self.input.count, self.input.frames, self.input.prompt)

    def label(self) -> str:
        what = f"{self.input.kind} {self.input.resolution}" + (f"x{self.input.frames}f" if self.input.frames else "")
        return f"{self.model.name} | {what} | {self.method}"


def _product(grid: Any) -> list[dict[str, Any]]:
    fields = grid.model_dump()
    keys = list(fields)
    return [dict(zip(keys, values)) for values in itertools.product(*(fields[k] for k in keys))]


def _vision_configs(spec: SweepSpec) -> list[dict[str, Any]]:
    if spec.methods.ipcv is None:
        return []
    out = []
    for values in _product(spec.methods.ipcv):
        try:
            out.append(ipcv.IPCVConfig(**values).to_dict())
        except ValueError as err:
            raise ProfileError(f"methods.ipcv: {err}") from None
    return out


def _llm_configs(spec: SweepSpec) -> list[dict[str, Any]]:
    if spec.methods.llm is None:
        return []
    out = []
    for values in _product(spec.methods.llm):
        try:
            out.append(ipcv.LLMPruneConfig(**values).to_dict())
        except ValueError as err:
            raise ProfileError(f"methods.llm: {err}") from None
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
    visions, llms = _vision_configs(spec), _llm_configs(spec)
    measurement = spec.measurement.model_dump()
    methods: list[tuple[str, dict | None, dict | None]] = []
    if spec.methods.baseline:
        methods.append(("baseline", None, None))
    methods += [("ipcv", v, None) for v in visions]
    if spec.methods.random_selection:
        methods += [("random", {**v, "selection": "random"}, None) for v in visions if v["selection"] != "random"]
    methods += [(l["method"], None, l) for l in llms]
    if spec.methods.stacked:
        methods += [(f"ipcv+{l['method']}", v, l) for v in visions for l in llms]
    cells: dict[str, Cell] = {}
    for model in spec.models:
        for inp in _inputs(spec):
            for method, vision, llm in methods:
                cell = Cell(model, inp, method, vision, llm, measurement)
                cells.setdefault(cell.id, cell)
            if spec.methods.downsample and inp.kind == "image":
                for low in spec.methods.downsample.resolutions:
                    if low < inp.resolution:
                        small = InputSpec("image", low, count=inp.count, prompt=inp.prompt, source_resolution=inp.resolution)
                        cell = Cell(model, small, "downsample", None, None, measurement)
                        cells.setdefault(cell.id, cell)
    return list(cells.values())
