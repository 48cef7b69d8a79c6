"""Cells to Ray actors: workers per model, references once per model x input, retries, autoscaling.

One actor per GPU (or per GPU group, ``gpus`` of the model spec; per CPU slot for CPU models)
holds one loaded model and runs that model's cells one after another. Uncompressed references are
computed once per model x input and passed to the cells as Ray object references; a reference
lost with its worker is computed again. A cell that raises is recorded as failed; a worker that
dies is restarted by Ray and its cell retried up to ``measurement.max_retries`` times.

On a cluster with an autoscaler (a sweep joining ``--address``), missing GPUs are asked for
(``ray.autoscaler.sdk.request_resources``): the driver says what it waits for, gives up after
``cluster.wait_s`` when not even one worker can be placed, starts more workers as GPUs join, and
withdraws its request at the end so that idle nodes scale down. A local Ray has no autoscaler:
there a shortage is an error at once.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from typing import Any

import ray
from ray.exceptions import ActorUnavailableError, RayActorError, RayTaskError

from pipeline.sweep.executor import ModelWorker
from pipeline.sweep.grid import Cell
from pipeline.sweep.resources import ResourceError, plan_workers
from pipeline.sweep.rows import base_row
from pipeline.sweep.spec import ModelSpec, SweepSpec

POLL_S = 5.0  # how often the driver looks at the cluster while no cell finishes


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


class RayDriver:
    """Runs the cells still to do on Ray actors and hands each finished row to ``record``."""

    def __init__(self, spec: SweepSpec, todo: list[Cell], record: Callable[[Cell, dict[str, Any]], None],
                 note: Callable[[str], None], *, autoscaling: bool, stop_after: int | None = None,
                 on_row: Callable[[dict[str, Any]], None] | None = None,
                 on_reference: Callable[[Any], None] | None = None) -> None:
        self.spec, self.record, self.note = spec, record, note
        self.autoscaling, self.stop_after, self.on_row, self.on_reference = autoscaling, stop_after, on_row, on_reference
        self.retries = spec.measurement.max_retries
        by_model: dict[str, list[Cell]] = collections.defaultdict(list)
        for cell in todo:
            by_model[cell.model.name].append(cell)
        self.models: dict[str, ModelSpec] = {c.model.name: c.model for c in todo}
        self.cells_per_model = {n: len(c) for n, c in by_model.items()}
        self.queues = {name: collections.deque(cells) for name, cells in by_model.items()}
        self.actors: dict[Any, str] = {}
        self.released: set[Any] = set()
        self.references: dict[tuple, Any] = {}
        self.attempts: dict[str, int] = collections.Counter()
        self.unavailable: dict[str, int] = collections.Counter()
        self.lost: dict[tuple, int] = collections.Counter()  # references recomputed after their worker died
        self.in_flight: dict[Any, tuple[Any, Cell]] = {}
        self.finished = 0
        self.requested_gpus = 0.0
        self.waiting_since: float | None = None

    # -- workers ---------------------------------------------------------------------------------
    def _gpu_need(self) -> float:
        """GPUs the largest single worker needs (0 without GPU models)."""
        return max((m.gpus for m in self.models.values() if m.gpus > 0), default=0.0)

    def start(self) -> None:
        have = ray.cluster_resources().get("GPU", 0.0)
        gpu_models = {n: m for n, m in self.models.items() if m.gpus > 0}
        capacity = have
        if gpu_models:
            wanted = self.spec.cluster.request_gpus or sum(m.gpus for m in gpu_models.values())
            if have < wanted and self.autoscaling:
                gpu_plan = plan_workers(gpu_models, {n: self.cells_per_model[n] for n in gpu_models}, {"GPU": wanted})
                bundles = [{"GPU": gpu_models[n].gpus, "CPU": 1} for n, k in gpu_plan.items() for _ in range(k)]
                from ray.autoscaler.sdk import request_resources

                request_resources(bundles=bundles)
                self.requested_gpus = sum(b["GPU"] for b in bundles)
                capacity = max(have, self.requested_gpus)
                self.note(f"asked the autoscaler for {self.requested_gpus:g} GPU(s) in {len(bundles)} worker(s); "
                          f"{have:g} available now")
            elif have < self._gpu_need():
                plan_workers(gpu_models, self.cells_per_model, {"GPU": have})  # raises ResourceError with the sizes
        plan = plan_workers(self.models, self.cells_per_model, {**ray.cluster_resources(), "GPU": capacity})
        self._add_workers(plan)
        if have < self._gpu_need():
            self.waiting_since = time.monotonic()

    def _add_workers(self, plan: dict[str, int]) -> list[Any]:
        alive = collections.Counter(name for actor, name in self.actors.items() if actor not in self.released)
        added = []
        for name, count in plan.items():
            model = self.models[name]
            for _ in range(max(0, min(count, len(self.queues[name]) + alive[name]) - alive[name])):
                actor = ModelWorker.options(num_gpus=model.gpus, num_cpus=1, max_restarts=self.retries + 1,
                                            max_task_retries=0).remote(model)
                self.actors[actor] = name
                added.append(actor)
        return added

    def release(self, actor: Any) -> None:
        """Let the worker clean up (its temporary files), then stop it."""
        if actor in self.released:
            return
        self.released.add(actor)
        try:
            ray.get(actor.close.remote(), timeout=30)
        except Exception:  # already dead or stuck: nothing more to ask of it
            pass
        ray.kill(actor)

    def withdraw(self) -> None:
        """Take back the autoscaler request, so idle nodes scale down."""
        if self.requested_gpus:
            from ray.autoscaler.sdk import request_resources

            request_resources(bundles=[])
            self.requested_gpus = 0.0

    # -- cells -----------------------------------------------------------------------------------
    def submit(self, actor: Any) -> bool:
        queue = self.queues[self.actors[actor]]
        if not queue:
            return False
        cell = queue.popleft()
        key = cell.reference_key
        if key not in self.references:
            self.references[key] = actor.reference.remote(cell.reference_input, self.spec.measurement.max_new_tokens,
                                                           cell.evaluation)
            if self.on_reference:
                self.on_reference(actor)
        self.attempts[cell.id] += 1
        self.in_flight[actor.run.remote(cell, self.references[key], self.attempts[cell.id])] = (actor, cell)
        return True

    def run(self) -> None:
        try:
            self.start()
            for actor in list(self.actors):
                self.submit(actor)
            while self.in_flight:
                ready, _ = ray.wait(list(self.in_flight), num_returns=1, timeout=POLL_S)
                if not ready:
                    self._look_at_the_cluster()
                    continue
                if self._finish(ready[0]):
                    break
        finally:
            for actor in list(self.actors):
                self.release(actor)
            self.withdraw()

    def _look_at_the_cluster(self) -> None:
        """No cell finished for a while: wait for GPUs (or give up), start workers on new ones."""
        need = self._gpu_need()
        if not need:
            return
        have = ray.cluster_resources().get("GPU", 0.0)
        if have >= need:
            if self.waiting_since is not None:
                self.note(f"{have:g} GPU(s) in the cluster: workers start")
                self.waiting_since = None
            gpu_models = {n: m for n, m in self.models.items() if m.gpus > 0 and self.queues[n]}
            if gpu_models:  # more GPUs than planned for (nodes joined): more workers
                plan = plan_workers(gpu_models, {n: len(self.queues[n]) for n in gpu_models}, {"GPU": have})
                for actor in self._add_workers(plan):
                    self.submit(actor)
            return
        if self.waiting_since is None:
            self.waiting_since = time.monotonic()
        waited = time.monotonic() - self.waiting_since
        asked = f", {self.requested_gpus:g} requested from the autoscaler" if self.requested_gpus else ""
        if waited > self.spec.cluster.wait_s:
            raise ResourceError(f"gave up after {waited:.0f} s waiting for GPUs: a worker needs {need:g}, the cluster "
                                f"has {have:g}{asked} (cluster.wait_s in the profile sets the wait)")
        self.note(f"waiting for GPUs: a worker needs {need:g}, {have:g} available{asked} "
                  f"({waited:.0f} s of {self.spec.cluster.wait_s:.0f} s)")

    def _finish(self, future: Any) -> bool:
        """Handle one finished task; True when the sweep should stop (``stop_after``)."""
        actor, cell = self.in_flight.pop(future)
        try:
            row = ray.get(future)
        except (ActorUnavailableError, RayActorError, RayTaskError) as err:
            row = self._failure(actor, cell, err)
            if row is None:
                return False
        self.record(cell, row)
        self.finished += 1
        if self.stop_after is not None and self.finished >= self.stop_after:
            return True
        if not self.submit(actor) and not any(a is actor for a, _ in self.in_flight.values()):
            self.release(actor)  # its model has no cells left: free its GPU for waiting workers
        if self.on_row:
            self.on_row({**row, "_actor": actor})
        return False

    def _failure(self, actor: Any, cell: Cell, err: Exception) -> dict[str, Any] | None:
        """A task that raised: try again (None) or the cell's failed row."""
        key = cell.reference_key
        if key in self.references and self.lost[key] <= self.retries and _failed(self.references[key]):
            # the reference died with its worker: every cell handed it would fail, so compute it
            # again (on the restarted worker); this does not count against the cell
            self.lost[key] += 1
            del self.references[key]
            return self._again(actor, cell)
        if isinstance(err, ActorUnavailableError):
            # the worker is restarting (after a crash): not the cell's fault, try again shortly
            self.unavailable[cell.id] += 1
            if self.unavailable[cell.id] > 600:
                raise RuntimeError(f"worker for {cell.model.name} did not come back within 5 minutes") from None
            time.sleep(0.5)
            return self._again(actor, cell)
        if self.attempts[cell.id] <= self.retries:
            self.queues[self.actors[actor]].appendleft(cell)  # the restarted actor takes it again
            self.submit(actor)
            return None
        return {**base_row(cell), "status": "failed", "attempts": self.attempts[cell.id],
                "error": f"worker died {self.attempts[cell.id]} times: {type(err).__name__}: {str(err)[:500]}"}

    def _again(self, actor: Any, cell: Cell) -> None:
        """Run the cell again without counting the attempt against it."""
        self.attempts[cell.id] -= 1
        self.queues[self.actors[actor]].appendleft(cell)
        self.submit(actor)
        return None
