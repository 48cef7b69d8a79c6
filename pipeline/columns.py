"""Every column of a results row, described once: unit, which direction is better, axis label,
table header and format, and the efficiency gate's rule for it.

The row writer (``pipeline/sweep/rows.py``), the gate (``pipeline/gate.py``), the Pareto analysis
and figures (``pipeline/report/``), the W&B panels and the CLI's help and summary table read this
module; none of them spells a metric's unit or direction itself. Benchmark columns exist per task
(``acc_<task>``, ``fidelity_<task>_answer_match``, ...): they are described by templates. A row
column that is not described here fails ``tests/test_columns.py``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Literal

from pipeline.methods import LLM_FIELDS, VISION_FIELDS, llm_column, vision_column

Better = Literal["higher", "lower"]

STAGES = ("preprocess", "vision", "prefill", "decode", "e2e")  # measured per request, in order
FLOP_STAGES = ("vision", "prefill")
FLOP_ROUTES = ("analytic", "fvcore", "flop_counter")


GateKind = Literal["exact", "close", "work_ratio", "time_ratio"]


@dataclass(frozen=True)
class GateRule:
    """How the efficiency gate (docs/ci_gate.md) judges a figure against its baseline value.

    ``exact``: any change stops the gate; ``close``: a change beyond ``tolerance`` (absolute)
    stops it; ``work_ratio`` (instruction counts, deterministic): a rise beyond ``tolerance``
    (share of the baseline value) stops it; ``time_ratio``: the same band, but only when the
    figure's confidence interval clears it in every re-measurement. A baseline may state a
    tolerance up to ``max_tolerance`` and no more, so that the gate cannot be switched off by
    editing the baseline."""

    kind: GateKind
    tolerance: float = 0.0
    max_tolerance: float = 0.0


@dataclass(frozen=True)
class Column:
    name: str
    unit: str  # "ms", "FLOPs", "bytes", "tokens", "share", "nats", "count", "" (none), "text"
    description: str
    better: Better | None = None
    label: str | None = None  # axis label, with the unit shown
    header: str | None = None  # short table header
    scale: float = 1.0  # stored value / scale = shown value
    fmt: str = ".4g"
    gate: GateRule | None = None

    @property
    def higher_is_better(self) -> bool:
        return self.better != "lower"

    @property
    def worse(self) -> Better | None:
        """The direction in which a change is a regression."""
        return {"higher": "lower", "lower": "higher"}.get(self.better) if self.better else None

    def show(self, value: float) -> str:
        return format(value / self.scale, self.fmt)


def _c(name: str, unit: str, description: str, **kw) -> Column:
    return Column(name, unit, description, **kw)


_EXACT = GateRule("exact")
_WORK = GateRule("work_ratio", 0.05, 0.10)
_STAGE_WORDS = {"preprocess": "preprocessing (CPU)", "vision": "vision-encoder", "prefill": "LLM prefill",
                "decode": "decode", "e2e": "end-to-end"}


def _stage_columns() -> list[Column]:
    out = []
    for stage in STAGES:
        words = _STAGE_WORDS[stage]
        out += [
            _c(f"{stage}_ms", "ms", f"{words} latency, median over repeats", better="lower",
               label=f"{words} latency (ms, median)", header=f"{stage} ms", fmt=".1f"),
            _c(f"{stage}_ms_p10", "ms", f"{words} latency, 10th percentile", better="lower"),
            _c(f"{stage}_ms_p90", "ms", f"{words} latency, 90th percentile", better="lower"),
            _c(f"{stage}_peak_bytes", "bytes", f"peak GPU memory allocated during the {words} stage", better="lower",
               scale=2**20),
        ]
    for stage in FLOP_STAGES:
        words = _STAGE_WORDS[stage]
        out.append(_c(f"{stage}_flops", "FLOPs", f"{words} FLOPs, analytic (2 per multiply-add)", better="lower",
                      scale=1e9, gate=_EXACT))
        out += [_c(f"{stage}_flops_{route}", "FLOPs", f"{words} FLOPs counted by {route}", better="lower", scale=1e9)
                for route in FLOP_ROUTES[1:]]
    return out


_SCHEMA: list[Column] = [
    # the cell
    _c("cell_id", "text", "stable hash of the cell's config"),
    _c("model", "text", "preset name, hub id or local path"),
    _c("dtype", "text", "weights and activations dtype"),
    _c("attn_implementation", "text", "attention implementation of the model"),
    _c("gpus_per_worker", "count", "GPUs of the worker that ran the cell (0: CPU)"),
    _c("input_kind", "text", "image or video"),
    _c("resolution", "pixels", "image side sent to the model"),
    _c("group_resolution", "pixels", "image side the cell is compared at (downsampling: the full one)"),
    _c("images", "count", "images per request"),
    _c("frames", "count", "video frames per request"),
    _c("method", "text", "method name (pipeline/methods.py)"),
    *(_c(vision_column(f.name), "", f"IPCV setting {f.name}") for f in VISION_FIELDS),
    *(_c(llm_column(f.name), "", f"LLM-side pruning setting {f.name}") for f in LLM_FIELDS),
    _c("setting", "text", "readable label of the method's setting"),
    _c("input", "text", "readable label of the input group"),
    _c("weights", "text", "random (tiny preset), random (architecture) or checkpoint"),
    # the run
    _c("status", "text", "ok or failed"),
    _c("error", "text", "why a failed cell failed"),
    _c("traceback", "text", "the failed cell's traceback (tail)"),
    _c("worker_id", "text", "host:pid of the worker"),
    _c("worker_loads", "count", "model loads of that worker"),
    _c("attempts", "count", "runs of the cell (a dead worker's cell runs again)"),
    _c("node_id", "text", "Ray node of the worker"),
    _c("started_at", "s", "Unix time the cell started"),
    _c("finished_at", "s", "Unix time the cell finished"),
    _c("duration_s", "s", "wall time of the cell, measurement and fidelity included"),
    # provenance
    _c("clock", "text", "what timed the stages: cuda-events or cpu-perf_counter"),
    _c("device", "text", "GPU or CPU model"),
    _c("device_type", "text", "cuda or cpu"),
    _c("torch_version", "text", "torch version"),
    _c("transformers_version", "text", "transformers version"),
    _c("ipcv_version", "text", "this package's version"),
    _c("ipcv_kernels", "text", "IPCV's kernel choices asked for in the worker (ipcv.algorithm.Kernels, IPCV_KERNELS): "
       "none = the torch path; they act on bf16/fp16 states only, the fused rebuild on CUDA only"),
    _c("git_commit", "text", "git commit of the code that measured the cell (+dirty: with uncommitted changes)"),
    _c("warmup", "count", "untimed requests before the timed ones"),
    _c("repeats", "count", "timed requests: the median and p10-p90 of each latency are over these"),
    _c("not_measured", "text", "what could not be measured, and why"),
    # costs
    *_stage_columns(),
    _c("decode_ms_per_token", "ms", "decode latency per generated token, median", better="lower"),
    _c("total_flops", "FLOPs", "vision + prefill FLOPs, analytic", better="lower", label="vision + prefill GFLOPs",
       header="GFLOPs", scale=1e9, fmt=".2f"),
    _c("peak_bytes", "bytes", "largest stage peak of GPU memory (derived by the report)", better="lower",
       label="peak GPU memory (MiB)", scale=2**20),
    _c("kv_cache_bytes", "bytes", "keys and values in the cache after the prefill", better="lower", scale=2**20,
       gate=_EXACT),
    _c("vision_tokens_in", "tokens", "patches entering the vision encoder", better="lower", gate=_EXACT),
    _c("vision_tokens_kept", "tokens", "vision tokens kept after the prune layer", better="lower", gate=_EXACT),
    _c("llm_visual_tokens_in", "tokens", "visual tokens entering the LLM", better="lower", gate=_EXACT),
    _c("llm_visual_tokens_kept", "tokens", "visual tokens kept in the LLM after its prune layer", better="lower",
       gate=_EXACT),
    # quality: fidelity to the uncompressed model (always), accuracy (with benchmarks)
    _c("fidelity_answer_match", "share", "generated answer equal to the uncompressed model's (0/1)", better="higher",
       label="fidelity: answer equal to uncompressed (0/1)", header="answer match", fmt=".2f",
       gate=GateRule("close", 0.0, 0.0)),
    _c("fidelity_top1_agreement", "share", "first answer token's top-1 equal to the uncompressed model's (0/1)",
       better="higher", label="fidelity: first-token top-1 agreement (0/1)", gate=GateRule("close", 0.0, 0.0)),
    _c("fidelity_first_token_kl", "nats", "KL(uncompressed || compressed) of the first answer token", better="lower",
       label="fidelity: first-token KL to uncompressed (nats, lower is better)", gate=GateRule("close", 1e-3, 1e-2)),
    _c("fidelity_feature_cosine", "cosine", "mean cosine of the visual features handed to the LLM", better="higher",
       label="fidelity: visual-feature cosine", header="feature cos", fmt=".4f", gate=GateRule("close", 1e-4, 1e-3)),
    _c("accuracy", "share", "mean benchmark score over the profile's tasks", better="higher",
       label="accuracy (mean benchmark score)", header="accuracy", fmt=".3f"),
    _c("fidelity_benchmark_answer_match", "share", "benchmark answers equal to the uncompressed model's (mean share)",
       better="higher", label="fidelity: benchmark answers equal to uncompressed (share)"),
    # the gate's cost figures (not in rows): a method's stage cost over the unpatched model's
    _c("vision_instructions_ratio", "ratio", "instructions of the vision tower with the method / without (callgrind)",
       better="lower", gate=_WORK),
    _c("prefill_instructions_ratio", "ratio",
       "instructions of the prefill forward beyond the tower, with the method / without (callgrind)",
       better="lower", gate=_WORK),
    _c("vision_time_ratio", "ratio", "vision-encoder time with the method / without, median of interleaved pairs",
       better="lower", gate=GateRule("time_ratio", 0.25, 1.0)),
    _c("prefill_time_ratio", "ratio", "LLM prefill time with the method / without, median of interleaved pairs",
       better="lower", gate=GateRule("time_ratio", 0.25, 1.0)),
]

COLUMNS: dict[str, Column] = {c.name: c for c in _SCHEMA}

# per-task columns of a benchmark (``{task}`` is a task name of pipeline/evaluation/tasks.py)
_TEMPLATES: list[tuple[re.Pattern, Column]] = [
    (re.compile(r"acc_(?P<task>[a-z0-9]+)"), _c("acc_{task}", "share", "{task} accuracy (the benchmark's own score)",
                                               better="higher", label="{task} accuracy")),
    (re.compile(r"acc_(?P<task>[a-z0-9]+)_samples"), _c("acc_{task}_samples", "count", "{task} samples scored")),
    (re.compile(r"acc_(?P<task>[a-z0-9]+)_(?P<metric>precision|recall|f1|yes_ratio)"),
     _c("acc_{task}_{metric}", "share", "{task} {metric}")),
    (re.compile(r"fidelity_(?P<task>[a-z0-9]+)_answer_match"),
     _c("fidelity_{task}_answer_match", "share", "{task} answers equal to the uncompressed model's", better="higher",
        label="fidelity: {task} answers equal to uncompressed (share)")),
    (re.compile(r"fidelity_(?P<task>[a-z0-9]+)_top1_agreement"),
     _c("fidelity_{task}_top1_agreement", "share", "{task} first answer tokens equal to the uncompressed model's",
        better="higher")),
    # lmms-eval tasks (pipeline/lmms/backend.py): any task name, underscores included, so the
    # suffixed columns come first and the rest (the headline share, or one of lmms-eval's metrics
    # on its own scale) falls to the last template
    (re.compile(r"lmms_(?P<task>[a-z0-9_]+)_samples"), _c("lmms_{task}_samples", "count", "lmms-eval {task}: samples")),
    (re.compile(r"lmms_(?P<task>[a-z0-9_]+)_answer_match"),
     _c("lmms_{task}_answer_match", "share", "lmms-eval {task}: answers equal to the uncompressed model's",
        better="higher", label="fidelity: lmms-eval {task} answers equal to uncompressed (share)")),
    (re.compile(r"lmms_(?P<task>[a-z0-9_]+)"),
     _c("lmms_{task}", "", "lmms-eval {task}: the headline score as a share, or a metric on lmms-eval's scale")),
]

# what each consumer reads, by name
QUALITY = ("accuracy", "fidelity_benchmark_answer_match", "fidelity_answer_match", "fidelity_top1_agreement",
           "fidelity_first_token_kl", "fidelity_feature_cosine")
COSTS = ("e2e_ms", "vision_ms", "prefill_ms", "total_flops", "peak_bytes")
STAGE_TIMES = tuple(f"{s}_ms" for s in STAGES if s != "e2e")  # the parts of a request's time
STAGE_PEAKS = tuple(f"{s}_peak_bytes" for s in ("vision", "prefill", "decode"))
SUMMARY = ("vision_ms", "prefill_ms", "total_flops", "fidelity_answer_match", "fidelity_feature_cosine", "accuracy")
GATED = tuple(c.name for c in _SCHEMA if c.gate is not None)
ROW_GATED = tuple(c.name for c in _SCHEMA if c.gate is not None and c.gate.kind in ("exact", "close"))
COST_GATED = {"instructions": ("vision_instructions_ratio", "prefill_instructions_ratio"),
              "time": ("vision_time_ratio", "prefill_time_ratio")}


def get(name: str) -> Column:
    """The column called ``name`` (a per-task one from its template); ``KeyError`` naming the
    schema file when it is not described."""
    if name in COLUMNS:
        return COLUMNS[name]
    for pattern, template in _TEMPLATES:
        match = pattern.fullmatch(name)
        if match and (name.startswith("lmms_") or _known_task(match["task"])):
            fields = match.groupdict()
            return replace(template, name=name, description=template.description.format(**fields),
                           label=template.label.format(**fields) if template.label else None)
    raise KeyError(f"column {name!r} is not described in pipeline/columns.py")


def is_described(name: str) -> bool:
    try:
        get(name)
    except KeyError:
        return False
    return True


def _known_task(task: str) -> bool:
    from pipeline.evaluation.tasks import TASKS

    return task in TASKS
