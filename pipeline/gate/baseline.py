"""The gate's baseline: a validated document, checked before anything is measured.

A baseline states the profile it belongs to, how costs are measured (``instructions`` or
``time``), the versions it was made with, a tolerance per figure and the figures themselves, one
per ``model|input|method|metric`` key. Validation refuses what would weaken or break the gate:
a figure the profile produces that is missing, a figure it does not produce, a tolerance above
the bound stated in ``pipeline/columns.py`` or of another kind than the schema's, another
profile or cost measure, values that are not numbers. Every message names the file and the key.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any, Literal

import torch
import transformers
from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, ValidationError

import ipcv
from pipeline import columns, methods
from pipeline.sweep.grid import Cell

Costs = Literal["instructions", "time"]
COSTS: tuple[str, ...] = ("instructions", "time")
# versions a baseline is tied to: its figures (instruction counts above all) depend on them
PINNED = ("python", "torch", "transformers")
FORMAT = 2


class BaselineError(ValueError):
    """A baseline that cannot be used; the message names the file and the key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Tolerance(_Strict):
    kind: Literal["exact", "close", "work_ratio", "time_ratio"]
    tolerance: float = Field(ge=0)
    worse: Literal["higher", "lower"]


class BaselineDocument(_Strict):
    format: Literal[2]
    profile: str
    costs: Costs
    versions: dict[str, str]
    tolerances: dict[str, Tolerance]
    figures: dict[str, StrictFloat | StrictInt]


def versions() -> dict[str, str]:
    return {"python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "ipcv": ipcv.__version__}


def gated_figures(costs: str) -> tuple[str, ...]:
    """The metric names a gate with this cost measure compares."""
    return columns.ROW_GATED + columns.COST_GATED[costs]


def default_tolerances(costs: str) -> dict[str, dict[str, Any]]:
    out = {}
    for name in gated_figures(costs):
        column = columns.get(name)
        out[name] = {"kind": column.gate.kind, "tolerance": column.gate.tolerance, "worse": column.worse}
    return out


def expected_figures(cells: list[Cell], costs: str) -> set[str]:
    """Every figure key the gate measures for these cells, known before anything runs."""
    keys = set()
    for cell in cells:
        for name in columns.ROW_GATED:
            # the downsampling baseline hands the LLM fewer features than its reference: no cosine
            if name == "fidelity_feature_cosine" and cell.input != cell.reference_input:
                continue
            keys.add(f"{cell.key}|{name}")
        if cell.method != "baseline":
            keys |= {f"{cell.key}|{name}" for name in columns.COST_GATED[costs]}
    return keys


def figure_of(key: str) -> str:
    return key.rsplit("|", 1)[-1]


def method_of(key: str) -> methods.Method | None:
    parts = key.split("|")
    return methods.METHODS.get(parts[-2]) if len(parts) >= 4 else None


def read(path: Path) -> BaselineDocument:
    """Parse and validate the file's own structure (types, known keys, tolerance bounds)."""
    if not path.is_file():
        raise BaselineError(f"{path}: no baseline; create it with --update")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise BaselineError(f"{path}: not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise BaselineError(f"{path}: expected a JSON object at the top level, got {type(data).__name__}")
    if data.get("format") != FORMAT:
        raise BaselineError(f"{path}: format {data.get('format')!r} is not the gate's format {FORMAT}; "
                            "make a new baseline with --update (this gate compares instruction counts, "
                            "docs/ci_gate.md)")
    try:
        document = BaselineDocument.model_validate(data)
    except ValidationError as err:
        lines = [f"  {'.'.join(str(p) for p in e['loc']) or '(top level)'}: {e['msg']}" for e in err.errors()]
        raise BaselineError(f"{path}: invalid baseline\n" + "\n".join(lines)) from None
    problems = _tolerance_problems(document)
    for key in document.figures:
        parts = key.split("|")
        if len(parts) != 4 or parts[-1] not in gated_figures(document.costs):
            problems.append(f"figures.{key}: not a figure key of this gate (model|input|method|metric with a gated "
                            f"metric: {', '.join(gated_figures(document.costs))})")
    if problems:
        raise BaselineError(f"{path}: invalid baseline\n" + "\n".join(f"  {p}" for p in problems))
    return document


def _tolerance_problems(document: BaselineDocument) -> list[str]:
    problems = []
    gated = gated_figures(document.costs)
    for name, stated in document.tolerances.items():
        if name not in gated:
            problems.append(f"tolerances.{name}: not a figure a gate measuring {document.costs} compares")
            continue
        column = columns.get(name)
        rule = column.gate
        if stated.kind != rule.kind:
            problems.append(f"tolerances.{name}.kind: {name} is a {rule.kind} figure, not {stated.kind}")
        if stated.worse != column.worse:
            problems.append(f"tolerances.{name}.worse: {name} gets worse when it gets {column.worse}")
        if stated.tolerance > rule.max_tolerance:
            problems.append(f"tolerances.{name}.tolerance: {stated.tolerance:g} is above the bound "
                            f"{rule.max_tolerance:g} (pipeline/columns.py)")
    missing = [name for name in gated if name not in document.tolerances]
    if missing:
        problems.append(f"tolerances: missing {', '.join(missing)}")
    return problems


def check_against(document: BaselineDocument, path: Path, profile: str, costs: str, expected: set[str]) -> None:
    """The baseline belongs to this profile and cost measure and holds exactly its figures."""
    problems = []
    if document.profile != profile:
        problems.append(f"profile: made for profile {document.profile!r}, not {profile!r}")
    if document.costs != costs:
        problems.append(f"costs: holds {document.costs} figures, this run measures {costs}")
    missing = sorted(expected - set(document.figures))
    unexpected = sorted(set(document.figures) - expected)
    if missing:
        problems.append(f"figures: {len(missing)} figure(s) of the profile missing: {_some(missing)}")
    if unexpected:
        problems.append(f"figures: {len(unexpected)} figure(s) the profile does not produce: {_some(unexpected)}")
    if problems:
        raise BaselineError(f"{path}: does not match {profile} (make it again with --update if the change is "
                            "intended)\n" + "\n".join(f"  {p}" for p in problems))


def version_differences(document: BaselineDocument) -> list[str]:
    now = versions()
    return [f"baseline made with {name} {value}, this run uses {now.get(name)}"
            for name, value in document.versions.items() if now.get(name) != value]


def pinned_differences(document: BaselineDocument) -> list[str]:
    now = versions()
    return [f"{name} {document.versions.get(name)} -> {now[name]}" for name in PINNED
            if document.versions.get(name) != now[name]]


def write(path: Path, profile: str, costs: str, figures: dict[str, float],
          tolerances: dict[str, dict[str, Any]] | None = None) -> None:
    """Write a baseline; ``tolerances`` (kept from the old baseline on --update) default to the schema's."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {
        "format": FORMAT,
        "profile": profile,
        "costs": costs,
        "versions": versions(),
        "tolerances": {**default_tolerances(costs), **(tolerances or {})},
        "figures": {k: float(v) for k, v in sorted(figures.items())},
    }
    BaselineDocument.model_validate(data)  # never write what would not read back
    path.write_text(json.dumps(data, indent=2) + "\n")


def _some(keys: list[str], shown: int = 6) -> str:
    return ", ".join(keys[:shown]) + (f", ... ({len(keys) - shown} more)" if len(keys) > shown else "")
