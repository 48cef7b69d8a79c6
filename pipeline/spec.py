"""Sweep profiles (YAML), validated with pydantic.

A wrong profile fails before anything runs, with a message that names the file, the key path
(e.g. ``methods.ipcv.reduction_ratio.1``) and what was expected.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSpec(_Strict):
    """A model to sweep: a tiny preset, a hub id or a local path."""

    name: str
    dtype: Literal["float32", "bfloat16", "float16"] = "bfloat16"
    attn_implementation: Literal["eager", "sdpa", "flash_attention_2"] = "sdpa"
    gpus: float = Field(0, ge=0, description="GPUs per worker (0: CPU); several for models that need them")
    batch: int = Field(1, ge=1, le=1, description="prompts per request (only 1 is measured so far)")
    seed: int = Field(0, ge=0, description="weights seed of tiny presets")


def _multiple_of_28(value: int) -> int:
    if value < 28 or value % 28:
        raise ValueError(f"resolution {value} is not a positive multiple of 28")
    return value


# an image side the Qwen-VL patch (14) and merge (2) layout accepts
Resolution = Annotated[int, AfterValidator(_multiple_of_28)]


class ImageInputs(_Strict):
    resolutions: list[Resolution] = Field(min_length=1)
    count: int = Field(1, ge=1, description="images per request")


class VideoInputs(_Strict):
    frames: list[int] = Field(min_length=1)
    resolutions: list[Resolution] = Field(min_length=1)

    @field_validator("frames")
    @classmethod
    def _even(cls, values: list[int]) -> list[int]:
        for v in values:
            if v < 2 or v % 2:
                raise ValueError(f"frame count {v} is not an even number >= 2")
        return values


class Inputs(_Strict):
    images: ImageInputs | None = None
    videos: VideoInputs | None = None
    prompt: str = "Describe the picture in one sentence."

    @model_validator(mode="after")
    def _something(self) -> "Inputs":
        if self.images is None and self.videos is None:
            raise ValueError("give images and/or videos")
        return self


class IPCVGrid(_Strict):
    prune_layer: list[int] = [3]
    reduction_ratio: list[float] = [0.65]
    as_layers: list[int] = [7]
    neighbors: list[int] = [10]
    selection: list[Literal["feature_diff", "random"]] = ["feature_diff"]
    restore: list[Literal["ngr", "frozen"]] = ["ngr"]
    budget: list[Literal["global", "per_image"]] = ["global"]
    neighbor_scope: list[Literal["global", "same_image"]] = ["global"]


class LLMGrid(_Strict):
    method: list[Literal["dart", "fastv"]] = ["dart"]
    layer: list[int] = [2]
    reduction_ratio: list[float] = [0.778]


class Downsample(_Strict):
    """The plain-downsampling baseline: the uncompressed model on smaller inputs."""

    resolutions: list[Resolution] = Field(min_length=1)


class Methods(_Strict):
    baseline: bool = True
    ipcv: IPCVGrid | None = None
    llm: LLMGrid | None = None
    stacked: bool = Field(False, description="every IPCV setting combined with every LLM setting")
    random_selection: bool = Field(False, description="IPCV with random token selection at each IPCV budget")
    downsample: Downsample | None = None


class Measurement(_Strict):
    warmup: int = Field(1, ge=0)
    repeats: int = Field(3, ge=1)
    max_new_tokens: int = Field(8, ge=1)
    count_flops: bool = True
    max_retries: int = Field(2, ge=0, description="retries of a cell whose worker died")


class Tracking(_Strict):
    project: str = "ipcv-study"
    entity: str | None = None
    mode: Literal["offline", "online", "disabled"] = "offline"
    group: str | None = None


TaskName = Literal["mmbench", "textvqa", "pope", "ocrbench", "mvbench"]


class TaskSpec(_Strict):
    """One benchmark to score every cell on (docs/accuracy.md)."""

    task: TaskName
    source: str = Field("synthetic", description="'synthetic', a data file or folder, a save_to_disk folder, "
                                                  "or hf://<dataset id>")
    split: str | None = None
    limit: int | None = Field(None, ge=1, description="first N rows (synthetic: how many to render; default 8)")
    media_root: str | None = Field(None, description="folder that relative image/video paths are under")
    frames: int = Field(8, description="frames sampled per video (video tasks)")
    seed: int = Field(0, ge=0, description="seed of the synthetic data")

    @field_validator("frames")
    @classmethod
    def _even_frames(cls, value: int) -> int:
        if value < 2 or value % 2:
            raise ValueError(f"frame count {value} is not an even number >= 2")
        return value

    def cell_config(self) -> dict[str, Any]:
        """What the cell records: real paths made absolute (relative to where the sweep runs)."""
        data = self.model_dump()
        if self.source == "synthetic":
            data["limit"] = self.limit or 8
        elif not self.source.startswith("hf://"):
            data["source"] = str(Path(self.source).expanduser().resolve())
        if self.media_root:
            data["media_root"] = str(Path(self.media_root).expanduser().resolve())
        return data


class Evaluation(_Strict):
    tasks: list[TaskSpec] = Field(min_length=1)
    max_new_tokens: int = Field(16, ge=1, description="answer length limit")


class SweepSpec(_Strict):
    name: str
    output_dir: str = "results"
    models: list[ModelSpec] = Field(min_length=1)
    inputs: Inputs
    methods: Methods = Methods()
    measurement: Measurement = Measurement()
    evaluation: Evaluation | None = None
    tracking: Tracking = Tracking()


class ProfileError(ValueError):
    """A profile that cannot be used; the message names the file and the key path."""


def load_spec(path: str | Path) -> SweepSpec:
    path = Path(path)
    if not path.is_file():
        raise ProfileError(f"{path}: no such profile file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ProfileError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ProfileError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return parse_spec(data, source=str(path))


def parse_spec(data: dict[str, Any], source: str = "<profile>") -> SweepSpec:
    try:
        return SweepSpec.model_validate(data)
    except ValidationError as err:
        lines = []
        for e in err.errors():
            where = ".".join(str(p) for p in e["loc"]) or "(top level)"
            got = f" (got {e['input']!r})" if "input" in e and not isinstance(e["input"], dict) else ""
            lines.append(f"  {where}: {e['msg']}{got}")
        raise ProfileError(f"{source}: invalid profile\n" + "\n".join(lines)) from None
