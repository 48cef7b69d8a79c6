"""Weights & Biases: one run per cell, grouped by sweep, logged from the driver.

Offline and disabled modes need no API key. A W&B failure never loses or blocks local results:
it is logged as a warning and the sweep goes on (offline runs can be uploaded later with
``wandb sync``).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from pipeline.sweep.grid import Cell
from pipeline.sweep.spec import Tracking

log = logging.getLogger(__name__)


class CellLogger:
    def __init__(self, tracking: Tracking, sweep_name: str, out_dir: Path) -> None:
        self.tracking = tracking
        self.group = tracking.group or sweep_name
        self.dir = out_dir
        self.failures = 0

    def log(self, cell: Cell, row: dict[str, Any]) -> None:
        if self.tracking.mode == "disabled":
            return
        try:
            import wandb

            run = wandb.init(
                project=self.tracking.project, entity=self.tracking.entity, mode=self.tracking.mode,
                group=self.group, name=f"{cell.label()} [{cell.id}]", id=f"{self.group}-{cell.id}"[:64],
                config={"cell_id": cell.id, "sweep": self.group, **cell.config()}, dir=str(self.dir), reinit="finish_previous",
                resume="allow", settings=wandb.Settings(silent=True, console="off", x_disable_stats=True),
            )
            run.summary.update({k: v for k, v in row.items() if _loggable(v)})
            run.finish()
        except Exception as err:  # never lose or block local results
            self.failures += 1
            log.warning("W&B logging of cell %s failed (%s: %s); local results are kept", cell.id, type(err).__name__, err)


def _loggable(value: Any) -> bool:
    if value is None:
        return False
    if isinstance(value, float) and math.isnan(value):
        return False
    return isinstance(value, (int, float, str, bool))
