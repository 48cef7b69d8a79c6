"""Sweep profiles (YAML), validated with pydantic.

A wrong profile fails before anything runs, with a message that names the file, the key path
(e.g. ``methods.ipcv.reduction_ratio.1``) and what was expected. The method grids are derived from
the methods' config dataclasses (``pipeline/methods.py``); resolutions and frame counts are checked
against what the profile's model families accept (``pipeline/models/``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    create_model,
    field_validator,
    model_validator,
)

from pipeline import methods
from pipeline.evaluation.tasks import TASKS
from pipeline.models import DTYPES, Requirements, attention, requirements_for, supported_requirements


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSpec(_Strict):
    """A model to sweep: a tiny preset, a hub id or a local path; or, with ``weights: random``, a
    published architecture by its hub id, built with seeded random weights (costs at real size
    without a download; its quality figures are fidelity of random weights, never quality)."""

    name: str = Field(description="a tiny preset (tiny-qwen2-vl, ...), a hub id or a local checkpoint folder")
    dtype: Literal[tuple(DTYPES)] = Field("bfloat16", description="weights and activations dtype (on a CPU, "
                                                                   "float32 is the one that is fast)")
    attn_implementation: Literal[attention.IMPLEMENTATIONS] = Field(
        "sdpa", description="the model's attention implementation (flash_attention_2 needs a GPU and flash-attn; "
                            "torch_flash_varlen: PyTorch's varlen flash kernel for a Qwen-VL vision tower, the "
                            "language model on sdpa; a GPU, bfloat16 or float16)")
    gpus: float = Field(0.0, ge=0, description="GPUs per worker (0: CPU; a fraction shares a GPU; a whole number "
                                                "N > 1 spreads the model's layers over N GPUs, docs/sweep.md)")
    batch: int = Field(1, ge=1, le=1, description="prompts per request (only 1 is measured so far)")
    seed: int = Field(0, ge=0, description="weights seed of tiny presets and random-weight architectures")
    weights: Literal["checkpoint", "random"] = Field(
        "checkpoint", description="checkpoint: the trained weights at the path or hub id; random: the architecture only")
    overrides: dict[Literal["vision", "text"], dict[str, int | float | bool]] | None = Field(
        None, description="architecture settings over the published ones (weights: random), e.g. a reduced depth "
                          "for a smoke run: {vision: {depth: 4}, text: {num_hidden_layers: 2}}")

    def __hash__(self) -> int:  # the overrides mapping is not hashable; its canonical JSON is
        return hash(self.model_dump_json())

    @field_validator("gpus")
    @classmethod
    def _whole_gpus_to_shard(cls, value: float) -> float:
        if value > 1 and value != int(value):
            raise ValueError(f"more than one GPU must be a whole number (a model is spread over whole GPUs), got {value}")
        return value

    @model_validator(mode="after")
    def _weights(self) -> ModelSpec:
        from pipeline.models import is_preset
        from pipeline.models.architectures import architecture_for

        if self.weights == "random" and not is_preset(self.name):
            architecture_for(self.name)  # raises, listing the architectures there are
        if self.overrides and (self.weights != "random" or is_preset(self.name)):
            raise ValueError("overrides apply to random-weight architectures only (weights: random with a hub id)")
        if self.attn_implementation == attention.NAME:
            attention.check_setting(self.dtype, "cuda" if self.gpus > 0 else "cpu")
        return self


def _requirements(info: ValidationInfo) -> Requirements:
    """What the profile's model families accept (given by ``parse_spec`` as validation context)."""
    return (info.context or {}).get("requirements") or supported_requirements()


def _resolution(value: int, info: ValidationInfo) -> int:
    return _requirements(info).check_resolution(value)


# an image side every model family of the profile accepts (Qwen-VL: a multiple of 28)
Resolution = Annotated[int, AfterValidator(_resolution)]


class ImageInputs(_Strict):
    """Synthetic images: one input per resolution."""

    resolutions: list[Resolution] = Field(min_length=1, description="image sides in pixels (Qwen-VL: a multiple "
                                                                     "of 28), each an input of the grid")
    count: int = Field(1, ge=1, description="images per request")


class VideoInputs(_Strict):
    """Synthetic videos: one input per (frame count, resolution)."""

    frames: list[int] = Field(min_length=1, description="frames per video (even: Qwen-VL merges frame pairs)")
    resolutions: list[Resolution] = Field(min_length=1, description="frame sides in pixels")

    @field_validator("frames")
    @classmethod
    def _frames(cls, values: list[int], info: ValidationInfo) -> list[int]:
        for v in values:
            _requirements(info).check_frames(v)
        return values


class Inputs(_Strict):
    """The requests every method is measured on (give images, videos or both)."""

    images: ImageInputs | None = None
    videos: VideoInputs | None = None
    prompt: str = Field("Describe the picture in one sentence.", description="text of every request")

    @model_validator(mode="after")
    def _something(self) -> Inputs:
        if self.images is None and self.videos is None:
            raise ValueError("give images and/or videos")
        return self


def _grid(name: str, fields: tuple[methods.GridField, ...], doc: str) -> type[_Strict]:
    """A profile section of lists, one per config field, each defaulting to ``[the config's default]``
    (an empty list is an error: it would silently drop the method)."""
    model = create_model(name, __base__=_Strict, **{f.name: (list[f.type], Field(
        default=[f.default], min_length=1, description=f"values of {name.removesuffix('Grid')} {f.name} to sweep"))
        for f in fields})
    model.__doc__ = doc
    return model


IPCVGrid = _grid("IPCVGrid", methods.VISION_FIELDS, "Values of each IPCVConfig field to sweep (every combination).")
LLMGrid = _grid("LLMGrid", methods.LLM_FIELDS, "Values of each LLMPruneConfig field to sweep (every combination).")


class Downsample(_Strict):
    """The plain-downsampling baseline: the uncompressed model on smaller inputs."""

    resolutions: list[Resolution] = Field(min_length=1, description="smaller image sides to send, each compared "
                                                                     "with every larger resolution of the grid")


class Methods(_Strict):
    """Which methods a sweep compares (pipeline/methods.py); a method left out has no cells."""

    baseline: bool = Field(True, description="the uncompressed model, which speed-ups and fidelity compare with")
    ipcv: IPCVGrid | None = Field(None, description="IPCV in the vision encoder, every combination of the values "
                                                    "given (omitted: no IPCV cells)")
    llm: LLMGrid | None = Field(None, description="LLM-side pruning in the prefill (DART, FastV), every combination "
                                                  "(omitted: none)")
    stacked: bool = Field(False, description="every IPCV setting combined with every LLM setting")
    random_selection: bool = Field(False, description="IPCV with random token selection at each IPCV budget")
    downsample: Downsample | None = Field(None, description="the plain-downsampling baseline (omitted: none)")


class Measurement(_Strict):
    """How each cell is timed (docs/profiler.md)."""

    warmup: int = Field(3, ge=0, description="untimed requests before the timed ones")
    repeats: int = Field(10, ge=1, description="timed requests; latencies are their median and p10-p90 (10: the "
                                               "p10 and p90 are the 2nd and 9th of ten; fewer make them the extremes)")
    max_new_tokens: int = Field(8, ge=1, description="tokens generated per request (the decode stage)")
    count_flops: bool = Field(True, description="also count FLOPs with fvcore and FlopCounterMode")
    max_retries: int = Field(2, ge=0, description="retries of a cell whose worker died")


class Tracking(_Strict):
    """Weights & Biases: one run per cell (docs/sweep.md)."""

    project: str = Field("ipcv-study", description="W&B project")
    entity: str | None = Field(None, description="W&B entity (default: the logged-in user's)")
    mode: Literal["offline", "online", "disabled"] = Field("offline", description="offline needs no API key "
                                                                                 "(wandb sync later)")
    group: str | None = Field(None, description="W&B run group (default: the sweep's name)")
    flush_timeout_s: float = Field(120.0, ge=0, description="at the end, how long W&B may take to log what is queued")
    log_threads: int = Field(4, ge=1, le=64, description="background threads logging W&B runs")


# keys of an lmms-eval task, and keys of the study's own tasks, left out of a cell's config at their
# defaults (cells that do not use them keep the ids they had before the keys existed)
_LMMS_KEYS = ("backend", "include_path", "gen_kwargs", "metric", "scale")
_OWN_KEYS = ("source", "split", "media_root", "seed")


class TaskSpec(_Strict):
    """One benchmark to score every cell on (docs/accuracy.md): one of the study's own tasks, or
    (``backend: lmms-eval``) an lmms-eval task run through ``simple_evaluate``."""

    backend: Literal["own", "lmms-eval"] = Field("own", description="own: the study's loaders and scoring; "
                                                                     "lmms-eval: the task as lmms-eval runs it (the "
                                                                     "lmms extra)")
    task: str = Field(description="the benchmark's format (docs/accuracy.md); with backend lmms-eval, an lmms-eval "
                                  "task name")
    source: str = Field("synthetic", description="'synthetic', a data file or folder, a save_to_disk folder, "
                                                  "or hf://<dataset id>")
    split: str | None = Field(None, description="split of an HF dataset (or a name part of the files in a folder)")
    limit: int | None = Field(None, ge=1, description="first N rows (synthetic: how many to render; default 8)")
    media_root: str | None = Field(None, description="folder that relative image/video paths are under")
    frames: int = Field(8, description="frames sampled per video (video tasks)")
    seed: int = Field(0, ge=0, description="seed of the synthetic data")
    include_path: str | None = Field(None, description="lmms-eval: a folder of more task YAMLs (local tasks), as "
                                                        "lmms-eval's --include_path")
    gen_kwargs: str | None = Field(None, description="lmms-eval: generation settings over the task's own, as "
                                                      "lmms-eval's --gen_kwargs (e.g. max_new_tokens=16)")
    metric: str | None = Field(None, description="lmms-eval: the metric that is the task's headline (default: the "
                                                  "first it reports)")
    scale: float = Field(1.0, gt=0, description="lmms-eval: the headline divided by this is a share (100 for a "
                                                 "task that reports percent)")

    @field_validator("frames")
    @classmethod
    def _frames(cls, value: int, info: ValidationInfo) -> int:
        return _requirements(info).check_frames(value)

    @field_validator("task")
    @classmethod
    def _task(cls, value: str, info: ValidationInfo) -> str:
        if info.data.get("backend", "own") == "own" and value not in TASKS:
            raise ValueError(f"task {value!r} is not one of the study's tasks ({', '.join(TASKS)}); an lmms-eval "
                             "task needs backend: lmms-eval")
        return value

    @model_validator(mode="after")
    def _backend_keys(self) -> TaskSpec:
        fields = type(self).model_fields
        if self.backend == "own":
            given = [k for k in _LMMS_KEYS if getattr(self, k) != fields[k].default]
            if given:
                raise ValueError(f"{', '.join(given)}: settings of lmms-eval tasks (backend: lmms-eval)")
        else:
            given = [k for k in _OWN_KEYS if getattr(self, k) != fields[k].default]
            if given:
                raise ValueError(f"{', '.join(given)}: settings of the study's own tasks; an lmms-eval task "
                                 "reads the data its task YAML names (include_path for local tasks)")
        return self

    def cell_config(self) -> dict[str, Any]:
        """What the cell records: real paths made absolute (relative to where the sweep runs)."""
        data = self.model_dump()
        fields = type(self).model_fields
        for key in _LMMS_KEYS if self.backend == "own" else _OWN_KEYS:
            if data[key] == fields[key].default:
                del data[key]
        if self.backend == "lmms-eval":
            if self.include_path:
                data["include_path"] = str(Path(self.include_path).expanduser().resolve())
            return data
        if self.source == "synthetic":
            data["limit"] = self.limit or 8
        elif not self.source.startswith("hf://"):
            data["source"] = str(Path(self.source).expanduser().resolve())
        if self.media_root:
            data["media_root"] = str(Path(self.media_root).expanduser().resolve())
        return data


class Evaluation(_Strict):
    """Benchmark accuracy and answer fidelity of every cell (docs/accuracy.md)."""

    tasks: list[TaskSpec] = Field(min_length=1, description="benchmarks to score every cell on")
    max_new_tokens: int = Field(16, ge=1, description="answer length limit")


class Cluster(_Strict):
    """How a sweep that joins a cluster (``--address``) gets its GPUs (docs/sweep.md)."""

    request_gpus: float | None = Field(None, ge=0, description="GPUs to ask an autoscaling cluster for at the start "
                                                                "(default: enough for one worker per GPU model)")
    wait_s: float = Field(1800.0, ge=0, description="how long to wait for the GPUs one worker needs before giving up")


class SweepSpec(_Strict):
    """A sweep: models x inputs x method settings, each a cell measured once."""

    name: str = Field(description="the sweep's name (W&B group, report title, the output folder's owner)")
    output_dir: str = Field("results", description="where results go unless --out says otherwise (give each sweep "
                                                   "its own folder)")
    models: list[ModelSpec] = Field(min_length=1)
    inputs: Inputs
    methods: Methods = Methods()
    measurement: Measurement = Measurement()
    evaluation: Evaluation | None = None
    tracking: Tracking = Tracking()
    cluster: Cluster = Cluster()


class ProfileError(ValueError):
    """A profile that cannot be used; the message names the file and the key path."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, except that a key given twice in one mapping is an error (plain YAML
    keeps the last one silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"key {key!r} given twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def project_root() -> Path | None:
    """The checkout this package runs from (a cluster's file mount), when it has ``profiles/``."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / "profiles").is_dir() else None


def find_profile(name: str | Path) -> Path:
    """A profile wherever a sweep runs: as given (relative to the working directory), relative
    to the project checkout (``ray submit`` runs from the head's home directory), or a bare name
    of a shipped profile (``qwen2-vl-7b`` -> ``profiles/qwen2-vl-7b.yaml``)."""
    given = Path(name).expanduser()
    places = [given if given.is_absolute() else Path.cwd() / given]
    root = project_root()
    if root is not None and not given.is_absolute():
        places.append(root / given)
        if len(given.parts) == 1 and given.suffix == "":
            places += [root / "profiles" / f"{given}.yaml", root / "profiles" / f"{given}.yml"]
    for place in places:
        if place.is_file():
            return place
    if len(places) == 1:
        return places[0]  # load_spec says what is wrong with it
    raise ProfileError(f"{name}: no such profile file; looked for " + ", ".join(str(p) for p in dict.fromkeys(places)))


def load_spec(path: str | Path) -> SweepSpec:
    path = Path(path)
    if not path.is_file():
        raise ProfileError(f"{path}: no such profile file" + (" (it is a folder)" if path.is_dir() else ""))
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ProfileError(f"{path}: not a YAML text file (not UTF-8 at byte {err.start})") from None
    except OSError as err:
        raise ProfileError(f"{path}: cannot be read ({err.strerror})") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as err:
        raise ProfileError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ProfileError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return parse_spec(data, source=str(path))


def model_requirements(data: dict[str, Any]) -> Requirements:
    """What every model a raw profile names accepts; the strictest of all families when a model's
    family cannot be told from its name (it is checked again when it loads)."""
    names = [m.get("name") for m in data.get("models") or [] if isinstance(m, dict)]
    if not names or not all(isinstance(n, str) for n in names):
        return supported_requirements()
    return Requirements.all_of(requirements_for(n) for n in names)


def parse_spec(data: dict[str, Any], source: str = "<profile>") -> SweepSpec:
    try:
        return SweepSpec.model_validate(data, context={"requirements": model_requirements(data)})
    except ValidationError as err:
        lines = []
        for e in err.errors():
            where = ".".join(str(p) for p in e["loc"]) or "(top level)"
            got = f" (got {e['input']!r})" if "input" in e and not isinstance(e["input"], dict) else ""
            lines.append(f"  {where}: {e['msg']}{got}")
        raise ProfileError(f"{source}: invalid profile\n" + "\n".join(lines)) from None
