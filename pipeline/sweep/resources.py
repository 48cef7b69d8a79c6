"""How many workers each model gets from the resources a cluster has (no Ray needed, so the
local executor and the CLI import it where Ray is not installed)."""

from __future__ import annotations

from typing import Any


class ResourceError(RuntimeError):
    """The cluster lacks what the profile's workers need; the message says what."""


def plan_workers(models: dict[str, Any], cells_per_model: dict[str, int], resources: dict[str, float]) -> dict[str, int]:
    """Workers per model: GPU models share the cluster's GPUs in proportion to their cells (at
    least one worker each, never more workers than cells); CPU models share the CPUs, one kept
    free for the driver. Workers beyond the free resources wait; an idle worker is released."""
    plan: dict[str, int] = {}
    for kind in ("gpu", "cpu"):
        names = [n for n, m in models.items() if (m.gpus > 0) == (kind == "gpu")]
        if not names:
            continue
        if kind == "gpu":
            need = {n: models[n].gpus for n in names}
            capacity = resources.get("GPU", 0)
            if capacity < max(need.values()):
                raise ResourceError(f"the cluster has {capacity:g} GPUs; a worker needs {max(need.values()):g} "
                                    "(models with gpus > 0); add GPU nodes, or set gpus: 0 to run on CPUs")
        else:
            need = {n: 1.0 for n in names}
            capacity = max(1.0, resources.get("CPU", 1) - 1)
        total_cells = sum(cells_per_model[n] for n in names)
        for n in names:
            share = capacity * cells_per_model[n] / total_cells
            plan[n] = max(1, min(cells_per_model[n], int(share // need[n])))
    return plan
