"""Instruction counts of a model's vision tower and prefill forward, with and without a compression.

Wall-clock time on a shared CPU runner moves by tens of percent with whatever else runs there;
the number of instructions a forward executes does not (PyTorch's own CI guards host-side
overhead this way). Counts come from valgrind's callgrind in a child process, one per model:

1. the child loads the model and builds the request natively (valgrind without instrumentation
   runs close to native speed), runs every setting once natively (lazy initialisation), pins
   torch to one thread;
2. it switches instrumentation on once (``callgrind_control -i on``), and for each measurement
   applies the setting, runs the statement once uncollected (warm), then collects exactly one
   run of it (``torch._C._valgrind_toggle`` around the statement, Python's garbage collector
   run before and held off during it: a collection falling inside one count made it 7% larger
   once in CI) and dumps the counters;
3. the parent reads the dumps' totals.

Counts of the same statement agree to about 0.2 % within a process and 1 % between runs, whatever
load the machine has;
they depend on the CPU's instruction set and the library versions, so compare counts (or their
ratios) made on the same kind of machine. Needs ``valgrind`` and ``callgrind_control`` on PATH.
"""

from __future__ import annotations

import gc
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

STATEMENTS = ("vision", "forward")  # the tower alone; the whole prefill forward (tower + LLM)


class InstructionCountError(RuntimeError):
    """Counting could not run (no valgrind) or the child failed; the message says which."""


@dataclass(frozen=True)
class Measurement:
    """Count one run of ``statement`` ("vision" or "forward", ``repeat`` times in one collection)
    with the given compression configs (dicts of IPCVConfig / LLMPruneConfig, or None)."""

    key: str
    statement: str
    vision: dict[str, Any] | None = None
    llm: dict[str, Any] | None = None
    repeat: int = 1


@dataclass
class Job:
    """One model, one input, several measurements: what one child process counts."""

    model: dict[str, Any]  # name, dtype, attn_implementation, seed
    input: dict[str, Any]  # resolution, images, video_frames, prompt
    measurements: list[Measurement] = field(default_factory=list)


def available() -> str | None:
    """Why instruction counting cannot run here, or None when it can."""
    missing = [tool for tool in ("valgrind", "callgrind_control") if shutil.which(tool) is None]
    if missing:
        return f"{' and '.join(missing)} not found (install valgrind, e.g. apt-get install valgrind)"
    return None


def count(jobs: list[Job], parallel: int | None = None, timeout_s: float = 1800) -> dict[str, int]:
    """Instructions per measurement key, the jobs run as child processes side by side."""
    problem = available()
    if problem:
        raise InstructionCountError(problem)
    workers = max(1, min(len(jobs), parallel or os.cpu_count() or 1))
    out: dict[str, int] = {}
    with ThreadPoolExecutor(workers) as pool:
        for counts in pool.map(lambda job: _run_child(job, timeout_s), jobs):
            out.update(counts)
    return out


_SUMMARY = re.compile(rb"^(?:summary|totals): (\d+)", re.MULTILINE)


def _run_child(job: Job, timeout_s: float) -> dict[str, int]:
    with tempfile.TemporaryDirectory(prefix="ipcv-callgrind-") as tmp:
        folder = Path(tmp)
        (folder / "job.json").write_text(json.dumps({**asdict(job)}))
        command = ["valgrind", "--tool=callgrind", "--instr-atstart=no", "--collect-atstart=no",
                   f"--callgrind-out-file={folder / 'cg.out'}", sys.executable, "-m", "pipeline.measure.instructions",
                   str(folder / "job.json")]
        env = {**os.environ, "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        try:
            done = subprocess.run(command, capture_output=True, timeout=timeout_s, env=env)
        except subprocess.TimeoutExpired:
            raise InstructionCountError(f"counting {job.model['name']} took longer than {timeout_s:.0f} s") from None
        order = folder / "order.json"
        if done.returncode != 0 or not order.exists():
            tail = "\n".join(line for line in done.stderr.decode(errors="replace").splitlines()
                             if not line.startswith("=="))[-1500:]
            raise InstructionCountError(f"instruction counting of {job.model['name']} failed (exit {done.returncode}):\n{tail}")
        counts = {}
        for index, key in enumerate(json.loads(order.read_text()), start=1):
            match = _SUMMARY.search((folder / f"cg.out.{index}").read_bytes())
            if match is None:
                raise InstructionCountError(f"callgrind dump {index} of {job.model['name']} has no total")
            counts[key] = int(match.group(1))
        return counts


# -- the child (runs under valgrind) -------------------------------------------------------------
def _child(job_file: str) -> None:
    import torch

    import ipcv
    from pipeline.measure.stages import compressed
    from pipeline.models import family_of, load_model, synthetic_spec, to_device

    job = json.loads(Path(job_file).read_text())
    torch.set_num_threads(1)
    spec = job["model"]
    model = load_model(spec["name"], dtype=spec["dtype"], attn_implementation=spec["attn_implementation"],
                       device="cpu", seed=spec["seed"])
    family = family_of(model)
    inp = job["input"]
    request = to_device(family.request_builder(model)(synthetic_spec(
        inp["resolution"], images=inp["images"], video_frames=inp["video_frames"], prompt=inp["prompt"])), model)
    tower = family.tower(model)
    tower_args, tower_kwargs = family.tower_call(request)
    statements = {"vision": lambda: tower(*tower_args, **tower_kwargs),
                  "forward": lambda: model(**request, logits_to_keep=1)}

    def configs(m: dict[str, Any]):
        return (ipcv.IPCVConfig(**m["vision"]) if m["vision"] else None,
                ipcv.LLMPruneConfig(**m["llm"]) if m["llm"] else None)

    measurements = job["measurements"]
    with torch.inference_mode():
        for m in measurements:  # natively, before any instrumentation: lazy initialisation
            with compressed(model, *configs(m)):
                statements[m["statement"]]()
        subprocess.run(["callgrind_control", "-i", "on", str(os.getpid())], check=True, capture_output=True)
        order = []
        for m in measurements:
            run = statements[m["statement"]]
            with compressed(model, *configs(m)):
                run()  # instrumented, not collected
                gc.collect()  # the collector runs when allocation counts say so: never inside a count
                gc.disable()
                torch._C._valgrind_toggle()
                for _ in range(m["repeat"]):
                    run()
                torch._C._valgrind_toggle_and_dump_stats()
                gc.enable()
            order.append(m["key"])
    Path(job_file).with_name("order.json").write_text(json.dumps(order))


if __name__ == "__main__":
    _child(sys.argv[1])
