"""The sweep driver: cells to executors, rows to the store and W&B, resumable.

With the Ray executor (the default), one actor per GPU (or per GPU group, ``gpus`` of the model spec; per CPU slot for CPU models)
holds one loaded model and runs that model's cells one after another. Uncompressed references
are computed once per model x input and passed to the cells as Ray object references. A cell
that raises is recorded as failed; a worker that dies is restarted by Ray and its cell retried up
to ``measurement.max_retries`` times, then recorded as failed. Ctrl-C stops submitting, keeps
every finished row and writes the consolidated table.

With the local executor (``executor="local"``: a workstation without Ray, one GPU or a CPU) the
same cell executor runs every cell in this process, model by model; store, W&B, resume and
Ctrl-C behave the same.
"""

from __future__ import annotations

import collections
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
import torch
from ray.exceptions import ActorUnavailableError, RayActorError, RayTaskError

from pipeline.evaluation import check_sources
from pipeline.sweep.executor import ModelWorker, run_inline
from pipeline.sweep.grid import Cell, expand
from pipeline.sweep.rows import base_row
from pipeline.sweep.spec import SweepSpec, parse_spec
from pipeline.sweep.store import ResultStore, StoreError, StoreWriteError
from pipeline.sweep.tracking import CellLogger, logged_cells

EXECUTORS = ("ray", "local")


class ResourceError(RuntimeError):
    """The cluster lacks what the profile's workers need; the message says what."""


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
    out = Path(out_dir)
    cells = expand(spec)
    if cells:  # benchmark data that cannot be read stops the sweep here, before anything starts
        check_sources(cells[0].evaluation)
    store = ResultStore(out)
    with store.locked():
        summary = SweepSummary(out, out / "results.parquet", total=len(cells), skipped=0)
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


def _run(spec, cells, todo, store, summary, address, node_ip_address, executor, progress, stop_after, on_row,
         on_reference, logger):
    started_ray = False
    if executor == "ray" and not ray.is_initialized():
        if address:
            ray.init(address=address, _node_ip_address=node_ip_address, log_to_driver=False)
        else:  # a local Ray on the loopback address only
            # Ray's single-machine mode: without it Ray registers the node on the machine's outward
            # address and its servers listen on every interface, whatever _node_ip_address says
            os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
            ray.init(_node_ip_address="127.0.0.1", include_dashboard=False, log_to_driver=False)
        started_ray = True
    earlier = log_missing_runs(spec, cells, store, logger)
    if earlier:
        summary.notes.append(f"{earlier} finished cell(s) without a W&B run from an earlier run are logged now")
    t0 = time.time()
    try:
        if executor == "ray":
            _drive(spec, todo, store, logger, summary, progress, stop_after, on_row, on_reference)
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


def _failed(ref: Any) -> bool:
    """True when ``ref`` is finished and holds an error (e.g. its worker died computing it)."""
    ready, _ = ray.wait([ref], timeout=0)
    if not ready:
        return False
    try:
        ray.get(ref, timeout=0)
    except Exception:
        return True
    return False


def _drive(spec, todo, store, logger, summary, progress, stop_after, on_row, on_reference=None) -> None:
    if not todo:
        return
    by_model: dict[str, list[Cell]] = collections.defaultdict(list)
    for cell in todo:
        by_model[cell.model.name].append(cell)
    models = {c.model.name: c.model for c in todo}
    queues = {name: collections.deque(cells) for name, cells in by_model.items()}
    retries = spec.measurement.max_retries
    actors: dict[Any, str] = {}
    plan = plan_workers(models, {n: len(c) for n, c in by_model.items()}, ray.cluster_resources())
    for name, count in plan.items():
        model = models[name]
        for _ in range(count):
            actor = ModelWorker.options(num_gpus=model.gpus, num_cpus=1, max_restarts=retries + 1,
                                        max_task_retries=0).remote(model)
            actors[actor] = name
    references: dict[tuple, Any] = {}
    attempts: dict[str, int] = collections.Counter()
    unavailable: dict[str, int] = collections.Counter()
    lost: dict[tuple, int] = collections.Counter()  # references recomputed after their worker died
    in_flight: dict[Any, tuple[Any, Cell]] = {}
    finished = 0
    bar = _Progress(len(todo), progress)

    released: set[Any] = set()

    def release(actor) -> None:
        """Let the worker clean up (its temporary files), then stop it."""
        if actor in released:
            return
        released.add(actor)
        try:
            ray.get(actor.close.remote(), timeout=30)
        except Exception:  # already dead or stuck: nothing more to ask of it
            pass
        ray.kill(actor)

    def submit(actor) -> bool:
        queue = queues[actors[actor]]
        if not queue:
            return False
        cell = queue.popleft()
        key = cell.reference_key
        if key not in references:
            references[key] = actor.reference.remote(cell.reference_input, spec.measurement.max_new_tokens,
                                                      cell.evaluation)
            if on_reference:
                on_reference(actor)
        attempts[cell.id] += 1
        in_flight[actor.run.remote(cell, references[key], attempts[cell.id])] = (actor, cell)
        return True

    for actor in list(actors):
        submit(actor)
    while in_flight:
        ready, _ = ray.wait(list(in_flight), num_returns=1)
        future = ready[0]
        actor, cell = in_flight.pop(future)
        try:
            row = ray.get(future)
        except (ActorUnavailableError, RayActorError, RayTaskError) as err:
            key = cell.reference_key
            if key in references and lost[key] <= retries and _failed(references[key]):
                # the reference died with its worker: every cell handed it would fail, so compute
                # it again (on the restarted worker); this does not count against the cell
                lost[key] += 1
                del references[key]
                attempts[cell.id] -= 1
                queues[actors[actor]].appendleft(cell)
                submit(actor)
                continue
            if isinstance(err, ActorUnavailableError):
                # the worker is restarting (after a crash): not the cell's fault, try again shortly
                unavailable[cell.id] += 1
                if unavailable[cell.id] > 600:
                    raise RuntimeError(f"worker for {cell.model.name} did not come back within 5 minutes") from None
                attempts[cell.id] -= 1
                time.sleep(0.5)
                queues[actors[actor]].appendleft(cell)
                submit(actor)
                continue
            if attempts[cell.id] <= retries:
                queues[actors[actor]].appendleft(cell)  # the restarted actor takes it again
                submit(actor)
                continue
            row = {**base_row(cell), "status": "failed", "attempts": attempts[cell.id],
                   "error": f"worker died {attempts[cell.id]} times: {type(err).__name__}: {str(err)[:500]}"}
        _record(cell, row, store, logger, summary, bar)
        finished += 1
        if stop_after is not None and finished >= stop_after:
            break
        if not submit(actor) and not any(a is actor for a, _ in in_flight.values()):
            release(actor)  # its model has no cells left: free its GPU for waiting workers
        if on_row:
            on_row({**row, "_actor": actor})
    bar.close()
    for actor in actors:
        release(actor)


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

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
