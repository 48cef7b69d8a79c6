"""The layout of a results row: a cell's config columns, then its measured figures.

Column names, units and directions are described in ``pipeline/columns.py``; this module only
fills them in. Readable labels of the setting and of the input group are written here, once, from
the row's own config columns (the report derives them the same way for tables that lack them).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import ipcv
from ipcv import algorithm as alg
from pipeline.columns import FLOP_STAGES
from pipeline.measure.stages import RequestReport
from pipeline.methods import LLM_FIELDS, VISION_FIELDS, llm_column, setting_label, vision_column
from pipeline.models import is_preset
from pipeline.provenance import git_commit
from pipeline.sweep.grid import Cell


def input_label(row: Mapping[str, Any]) -> str:
    """e.g. ``image 448px``, ``image 448px x2``, ``video 448px x8f``: the input a cell is grouped
    under (the downsampling baseline under the resolution it stands in for)."""
    kind = row.get("input_kind") or "image"
    res = row.get("group_resolution") or row.get("resolution")
    frames = row.get("frames") or 0
    images = row.get("images") or 1
    if kind == "video":
        return f"video {res}px x{int(frames)}f"
    return f"image {res}px" + (f" x{int(images)}" if images and int(images) > 1 else "")


def base_row(cell: Cell) -> dict[str, Any]:
    """The config columns of a cell's row."""
    vision, llm = cell.vision or {}, cell.llm or {}
    row = {
        "cell_id": cell.id,
        "model": cell.model.name,
        "dtype": cell.model.dtype,
        "attn_implementation": cell.model.attn_implementation,
        "gpus_per_worker": cell.model.gpus,
        "input_kind": cell.input.kind,
        "resolution": cell.input.resolution,
        "group_resolution": cell.input.group_resolution,
        "images": cell.input.count if cell.input.kind == "image" else 0,
        "frames": cell.input.frames,
        "method": cell.method,
        **{vision_column(f.name): vision.get(f.name) for f in VISION_FIELDS},
        **{llm_column(f.name): llm.get(f.name) for f in LLM_FIELDS},
        "weights": weights_label(cell.model.name, cell.model.weights),
        "status": "pending",
        "error": None,
    }
    row["setting"] = setting_label(row)
    row["input"] = input_label(row)
    return row


def weights_label(name: str, weights: str) -> str:
    """What the row's weights are; anything but "checkpoint" makes its quality figures fidelity of
    random weights (the report and W&B never call them quality)."""
    if is_preset(name):
        return "random (tiny preset)"
    return "random (architecture)" if weights == "random" else "checkpoint"


def report_columns(report: RequestReport) -> dict[str, Any]:
    """The figures of a stage measurement as row columns."""
    out: dict[str, Any] = {}
    for name, stage in report.stages.items():
        if stage.time is not None:
            out[f"{name}_ms"] = stage.time.median_ms
            out[f"{name}_ms_p10"] = stage.time.p10_ms
            out[f"{name}_ms_p90"] = stage.time.p90_ms
        out[f"{name}_peak_bytes"] = stage.peak_memory_bytes
        for route, value in stage.flops.items():
            out[f"{name}_flops" if route == "analytic" else f"{name}_flops_{route}"] = value
    out["decode_ms_per_token"] = report.decode_per_token.median_ms if report.decode_per_token else None
    out["kv_cache_bytes"] = report.kv_cache_bytes
    v, p = report.stages["vision"].tokens, report.stages["prefill"].tokens
    out["vision_tokens_in"] = v.get("patches_in")
    out["vision_tokens_kept"] = v.get("kept_after_prune_layer")
    out["llm_visual_tokens_in"] = p.get("visual_tokens_in")
    out["llm_visual_tokens_kept"] = p.get("visual_tokens_kept")
    out["total_flops"] = sum(out.get(f"{s}_flops") or 0 for s in FLOP_STAGES)
    out["clock"] = report.stages["vision"].time.clock if report.stages["vision"].time else None
    prov = report.provenance
    out.update(device=prov.get("device"), device_type=prov.get("device_type"), torch_version=prov.get("torch"),
               transformers_version=prov.get("transformers"), ipcv_version=ipcv.__version__, git_commit=git_commit())
    out["ipcv_kernels"] = alg.KERNELS.names()
    timed = report.stages["vision"].time
    out.update(warmup=timed.warmup if timed else None, repeats=timed.repeats if timed else None)
    out["not_measured"] = "; ".join(report.not_measured) or None
    return out
