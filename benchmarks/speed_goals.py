"""Issue 17's goals and the kernel choices' verdicts, from ``vision_encoder.py`` result files.

    python benchmarks/speed_goals.py /tmp/gpu_kernels/vision_kernels.json /tmp/gpu_kernels/vision_varlen.json

For every input and setting of the files (attention, AS queries, budget, kernel choice): IPCV's
eager and graphed speed-up against the unpatched tower of its own run, the share of the analytic
FLOP saving that became latency (latency saved / FLOPs saved: 90% is the issue's goal at 1344²),
and IPCV's overhead share (goal: 3% at 1344²). Then, for each kernel choice, the rule by which it
becomes the default (docs/benchmarks.md): at every input and setting where it was measured, its
IPCV latency is below ``none``'s beyond the spread of both (its p90 under ``none``'s p10), eager
and, where both were graphed, graphed; rows of separate runs are not compared. Medians are one
run's; the rounds and their spread that a figure in the docs needs are the reader's to add.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

Row = dict[str, Any]


def load(paths: list[Path]) -> tuple[list[Row], list[Row]]:
    """Measured rows and error rows of the files, each tagged with its file (its run)."""
    rows, errors = [], []
    for path in paths:
        for row in json.loads(path.read_text())["rows"]:
            row = {**row, "run": path.stem}
            (errors if "error" in row else rows).append(row)
    return rows, errors


def setting(row: Row) -> tuple[str, ...]:
    return row["run"], row["input"], row["attn"], row.get("as_queries", "all"), row.get("budget", "global")


def limit_share(row: Row, graphed: bool = False) -> float | None:
    """Latency saved over FLOPs saved (1.0: all of the analytic saving became latency)."""
    base, ipcv = (row.get("base_graph"), row.get("ipcv_graph")) if graphed else (row["base"], row["ipcv"])
    if base is None or ipcv is None:
        return None
    flops_saved = 1 - row["flops_ipcv"] / row["flops_base"]
    return (1 - ipcv["median_ms"] / base["median_ms"]) / flops_saved


def speedup(row: Row, graphed: bool = False) -> float | None:
    base, ipcv = (row.get("base_graph"), row.get("ipcv_graph")) if graphed else (row["base"], row["ipcv"])
    return None if base is None or ipcv is None else base["median_ms"] / ipcv["median_ms"]


def beats(row: Row, reference: Row, graphed: bool = False) -> bool | None:
    """``row``'s IPCV faster than ``reference``'s beyond both spreads (None: not measured)."""
    key = "ipcv_graph" if graphed else "ipcv"
    if row.get(key) is None or reference.get(key) is None:
        return None
    return row[key]["p90_ms"] < reference[key]["p10_ms"]


def verdicts(rows: list[Row]) -> dict[str, dict[str, Any]]:
    """Per kernel choice other than ``none``: every comparison with ``none`` of the same run,
    input and setting, and whether it passes the rule at all of them."""
    by_setting: dict[tuple, dict[str, Row]] = defaultdict(dict)
    for row in rows:
        by_setting[setting(row)][row["kernels"]] = row
    out: dict[str, dict[str, Any]] = {}
    for key, choices in by_setting.items():
        reference = choices.get("none")
        for name, row in choices.items():
            if name == "none" or reference is None:
                continue
            entry = out.setdefault(name, {"comparisons": [], "adopt": True})
            eager, graphed = beats(row, reference), beats(row, reference, graphed=True)
            entry["comparisons"].append({"setting": key, "eager": eager, "graphed": graphed})
            entry["adopt"] = entry["adopt"] and bool(eager) and graphed is not False
    return out


def _fmt(value: float | None, pattern: str) -> str:
    return "-" if value is None else pattern.format(value)


def report(rows: list[Row], errors: list[Row]) -> str:
    lines = ["| run | input | attn | AS queries | budget | kernels | eager speed-up | graphed speed-up "
             "| share of the FLOP saving, eager / graphed | overhead share |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for row in sorted(rows, key=setting):
        run, label, attn, queries, budget = setting(row)
        lines.append(
            f"| {run} | {label} | {attn} | {queries} | {budget} | {row['kernels']} | {_fmt(speedup(row), '{:.2f}x')} "
            f"| {_fmt(speedup(row, True), '{:.2f}x')} | {_fmt(limit_share(row), '{:.0%}')} / "
            f"{_fmt(limit_share(row, True), '{:.0%}')} | {_fmt(row.get('overhead_share'), '{:.1%}')} |")
    lines += ["", "Kernel choices against `none` (beyond the spread: p90 under none's p10; eager / graphed):", ""]
    for name, entry in sorted(verdicts(rows).items()):
        marks = "; ".join(f"{s[1]} {s[2]} {s[4]}: {_mark(c['eager'])} / {_mark(c['graphed'])}"
                          for c in entry["comparisons"] for s in [c["setting"]])
        lines.append(f"- `{name}`: {'becomes the default' if entry['adopt'] else 'stays off'} ({marks})")
    for row in errors:
        lines.append(f"- error in {row['run']}, {row['input']}, {row.get('kernels', '-')}: {row['error']}")
    return "\n".join(lines)


def _mark(value: bool | None) -> str:
    return {True: "faster", False: "not faster", None: "not measured"}[value]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="+", type=Path, help="vision_encoder.py --out files (.json)")
    args = parser.parse_args()
    missing = [str(p) for p in args.files if not p.is_file()]
    if missing:
        raise SystemExit(f"not found: {', '.join(missing)}")
    print(report(*load(args.files)))


if __name__ == "__main__":
    main()
