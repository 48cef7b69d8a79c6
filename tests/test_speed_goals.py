"""benchmarks/speed_goals.py: issue 17's figures and the kernel choices' verdicts, checked on
hand-made rows whose figures are worked out here."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SPEC = importlib.util.spec_from_file_location("speed_goals", ROOT / "benchmarks" / "speed_goals.py")
goals = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(goals)


def timing(median: float, p10: float, p90: float) -> dict:
    return {"median_ms": median, "p10_ms": p10, "p90_ms": p90}


def row(kernels: str, ipcv: dict, graph: dict | None, label: str = "1344²") -> dict:
    out = {"input": label, "attn": "sdpa", "as_queries": "kept", "budget": "global", "kernels": kernels,
           "flops_base": 100.0, "flops_ipcv": 40.0, "base": timing(80.0, 79.0, 81.0), "ipcv": ipcv,
           "overhead_share": 0.05}
    if graph is not None:
        out.update(base_graph=timing(76.0, 75.5, 76.5), ipcv_graph=graph)
    return out


@pytest.fixture
def results(tmp_path) -> Path:
    rows = [
        row("none", timing(40.0, 39.0, 41.0), timing(34.0, 33.9, 34.1)),
        row("fused_rebuild", timing(37.0, 36.5, 38.5), timing(32.0, 31.9, 32.1)),  # faster beyond spread
        row("fused_search", timing(39.5, 38.0, 40.5), timing(33.0, 32.9, 33.1)),  # eager within the spread
        row("none", timing(20.0, 19.0, 21.0), None, "16f×448²"),
        row("fused_rebuild", timing(18.0, 17.5, 18.5), None, "16f×448²"),  # not graphed: eager decides
        {"input": "448²", "attn": "sdpa", "kernels": "fused_search", "error": "CompilationError: no"},
    ]
    path = tmp_path / "vision_kernels.json"
    path.write_text(json.dumps({"meta": {}, "rows": rows}))
    return path


def test_figures_and_verdicts(results):
    rows, errors = goals.load([results])
    assert len(rows) == 5 and len(errors) == 1
    none = rows[0]
    assert goals.speedup(none) == pytest.approx(2.0) and goals.speedup(none, graphed=True) == pytest.approx(76 / 34)
    # latency saved 50% of the 60% of FLOPs saved; graphed (1 - 34/76) / 0.6
    assert goals.limit_share(none) == pytest.approx(0.5 / 0.6)
    assert goals.limit_share(none, graphed=True) == pytest.approx((1 - 34 / 76) / 0.6)
    assert goals.limit_share(rows[3], graphed=True) is None
    found = goals.verdicts(rows)
    assert found["fused_rebuild"]["adopt"] is True
    assert [(c["eager"], c["graphed"]) for c in found["fused_rebuild"]["comparisons"]] == [(True, True), (True, None)]
    assert found["fused_search"]["adopt"] is False  # 40.5 ms p90 is not under none's 39.0 ms p10


def test_the_command_prints_the_tables(results):
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "speed_goals.py"), str(results)],
                         capture_output=True, text=True, check=True).stdout
    assert "| vision_kernels | 1344² | sdpa | kept | global | none | 2.00x | 2.24x | 83% / 92% | 5.0% |" in out
    assert "- `fused_rebuild`: becomes the default" in out and "- `fused_search`: stays off" in out
    assert "CompilationError" in out
    missing = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "speed_goals.py"), "nowhere.json"],
                             capture_output=True, text=True)
    assert missing.returncode != 0 and "not found: nowhere.json" in missing.stderr
