"""Weights & Biases: one run per cell and execution, grouped by sweep, logged off the sweep's path.

Background threads (``tracking.log_threads``) take finished rows from a bounded queue and log
them, one run each; the driver only enqueues (never waits: when the queue is full the row is left
for later). At the end the threads get a time limit (``tracking.flush_timeout_s``); rows they did
not log (W&B slow, unreachable, a full queue) are logged by the next run of the sweep or by
``ipcv-study sync-wandb OUT``: ``OUT/wandb_logged.jsonl`` records every cell that has a run.
Offline and disabled modes need no API key; an online key comes from the environment
(``WANDB_API_KEY``) and is never written anywhere by this code. A W&B failure never loses or
blocks local results.

Run ids are ``<hash of the sweep name>-<cell id>-<execution>``: a rerun makes a new run instead of
silently overwriting the earlier one, and a long sweep name cannot cut the cell id off.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import queue
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from pipeline.sweep.grid import Cell
from pipeline.sweep.spec import Tracking

log = logging.getLogger(__name__)

RECORD = "wandb_logged.jsonl"
_STOP = object()


class CellLogger:
    def __init__(self, tracking: Tracking, sweep_name: str, out_dir: Path, queue_size: int = 1024,
                 init_timeout_s: float = 60.0, threads: int | None = None) -> None:
        self.tracking = tracking
        self.group = tracking.group or sweep_name
        self.dir = out_dir
        self.execution = uuid.uuid4().hex[:6]
        self.init_timeout_s = init_timeout_s
        self.failures = 0
        self.logged = 0
        self.dropped = 0
        self.pending = 0
        self.threads = threads or tracking.log_threads
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._lock = threading.Lock()
        self._workers: list[threading.Thread] = []

    @property
    def enabled(self) -> bool:
        return self.tracking.mode != "disabled"

    def run_id(self, cell: Cell) -> str:
        sweep = hashlib.sha256(self.group.encode()).hexdigest()[:8]
        return f"{sweep}-{cell.id}-{self.execution}"

    def log(self, cell: Cell, row: dict[str, Any]) -> None:
        """Hand a finished row to the background thread; returns at once."""
        if not self.enabled:
            return
        if not self._workers:
            self._workers = [threading.Thread(target=self._work, name=f"wandb-logger-{i}", daemon=True)
                             for i in range(self.threads)]
            for worker in self._workers:
                worker.start()
        try:
            with self._lock:
                self._queue.put_nowait((cell, dict(row)))
                self.pending += 1
        except queue.Full:  # W&B is behind: this row waits for the next run or sync-wandb
            self.dropped += 1

    def close(self, timeout_s: float = 60.0) -> int:
        """Give the thread ``timeout_s`` to log what is queued; returns how many rows have no W&B
        run (failed, left behind by a full queue, or still waiting when the time ran out)."""
        deadline = time.monotonic() + timeout_s
        for _ in self._workers:
            try:
                self._queue.put(_STOP, timeout=max(0.0, deadline - time.monotonic()))
            except queue.Full:
                break
        for worker in self._workers:
            worker.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            return self.dropped + self.failures + self.pending

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            cell, row = item
            try:
                self._log_one(cell, row)
                self._record(cell)
                with self._lock:
                    self.logged += 1
                    self.pending -= 1
            except Exception as err:  # never lose or block local results
                with self._lock:
                    self.failures += 1
                    self.pending -= 1
                log.warning("W&B logging of cell %s failed (%s: %s); local results are kept; "
                            "ipcv-study sync-wandb logs it later", cell.id, type(err).__name__, err)

    def _log_one(self, cell: Cell, row: dict[str, Any]) -> None:
        """One W&B run for one cell (the hook a test or benchmark overrides to make W&B slow)."""
        import wandb

        run = wandb.init(
            project=self.tracking.project, entity=self.tracking.entity, mode=self.tracking.mode,
            group=self.group, name=f"{cell.label()} [{cell.id}]", id=self.run_id(cell),
            config={"cell_id": cell.id, "sweep": self.group, "execution": self.execution, **cell.config()},
            dir=str(self.dir), reinit="create_new",  # several logging threads, one run each
            settings=wandb.Settings(silent=True, console="off", x_disable_stats=True, init_timeout=self.init_timeout_s),
        )
        try:
            run.summary.update({k: v for k, v in row.items() if _loggable(v)})
        finally:
            run.finish()

    def _record(self, cell: Cell) -> None:
        entry = json.dumps({"cell_id": cell.id, "run_id": self.run_id(cell), "mode": self.tracking.mode})
        with self._lock, open(self.dir / RECORD, "a") as handle:
            handle.write(entry + "\n")


def logged_cells(out_dir: Path) -> set[str]:
    """Cells of ``out_dir`` that have a W&B run (from ``wandb_logged.jsonl``)."""
    path = Path(out_dir) / RECORD
    if not path.exists():
        return set()
    cells = set()
    for line in path.read_text().splitlines():
        try:
            cells.add(json.loads(line)["cell_id"])
        except (ValueError, KeyError, TypeError):
            continue  # a line cut short by a crash: that cell is logged again
    return cells


def _loggable(value: Any) -> bool:
    if value is None:
        return False
    if isinstance(value, float) and math.isnan(value):
        return False
    return isinstance(value, (int, float, str, bool))
