"""The sweep driver: cells to executors, rows to the store and W&B, resumable.

With the Ray executor (the default) cells run on Ray actors, one loaded model each
(``pipeline/sweep/ray_driver.py``: workers, references, retries, autoscaling). Ctrl-C stops
submitting, keeps every finished row and writes the consolidated table.

With the local executor (``executor="local"``: a workstation without Ray, its GPUs or a CPU) the
same cell executor runs every cell in this process, model by model; store, W&B, resume and
Ctrl-C behave the same.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from pipeline.evaluation import check_sources
from pipeline.sweep.executor import run_inline
from pipeline.sweep.grid import Cell, expand
from pipeline.sweep.remote import RemoteFolder, is_uri
from pipeline.sweep.spec import SweepSpec, parse_spec
from pipeline.sweep.store import ResultStore, StoreError, StoreWriteError
from pipeline.sweep.tracking import CellLogger, logged_cells

EXECUTORS = ("ray", "local")


@dataclass
class SweepSummary:
    out_dir: Path
    results: Path
    total: int
    skipped: int
    ok: int = 0
    failed: int = 0
    wall_s: float = 0.0
    cell_s: float = 0.0
    loads_per_worker: dict[str, int] = field(default_factory=dict)
    wandb_failures: int = 0
    interrupted: bool = False
    notes: list[str] = field(default_factory=list)  # about the output folder (changed profile, cells left out)
    superseded: Path | None = None  # where --no-resume moved the earlier results of these cells
    remote: str | None = None  # the results in object storage (``results`` is then the local staging copy)


def run_sweep(
    spec: SweepSpec,
    out_dir: str | Path,
    *,
    address: str | None = None,
    progress: bool = True,
    stop_after: int | None = None,
    on_row: Callable[[dict[str, Any]], None] | None = None,
    node_ip_address: str | None = None,
    executor: str = "ray",
    on_reference: Callable[[Any], None] | None = None,
    resume: bool = True,
    add: bool = False,
    logger_class: type[CellLogger] = CellLogger,
) -> SweepSummary:
    """Run (or resume) a sweep. ``stop_after`` ends it after that many finished cells (for tests
    and partial runs); ``on_row`` sees each finished row and ``on_reference`` each actor a
    reference was just submitted to (the driver's hooks for fault injection);
    ``node_ip_address`` is this driver's address when joining a cluster at ``address``;
    ``executor``: "ray" (actors, local or on a cluster) or "local" (this process, no Ray);
    ``resume=False`` measures every cell again (earlier results are moved aside, never deleted);
    ``add`` lets this sweep use a folder that holds another sweep's results (``StoreError``
    otherwise, before anything starts); ``logger_class`` is the W&B logger (a hook for tests and
    the overhead benchmark, which make W&B slow or fail)."""
    if executor not in EXECUTORS:
        raise ValueError(f"executor must be one of {', '.join(EXECUTORS)}, got {executor!r}")
    if executor == "local" and address:
        raise ValueError("a cluster address needs the ray executor")
    cells = expand(spec)
    if cells:  # benchmark data that cannot be read stops the sweep here, before anything starts
        check_sources(cells[0].evaluation)
    mirror = RemoteFolder(str(out_dir)) if is_uri(out_dir) else None
    out = mirror.local if mirror else Path(out_dir)
    store = ResultStore(out, mirror)
    with store.locked():
        if mirror is not None:
            mirror.pull()  # a rerun resumes from what the URI holds, wherever it runs
        summary = SweepSummary(out, out / "results.parquet", total=len(cells), skipped=0)
        summary.remote = f"{str(out_dir).rstrip('/')}/results.parquet" if mirror else None
        summary.notes = store.claim(spec.name, spec.model_dump(), [c.id for c in cells], add=add)
        if not resume:
            summary.superseded = store.supersede([c.id for c in cells])
        if executor == "local" and not torch.cuda.is_available():
            summary.notes += [f"model {m.name} asks for {m.gpus:g} GPU(s) but this machine has no CUDA device: it runs "
                              "on the CPU (CPU timings)" for m in spec.models if m.gpus > 0]
        done = store.done()
        todo = [c for c in cells if c.id not in done]
        summary.skipped = len(cells) - len(todo)
        _run(spec, cells, todo, store, summary, address, node_ip_address, executor, progress, stop_after, on_row,
             on_reference, logger_class(spec.tracking, spec.name, store.root))
    return summary


def log_missing_runs(spec: SweepSpec, cells: list[Cell], store: ResultStore, logger: CellLogger) -> int:
    """Queue a W&B run for every finished cell of the profile that has none yet (an earlier run
    could not log it); returns how many."""
    if not logger.enabled:
        return 0
    table = store.table()
    if table.empty:
        return 0
    logged = logged_cells(store.root)
    by_id = {c.id: c for c in cells}
    missing = [row for row in table.to_dict(orient="records")
               if row.get("status") == "ok" and row["cell_id"] in by_id and row["cell_id"] not in logged]
    for row in missing:
        logger.log(by_id[row["cell_id"]], {k: v for k, v in row.items() if not _missing(v)})
    return len(missing)


def sync_wandb(out_dir: str | Path, mode: str | None = None) -> tuple[int, int]:
    """Log the W&B runs a sweep's folder lacks (``ipcv-study sync-wandb``): (queued, not logged)."""
    out = Path(out_dir)
    profile = out / "profile.json"
    if not profile.is_file():
        raise StoreError(f"{out}: no profile.json (is this a sweep's output folder?)")
    spec = parse_spec(json.loads(profile.read_text()), source=str(profile))
    if mode is not None:
        spec = spec.model_copy(update={"tracking": spec.tracking.model_copy(update={"mode": mode})})
    store = ResultStore(out)
    logger = CellLogger(spec.tracking, spec.name, out)
    queued = log_missing_runs(spec, expand(spec), store, logger)
    return queued, logger.close(spec.tracking.flush_timeout_s)


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and value != value)


def _init_loopback_ray() -> None:
    """A local Ray whose every server listens on 127.0.0.1 only.

    Ray's single-machine mode does that (without it Ray registers the node on the machine's
    outward address and its servers listen on every interface, whatever ``_node_ip_address``
    says). Ray reads the switch, ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, when it is imported, so
    setting the variable before ``ray.init`` reaches only the processes Ray starts: this process's
    copy is set too, for the start, then both are put back, so a later ``ray.init(address=...)``
    in the same process still reaches a real cluster. A user's own setting of the variable wins."""
    import ray
    from ray._private import ray_constants

    name = ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR
    if name in os.environ:
        ray.init(_node_ip_address="127.0.0.1", include_dashboard=False, log_to_driver=False)
        return
    before = ray_constants.ENABLE_RAY_CLUSTER
    os.environ[name], ray_constants.ENABLE_RAY_CLUSTER = "0", False
    try:
        ray.init(_node_ip_address="127.0.0.1", include_dashboard=False, log_to_driver=False)
    finally:
        del os.environ[name]
        ray_constants.ENABLE_RAY_CLUSTER = before


def _run(spec, cells, todo, store, summary, address, node_ip_address, executor, progress, stop_after, on_row,
         on_reference, logger):
    started_ray = False
    if executor == "ray":  # imported here: the local executor runs where Ray is not installed
        import ray
    if executor == "ray" and not ray.is_initialized():
        if address:
            ray.init(address=address, _node_ip_address=node_ip_address, log_to_driver=False)
        else:
            _init_loopback_ray()
        started_ray = True
    earlier = log_missing_runs(spec, cells, store, logger)
    if earlier:
        summary.notes.append(f"{earlier} finished cell(s) without a W&B run from an earlier run are logged now")
    t0 = time.time()
    try:
        if executor == "ray":
            _drive_ray(spec, todo, store, logger, summary, progress, stop_after, on_row, on_reference,
                       autoscaling=not started_ray)
        else:
            _drive_local(spec, todo, store, logger, summary, progress, stop_after, on_row)
    except KeyboardInterrupt:
        summary.interrupted = True
    finally:
        summary.wall_s = time.time() - t0
        summary.wandb_failures = logger.close(spec.tracking.flush_timeout_s)
        if summary.wandb_failures:
            summary.notes.append(f"{summary.wandb_failures} cell(s) have no W&B run yet (failed or still queued when "
                                 f"the time ran out): `ipcv-study sync-wandb {store.root}` or the next run logs them")
        if started_ray:
            ray.shutdown()
        try:
            store.consolidate()
            store.write_json("summary.json", summary.__dict__)
        except OSError as err:  # e.g. a full disk: the cell files written so far are the results
            summary.notes.append(f"could not write results.parquet / summary.json ({err.strerror}); "
                                 f"the finished cells are in {store.cells}")


def _record(cell: Cell, row: dict[str, Any], store: ResultStore, logger: CellLogger, summary: SweepSummary,
            bar: _Progress) -> None:
    """A finished row: to the store (answers first), to W&B, into the summary and progress."""
    try:
        store.write(row)
    except OSError as err:  # a full disk, a folder gone read-only: stop, keeping what was written
        raise StoreWriteError(f"writing the result of cell {cell.id} to {store.cells} failed ({err.strerror}); "
                         "the cells finished before it are kept, and a rerun resumes from them") from None
    row.pop("predictions", None)
    logger.log(cell, row)
    summary.ok += row["status"] == "ok"
    summary.failed += row["status"] != "ok"
    summary.cell_s += float(row.get("duration_s") or 0.0)
    if row.get("worker_id"):
        summary.loads_per_worker[row["worker_id"]] = int(row.get("worker_loads") or 0)
    bar.update(summary)


def _drive_ray(spec, todo, store, logger, summary, progress, stop_after, on_row, on_reference, autoscaling) -> None:
    if not todo:
        return
    from pipeline.sweep.ray_driver import RayDriver

    bar = _Progress(len(todo), progress)
    try:
        RayDriver(spec, todo, lambda cell, row: _record(cell, row, store, logger, summary, bar), bar.note,
                  autoscaling=autoscaling, stop_after=stop_after, on_row=on_row, on_reference=on_reference).run()
    finally:
        bar.close()


def _drive_local(spec, todo, store, logger, summary, progress, stop_after, on_row) -> None:
    bar = _Progress(len(todo), progress)
    try:
        for finished, (_, cell, row) in enumerate(run_inline(todo, spec.measurement.max_new_tokens), start=1):
            _record(cell, row, store, logger, summary, bar)
            if on_row:
                on_row(row)
            if stop_after is not None and finished >= stop_after:
                break
    finally:
        bar.close()


class _Progress:
    def __init__(self, total: int, enabled: bool) -> None:
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="cell", dynamic_ncols=True)

    def update(self, summary: SweepSummary) -> None:
        if self.bar is not None:
            self.bar.set_postfix(done=summary.ok, failed=summary.failed)
            self.bar.update(1)

    def note(self, message: str) -> None:
        """A status line that does not break the progress bar (stderr without one)."""
        if self.bar is not None:
            self.bar.write(message)
        else:
            print(message, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
