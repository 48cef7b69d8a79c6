"""W&B off the sweep's path: an outage costs no result, and the runs it cost are logged later."""

from __future__ import annotations

import threading
from pathlib import Path

import yaml
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.sweep.driver import run_sweep
from pipeline.sweep.grid import expand
from pipeline.sweep.spec import parse_spec
from pipeline.sweep.tracking import CellLogger, logged_cells
from tests.wandb_offline import read_runs

ROOT = Path(__file__).resolve().parents[1]


def profile(**overrides) -> dict:
    data = yaml.safe_load((ROOT / "profiles" / "tiny-test.yaml").read_text())
    data["models"] = data["models"][:1]
    data["tracking"] = {"mode": "offline", "flush_timeout_s": 60}
    data.update(overrides)
    return data


class Unreachable(CellLogger):
    def _log_one(self, cell, row):
        raise ConnectionError("api.wandb.ai unreachable")


def test_an_outage_costs_no_result_and_its_runs_are_logged_later(tmp_path):
    spec = parse_spec(profile())
    down = run_sweep(spec, tmp_path, progress=False, executor="local", logger_class=Unreachable)
    assert down.ok == 3 and down.wandb_failures == 3
    assert any("sync-wandb" in note for note in down.notes) and logged_cells(tmp_path) == set()
    synced = CliRunner().invoke(app, ["sync-wandb", str(tmp_path)])
    assert synced.exit_code == 0 and "3 cell(s) lacked a W&B run; 3 logged now" in synced.output, synced.output
    cells = {c.id for c in expand(spec)}
    assert logged_cells(tmp_path) == cells
    assert {r["config"]["cell_id"] for r in read_runs(tmp_path / "wandb")} == cells
    again = run_sweep(spec, tmp_path, progress=False, executor="local")
    assert again.skipped == 3 and again.wandb_failures == 0 and len(read_runs(tmp_path / "wandb")) == 3


def test_run_ids_keep_the_cell_id_whatever_the_sweep_name():
    spec = parse_spec(profile(name="a-sweep-name-long-enough-to-have-cut-the-cell-id-off-the-run-id-before"))
    logger = CellLogger(spec.tracking, spec.name, Path("."))
    ids = [logger.run_id(c) for c in expand(spec)]
    assert len(set(ids)) == len(ids) and all(len(i) <= 64 for i in ids)
    assert all(c.id in i for c, i in zip(expand(spec), ids))
    assert CellLogger(spec.tracking, spec.name, Path(".")).run_id(expand(spec)[0]) != ids[0]  # a new execution


def test_the_queue_never_makes_the_sweep_wait(tmp_path):
    release = threading.Event()

    class Stuck(CellLogger):
        def _log_one(self, cell, row):
            release.wait(30)

    spec = parse_spec(profile())
    logger = Stuck(spec.tracking, spec.name, tmp_path, queue_size=1, threads=1)
    cell = expand(spec)[0]
    for _ in range(5):
        logger.log(cell, {"status": "ok"})  # returns at once: the first is in flight, the rest queued or left
    assert logger.dropped >= 3
    assert logger.close(timeout_s=0.2) == 5  # none logged while W&B hangs; each will be logged later
    release.set()
