"""Does the efficiency gate give the same verdict on a busy runner? False alarms and detections.

With other processes keeping every core busy (``--load``, one spinning process per core, started
here and stopped by their own pids), the gate (``ipcv-study check``) runs ``--runs`` times on the
unchanged code, then ``--runs`` times on a copy of the code with a slowdown injected into IPCV's
forward. It records each run's exit code, wall time and the figures it named. Injections (the
copy's source is edited, nothing is mocked):

- ``as-attention-twice``: every Attention-Stabilization block runs its attention twice
  (the same output, about a third more work in the vision encoder);
- ``neighbours-twice``: the neighbour search of the pruning step runs twice (the issue's example;
  small at the gate's input size, so it shows the gate's detection limit).

    python benchmarks/gate_reliability.py --runs 10 --out docs/results/gate_reliability_cpu
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common

ROOT = Path(__file__).resolve().parents[1]
INJECTIONS = {
    "as-attention-twice": ("ipcv/families/qwen_vl.py",
                           "        attn_out = block.attn(block.norm1(full_states), **kwargs)\n",
                           "        attn_out = block.attn(block.norm1(full_states), **kwargs)\n"
                           "        attn_out = block.attn(block.norm1(full_states), **kwargs)\n"),
    "neighbours-twice": ("ipcv/vision.py",
                         "                index, weight = alg.find_neighbors(\n",
                         "                alg.find_neighbors(removed_states, kept_states, cfg.neighbors)\n"
                         "                index, weight = alg.find_neighbors(\n"),
}


def start_load(processes: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(processes)]


def stop(load: list[subprocess.Popen]) -> None:
    for p in load:  # only the processes started here
        p.send_signal(signal.SIGTERM)
    for p in load:
        p.wait(timeout=30)


def injected_copy(name: str, folder: Path) -> Path:
    for package in ("ipcv", "pipeline"):
        shutil.copytree(ROOT / package, folder / package, ignore=shutil.ignore_patterns("__pycache__"))
    path, old, new = INJECTIONS[name]
    source = (folder / path).read_text()
    if source.count(old) != 1:
        raise SystemExit(f"injection {name}: the line to change is not in {path} exactly once")
    (folder / path).write_text(source.replace(old, new))
    return folder


def run_gate(profile: str, baseline: str, pythonpath: Path | None, scratch: Path) -> dict:
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = str(pythonpath)
    report = scratch / "gate.json"
    report.unlink(missing_ok=True)
    started = time.time()
    # run from the code's own folder: ``python -m`` puts the working directory first on the path
    done = subprocess.run([sys.executable, "-m", "pipeline.cli", "check", str(ROOT / profile), "--baseline",
                           str(ROOT / baseline), "--json", str(report)], cwd=pythonpath or ROOT, env=env,
                          capture_output=True, text=True)
    named = []
    if report.exists():  # each regression with its change against the baseline
        named = [f"{d['key']} ({d['current'] / d['baseline'] - 1:+.1%})" if d["baseline"] else d["key"]
                 for d in json.loads(report.read_text())["regressions"]]
    return {"exit": done.returncode, "wall_s": round(time.time() - started, 1), "regressions": named,
            "tail": done.stdout[-600:] if done.returncode not in (0, 1) else ""}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--load", type=int, default=os.cpu_count() or 2, help="spinning processes (default: one per core)")
    parser.add_argument("--cases", default=",".join(["unchanged", *INJECTIONS]),
                        help="comma list of: unchanged, " + ", ".join(INJECTIONS))
    parser.add_argument("--profile", default="profiles/ci.yaml")
    parser.add_argument("--baseline", default="profiles/baselines/ci.json")
    parser.add_argument("--out", type=Path, default=None, help="write <stem>.json and <stem>.md")
    args = parser.parse_args()
    rows = []
    load = start_load(args.load)
    try:
        with tempfile.TemporaryDirectory(prefix="ipcv-gate-reliability-") as tmp:
            scratch = Path(tmp)
            for case in args.cases.split(","):
                code = None if case == "unchanged" else injected_copy(case, scratch / case)
                for run in range(args.runs):
                    row = {"case": case, "run": run + 1, **run_gate(args.profile, args.baseline, code, scratch)}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    finally:
        stop(load)
    lines = [f"Efficiency gate under load: {args.load} spinning processes on {os.cpu_count()} cores, "
             f"{args.runs} runs per case, `{args.profile}` against `{args.baseline}`; {platform.processor() or platform.machine()}",
             "", "| case | runs | passed (exit 0) | failed (exit 1) | other | wall s (median) | figures named |",
             "|---|---|---|---|---|---|---|"]
    for case in dict.fromkeys(r["case"] for r in rows):
        mine = [r for r in rows if r["case"] == case]
        walls = sorted(r["wall_s"] for r in mine)
        named = sorted({k for r in mine for k in r["regressions"]})
        lines.append(f"| {case} | {len(mine)} | {sum(r['exit'] == 0 for r in mine)} | {sum(r['exit'] == 1 for r in mine)} "
                     f"| {sum(r['exit'] not in (0, 1) for r in mine)} | {walls[len(walls) // 2]} | {'<br>'.join(named) or '-'} |")
    meta = {"runs": args.runs, "load": args.load, "cores": os.cpu_count(), "profile": args.profile,
            "baseline": args.baseline, "command": common.command_line()}
    common.save(args.out, meta, rows, "\n".join(lines))


if __name__ == "__main__":
    main()
