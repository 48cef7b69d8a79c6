"""The sweep driver's own overhead when W&B is slow: does a slow W&B slow the sweep down?

Runs the same profile with W&B disabled and with every W&B run taking ``--delay`` seconds more
(a logger whose ``_log_one`` sleeps first, then logs offline: the driver's logging hook, nothing
of Ray mocked), alternating, ``--rounds`` times each, each into a fresh folder, and reports the
wall time of ``run_sweep`` (start to results written, W&B flush included).

    python benchmarks/sweep_overhead.py --profile profiles/smoke.yaml --rounds 2 --out docs/results/sweep_overhead_cpu
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import common

from pipeline.sweep.driver import run_sweep
from pipeline.sweep.spec import find_profile, load_spec
from pipeline.sweep.tracking import CellLogger


def slow_logger(delay: float) -> type[CellLogger]:
    class Slow(CellLogger):
        def _log_one(self, cell, row):
            time.sleep(delay)
            super()._log_one(cell, row)

    return Slow


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="profiles/smoke.yaml")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--delay", type=float, default=2.0, help="seconds added to every W&B run")
    parser.add_argument("--executor", default="ray")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    spec = load_spec(find_profile(args.profile))
    cases = {"W&B disabled": (spec.model_copy(update={"tracking": spec.tracking.model_copy(update={"mode": "disabled"})}),
                              CellLogger),
             f"W&B offline, +{args.delay:g} s per run": (
                 spec.model_copy(update={"tracking": spec.tracking.model_copy(update={"mode": "offline"})}),
                 slow_logger(args.delay))}
    rows = []
    os.environ.setdefault("WANDB_SILENT", "true")
    with tempfile.TemporaryDirectory(prefix="ipcv-overhead-") as tmp:
        for round_ in range(args.rounds):
            for name, (case_spec, logger) in cases.items():
                t0 = time.perf_counter()
                summary = run_sweep(case_spec, Path(tmp) / f"{round_}-{len(rows)}", progress=False,
                                    executor=args.executor, logger_class=logger)
                wall = time.perf_counter() - t0
                rows.append({"case": name, "round": round_ + 1, "wall_s": round(wall, 1), "cells": summary.ok,
                             "not_logged": summary.wandb_failures})
                print(rows[-1], flush=True)
    lines = [f"Sweep `{args.profile}` ({spec.name}), {args.executor} executor, {os.cpu_count()} CPU cores; wall time "
             f"of run_sweep, {args.rounds} rounds alternating", "",
             "| case | wall s (each round) | median | cells | W&B runs not logged |", "|---|---|---|---|---|"]
    for name in cases:
        mine = [r for r in rows if r["case"] == name]
        walls = [r["wall_s"] for r in mine]
        lines.append(f"| {name} | {', '.join(f'{w:g}' for w in walls)} | {statistics.median(walls):.1f} "
                     f"| {mine[0]['cells']} | {max(r['not_logged'] for r in mine)} |")
    base, slow = (statistics.median(r["wall_s"] for r in rows if r["case"] == name) for name in cases)
    lines.append(f"\nslow W&B / disabled: {slow / base:.3f}")
    common.save(args.out, {"profile": args.profile, "rounds": args.rounds, "delay_s": args.delay,
                           "command": common.command_line()}, rows, "\n".join(lines))


if __name__ == "__main__":
    main()
