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
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import ActorUnavailableError, RayActorError, RayTaskError

from pipeline.evaluation import check_sources
from pipeline.sweep.executor import ModelWorker, run_inline
from pipeline.sweep.grid import Cell, expand
from pipeline.sweep.rows import base_row
from pipeline.sweep.spec import SweepSpec
from pipeline.sweep.store import ResultStore
from pipeline.sweep.tracking import CellLogger

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
                raise RuntimeError(f"the cluster has {capacity:g} GPUs; a worker needs {max(need.values()):g}")
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
) -> SweepSummary:
    """Run (or resume) a sweep. ``stop_after`` ends it after that many finished cells (for tests
    and partial runs); ``on_row`` sees each finished row (the driver's hook for fault injection);
    ``node_ip_address`` is this driver's address when joining a cluster at ``address``;
    ``executor``: "ray" (actors, local or on a cluster) or "local" (this process, no Ray)."""
    if executor not in EXECUTORS:
        raise ValueError(f"executor must be one of {', '.join(EXECUTORS)}, got {executor!r}")
    if executor == "local" and address:
        raise ValueError("a cluster address needs the ray executor")
    out = Path(out_dir)
    cells = expand(spec)
    if cells:  # benchmark data that cannot be read stops the sweep here, before anything starts
        check_sources(cells[0].evaluation)
    store = ResultStore(out)
    store.write_json("profile.json", spec.model_dump())
    done = store.done()
    todo = [c for c in cells if c.id not in done]
    summary = SweepSummary(out, out / "results.parquet", total=len(cells), skipped=len(cells) - len(todo))
    started_ray = False
    if executor == "ray" and not ray.is_initialized():
        if address:
            ray.init(address=address, _node_ip_address=node_ip_address, log_to_driver=False)
        else:  # a local Ray on the loopback address only
            ray.init(_node_ip_address="127.0.0.1", include_dashboard=False, log_to_driver=False)
        started_ray = True
    logger = CellLogger(spec.tracking, spec.name, out)
    t0 = time.time()
    drive = _drive if executor == "ray" else _drive_local
    try:
        drive(spec, todo, store, logger, summary, progress, stop_after, on_row)
    except KeyboardInterrupt:
        summary.interrupted = True
    finally:
        summary.wall_s = time.time() - t0
        summary.wandb_failures = logger.failures
        store.consolidate()
        store.write_json("summary.json", summary.__dict__)
        if started_ray:
            ray.shutdown()
    return summary


def _drive(spec, todo, store, logger, summary, progress, stop_after, on_row) -> None:
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
    in_flight: dict[Any, tuple[Any, Cell]] = {}
    finished = 0
    bar = _Progress(len(todo), progress)

    def submit(actor) -> bool:
        queue = queues[actors[actor]]
        if not queue:
            return False
        cell = queue.popleft()
        key = cell.reference_key
        if key not in references:
            references[key] = actor.reference.remote(cell.reference_input, spec.measurement.max_new_tokens,
                                                      cell.evaluation)
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
        except ActorUnavailableError:
            # the worker is restarting (after a crash): not the cell's fault, try again shortly
            unavailable[cell.id] += 1
            if unavailable[cell.id] > 600:
                raise RuntimeError(f"worker for {cell.model.name} did not come back within 5 minutes") from None
            attempts[cell.id] -= 1
            time.sleep(0.5)
            queues[actors[actor]].appendleft(cell)
            submit(actor)
            continue
        except (RayActorError, RayTaskError) as err:
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
            ray.kill(actor)  # its model has no cells left: free its GPU for waiting workers
        if on_row:
            on_row({**row, "_actor": actor})
    bar.close()
    for actor in actors:
        ray.kill(actor)


def _record(cell: Cell, row: dict[str, Any], store: ResultStore, logger: CellLogger, summary: SweepSummary,
            bar: _Progress) -> None:
    """A finished row: to the store (answers first), to W&B, into the summary and progress."""
    store.write(row)
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
