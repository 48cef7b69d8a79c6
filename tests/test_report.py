"""Pareto analysis on hand-made tables, the report's files, figures and W&B report definition."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.report import ReportError, build_report, markdown_table, pareto
from pipeline.report.wandb_report import build, report_plan, validate_offline


def flags(cost, quality, higher=True):
    mask = pareto.frontier_mask(pd.Series(cost, dtype=float), pd.Series(quality, dtype=float), higher)
    return [None if (isinstance(v, float) and math.isnan(v)) else bool(v) for v in mask]


def test_frontier_by_hand():
    # (3, 0.6) is dominated by (2, 0.7): cheaper and better
    assert flags([1, 2, 3, 4], [0.5, 0.7, 0.6, 0.9]) == [True, True, False, True]
    # same cost, better quality dominates; same quality, lower cost dominates
    assert flags([1, 1], [0.5, 0.6]) == [False, True]
    assert flags([1, 2], [0.5, 0.5]) == [True, False]


def test_frontier_ties_single_point_and_all_equal():
    # identical points do not dominate each other: both stay; (2, 0.4) is dominated by them
    assert flags([1, 1, 2], [0.5, 0.5, 0.4]) == [True, True, False]
    assert flags([7], [0.3]) == [True]
    assert flags([2, 2, 2], [0.1, 0.1, 0.1]) == [True, True, True]


def test_frontier_missing_figures_are_unranked_not_dropped():
    # the missing-cost point is unranked; without it (1, 0.9) would not be dominated anyway
    assert flags([np.nan, 2, 3], [0.9, 0.5, 0.4]) == [None, True, False]
    assert flags([1, 2], [np.nan, 0.5]) == [None, True]
    assert flags([np.nan], [np.nan]) == [None]


def test_frontier_lower_is_better_quality():
    # KL: (1, 0.1), (2, 0.05), (3, 0.0) trade off; (2.5, 0.2) is beaten by (2, 0.05)
    assert flags([1, 2, 3, 2.5], [0.1, 0.05, 0.0, 0.2], higher=False) == [True, True, True, False]


def results_table() -> pd.DataFrame:
    """Two groups: (m, 448) with baseline, IPCV, DART and a failed cell; (m, 896) without a baseline."""
    common = dict(model="m", input_kind="image", frames=0, images=1, status="ok", weights="checkpoint",
                  device="H200", device_type="cuda", clock="cuda-events", preprocess_ms=5.0)
    rows = [
        dict(cell_id="b", method="baseline", resolution=448, group_resolution=448, vision_ms=40.0, prefill_ms=20.0,
             decode_ms=40.0, e2e_ms=105.0, vision_flops=4e9, prefill_flops=6e9, total_flops=10e9,
             vision_peak_bytes=2 * 2**30, prefill_peak_bytes=3 * 2**30, decode_peak_bytes=3 * 2**30, accuracy=0.80),
        dict(cell_id="i", method="ipcv", resolution=448, group_resolution=448, ipcv_prune_layer=3,
             ipcv_reduction_ratio=0.5, ipcv_as_layers=7, vision_ms=20.0, prefill_ms=20.0, decode_ms=40.0,
             e2e_ms=85.0, vision_flops=2e9, prefill_flops=6e9, total_flops=8e9, vision_peak_bytes=2**30,
             prefill_peak_bytes=3 * 2**30, decode_peak_bytes=3 * 2**30, accuracy=0.78),
        dict(cell_id="d", method="dart", resolution=448, group_resolution=448, llm_method="dart", llm_layer=2,
             llm_reduction_ratio=0.778, vision_ms=40.0, prefill_ms=10.0, decode_ms=35.0, e2e_ms=90.0,
             vision_flops=4e9, prefill_flops=3e9, total_flops=7e9, vision_peak_bytes=2 * 2**30,
             prefill_peak_bytes=2 * 2**30, decode_peak_bytes=2 * 2**30, accuracy=0.70),
        dict(cell_id="f", method="ipcv", resolution=448, group_resolution=448, status="failed", error="CUDA out of memory"),
        dict(cell_id="x", method="ipcv", resolution=896, group_resolution=896, ipcv_prune_layer=3,
             ipcv_reduction_ratio=0.65, vision_ms=60.0, prefill_ms=30.0, decode_ms=40.0, e2e_ms=135.0,
             total_flops=20e9, accuracy=None),
    ]
    return pd.DataFrame([{**common, **r} for r in rows])


def test_tables_against_the_baseline_by_hand():
    rows = pareto.prepare(results_table())
    assert list(rows.cell_id) == ["b", "i", "d", "x"]  # the failed cell is not analysed
    assert rows.set_index("cell_id").setting.to_dict() == {
        "b": "baseline", "i": "ipcv K=3 r=0.5", "d": "dart K'=2 r'=0.778", "x": "ipcv K=3 r=0.65"}
    assert rows.set_index("cell_id").peak_bytes["b"] == 3 * 2**30
    metric = pareto.choose_quality(rows)
    assert metric.column == "accuracy"
    rel = pareto.relative_to_baseline(rows, metric).set_index("setting")
    assert set(rel.index) == {"ipcv K=3 r=0.5", "dart K'=2 r'=0.778"}  # 896 has no baseline
    assert rel.loc["ipcv K=3 r=0.5", "e2e_speedup"] == pytest.approx(105 / 85)
    assert rel.loc["ipcv K=3 r=0.5", "vision_speedup"] == pytest.approx(2.0)
    assert rel.loc["ipcv K=3 r=0.5", "total_flops_saved"] == pytest.approx(0.2)
    assert rel.loc["dart K'=2 r'=0.778", "peak_bytes_saved"] == pytest.approx(1 / 3)
    assert rel.loc["dart K'=2 r'=0.778", "quality_drop"] == pytest.approx(0.10)
    stages = pareto.stage_breakdown(rows).set_index("setting")
    # IPCV saved 20 ms, all in the vision encoder; DART saved 10 (prefill) + 5 (decode): vision share 0
    assert list(stages.index[:1]) == ["baseline"]
    assert stages.loc["ipcv K=3 r=0.5", "time_saved_ms"] == pytest.approx(20)
    assert stages.loc["dart K'=2 r'=0.778", ["vision_saved_ms", "llm_saved_ms"]].tolist() == [0, 15]
    assert stages.loc["ipcv K=3 r=0.5", "vision_share_of_time_saved"] == pytest.approx(1.0)
    assert stages.loc["dart K'=2 r'=0.778", "vision_share_of_time_saved"] == pytest.approx(0.0)
    assert stages.loc["dart K'=2 r'=0.778", "vision_share_of_flops_saved"] == pytest.approx(0.0)
    points = pareto.frontiers(rows, metric, ["e2e_ms", "total_flops"])
    e2e = points[points.cost_metric == "e2e_ms"].set_index("cell_id")
    # e2e: baseline (105, 0.80), ipcv (85, 0.78), dart (90, 0.70: dominated by ipcv)
    assert e2e.on_frontier[["b", "i", "d"]].tolist() == [True, True, False] and pd.isna(e2e.on_frontier["x"])
    flops = points[points.cost_metric == "total_flops"].set_index("cell_id")
    assert flops.on_frontier["d"] == True and flops.cost["b"] == pytest.approx(10.0)  # noqa: E712 (GFLOPs)
    assert flops.on_frontier.isna().sum() == 1 and flops.why_unranked["x"] == "no accuracy"


def test_quality_choice():
    rows = pareto.prepare(results_table())
    assert pareto.choose_quality(rows).column == "accuracy"
    random = rows.assign(weights="random (tiny preset)")
    assert pareto.choose_quality(random).column == "fidelity_first_token_kl"  # chance-level accuracy is not used
    agree = random.assign(fidelity_benchmark_answer_match=0.5)
    assert pareto.choose_quality(agree).column == "fidelity_benchmark_answer_match"
    assert pareto.choose_quality(rows, "fidelity_feature_cosine").column == "fidelity_feature_cosine"
    with pytest.raises(ValueError, match="unknown quality metric 'speed'"):
        pareto.choose_quality(rows, "speed")


def test_vision_share_only_when_no_stage_got_slower():
    assert pareto._share(3.0, 1.0) == 0.75
    assert math.isnan(pareto._share(-1.0, 5.0)) and math.isnan(pareto._share(2.0, -0.5))
    assert math.isnan(pareto._share(0.0, 0.0))


def test_markdown_table():
    table = markdown_table(pd.DataFrame([{"a": 1.23456, "b": None}, {"a": "x|y", "b": True}]), {"a": "A", "b": "B"})
    assert table.splitlines() == ["| A | B |", "|---|---|", "| 1.23 | - |", "| x\\|y | yes |"]  # 3 significant figures


def write_sweep(tmp_path, table: pd.DataFrame, mode: str = "disabled"):
    table.to_parquet(tmp_path / "results.parquet", index=False)
    (tmp_path / "profile.json").write_text(json.dumps({"name": "handmade", "tracking": {"mode": mode}}))
    return tmp_path


def non_blank(path) -> tuple[int, int]:
    image = Image.open(path)
    pixels = np.asarray(image.convert("L"), dtype=float)
    assert pixels.std() > 5 and (pixels < 128).mean() > 0.001, path  # drawn on, not blank
    return image.size


def test_report_files_and_figure_sizes(tmp_path):
    out = write_sweep(tmp_path, results_table())
    result = build_report(out)
    names = {p.name for p in result.files}
    assert {"frontier.csv", "speedup.csv", "stages.csv", "report.md", "report.html", "stages.png",
            "quality_vs_ratio.png", "frontier_e2e_ms.png", "frontier_peak_bytes.png"} <= names
    assert "wandb_report.json" not in names  # W&B disabled in this profile
    # two groups -> two panels in a row: 2 x 550 px wide, 420 px + 80 px legend band high; the
    # 896 group has no accuracy, so nothing of it to rank or plot against quality: one panel
    assert non_blank(out / "report" / "stages.png") == (1100, 500)
    assert non_blank(out / "report" / "frontier_e2e_ms.png") == (550, 500)
    # quality against ratio: the 448 group has an IPCV r (ipcv) and an LLM r' (dart): a panel each
    assert non_blank(out / "report" / "quality_vs_ratio.png") == (1100, 500)
    md = (out / "report" / "report.md").read_text()
    assert "## m | image 448px" in md and "## m | image 896px" in md
    assert "| ipcv K=3 r=0.5 | 85 | 0.78 |" in md  # on the e2e frontier
    assert "No uncompressed baseline cell in this group" in md
    assert "CUDA out of memory" in md  # failed cells are listed, not dropped
    page = (out / "report" / "report.html").read_text()
    # self-contained: plotly.js is inlined (megabytes), no script is fetched from elsewhere
    assert "Plotly.newPlot" in page and len(page) > 1_000_000 and "<script src=" not in page.replace("\n", "")


def test_report_single_point_and_missing_memory(tmp_path):
    one = results_table().iloc[[0]].drop(columns=["vision_peak_bytes", "prefill_peak_bytes", "decode_peak_bytes"])
    result = build_report(write_sweep(tmp_path, one))
    assert "peak_bytes" not in result.costs and any("peak_bytes left out" in n for n in result.notes)
    assert non_blank(tmp_path / "report" / "frontier_e2e_ms.png") == (550, 500)
    assert "quality_vs_ratio.png" not in {p.name for p in result.files}  # no ratio to plot against


def test_report_errors(tmp_path):
    with pytest.raises(ReportError, match="no such directory"):
        build_report(tmp_path / "nope")
    with pytest.raises(ReportError, match="no results.parquet or cells/"):
        build_report(tmp_path)
    write_sweep(tmp_path, results_table().assign(status="failed"))
    with pytest.raises(ReportError, match="no finished \\(ok\\) cells"):
        build_report(tmp_path)
    result = CliRunner().invoke(app, ["report", str(tmp_path / "nope")])
    assert result.exit_code == 2 and "no such directory" in result.output
    write_sweep(tmp_path, results_table())
    result = CliRunner().invoke(app, ["report", str(tmp_path), "--cost", "watts"])
    assert result.exit_code == 2 and "'watts' is not one of" in result.output
    with pytest.raises(ReportError, match="unknown cost\\(s\\) watts"):  # the same check for a caller of the API
        build_report(tmp_path, costs=["watts"])


def test_wandb_report_definition_holds_the_panels(tmp_path):
    out = write_sweep(tmp_path, results_table(), mode="offline")
    result = build_report(out)
    definition = json.loads((out / "report" / "wandb_report.json").read_text())
    assert result.wandb_report == str(out / "report" / "wandb_report.json") and result.wandb_run
    specs = definition["wandb_panel_specs"]
    scatter = [s for s in specs if s["viewType"] == "Scatter Plot"]
    assert {(s["config"]["xAxis"], s["config"]["yAxis"]) for s in scatter} == {
        (f"summary:{c}", "summary:accuracy") for c in ("e2e_ms", "vision_ms", "prefill_ms", "total_flops", "peak_bytes")}
    (parallel,) = [s for s in specs if s["viewType"] == "Parallel Coordinates Plot"]
    accessors = [c["accessor"] for c in parallel["config"]["columns"]]
    assert "config:method.value" in accessors and "summary:accuracy" in accessors
    assert "config:vision.value.reduction_ratio" in accessors
    # one section per model x input (448 and 896 px): its own scatters and its own stage bars
    assert len(scatter) == 2 * 5
    bars = [s for s in specs if s["viewType"] == "Bar Chart"]
    assert [b["config"]["chartTitle"].rsplit(": ", 1)[1] for b in bars] == ["m | image 448px", "m | image 896px"]
    assert bars[0]["config"]["metrics"] == [f"summary_metrics.{s}" for s in ("preprocess_ms", "vision_ms", "prefill_ms",
                                                                               "decode_ms")]
    assert bars[0]["config"]["groupBy"] == "method.value"
    # the plan rebuilds the same report; its run sets select this sweep, a section its model and input
    report = build(definition["plan"])
    grids = [b for b in report.blocks if hasattr(b, "panels")]
    assert all('Config("sweep") == "handmade"' in g.runsets[0].filters for g in grids)
    section = [g for g in grids if g.runsets[0].groupby == ["method"]][0].runsets[0].filters
    assert 'Config("model.name") == "m"' in section and 'SummaryMetric("input") == "image 448px"' in section
    assert {"type": "p", "text": "device: H200 (CUDA)"} in definition["plan"]["blocks"]  # the provenance header
    from tests.wandb_offline import read_runs

    (run,) = [r for r in read_runs(out / "wandb") if r["config"].get("kind") == "report"]
    assert run["config"]["provenance"]["device"] == "H200 (CUDA)" and run["summary"]["provenance/device"] == "H200 (CUDA)"


def test_report_plan_rejects_unknown_panels():
    plan = report_plan(project="p", entity="e", sweep="s", quality="accuracy", quality_label="acc",
                       costs={"e2e_ms": "e2e"}, summary=[])
    plan["blocks"][-1]["panels"][0]["type"] = "pie"
    with pytest.raises(ValueError, match="unknown panel type 'pie'"):
        build(plan)
    assert validate_offline(build(report_plan(project="p", entity="e", sweep="s", quality="accuracy",
                                              quality_label="acc", costs={"e2e_ms": "e2e"}, summary=[])))["panels"]


def test_html_cost_menu_shows_one_cost_at_a_time():
    from pipeline.report.html import _group_figure

    rows = pareto.prepare(results_table())
    metric = pareto.choose_quality(rows)
    points = pareto.frontiers(rows, metric, ["e2e_ms", "total_flops"])
    mine = points[points.input == "image 448px"]
    fig = _group_figure(mine, metric, ["e2e_ms", "total_flops"], "t")
    (menu,) = fig.layout.updatemenus
    masks = [button.args[0]["visible"] for button in menu.buttons]
    assert [b.label for b in menu.buttons] == [pareto.COST["e2e_ms"].label, pareto.COST["total_flops"].label]
    # each trace belongs to exactly one cost; the first cost is what the page opens with
    assert all(sum(m[i] for m in masks) == 1 for i in range(len(fig.data)))
    assert [bool(t.visible) for t in fig.data] == masks[0]
    shown = [t for t, v in zip(fig.data, masks[1]) if v and t.mode == "markers"]
    assert sorted(x for t in shown for x in t.x) == [7.0, 8.0, 10.0]  # GFLOPs of dart, ipcv, baseline


def test_numbers_three_significant_figures_and_noise():
    from pipeline.report import numbers

    assert [numbers.sig(v) for v in (1.116, 0.8056, 12.345, 0.012345, 1234.5, 0.0, None, float("nan"))] == [
        "1.12", "0.806", "12.3", "0.0123", "1234", "0", "-", "-"]
    assert numbers.spread(12.34, 11.9, 13.0) == "12.3 (11.9–13)" and numbers.spread(5, None, 6) == "5"
    assert numbers.spread(-115, -314.2, 85.21) == "-115 (-314 to 85.2)"  # no dash beside a minus sign
    # baseline 100 (90–110) ms over a cell at 80 (75–85) ms: 1.25, at least 90/85, at most 110/75
    lo, hi = numbers.ratio_interval((90, 110), (75, 85))
    assert (lo, hi) == (pytest.approx(90 / 85), pytest.approx(110 / 75)) and numbers.within_noise(lo, hi) is False
    assert numbers.speedup(1.25, lo, hi) == "1.25 (1.06–1.47)"
    assert numbers.speedup(1.116, 0.95, 1.3) == "≈1 (0.95–1.3)"  # the interval contains 1: no gain
    assert numbers.speedup(1.116, None, None) == "1.12" and numbers.within_noise(None, 1.2) is None


def spread_table() -> pd.DataFrame:
    """The hand-made sweep with p10/p90 per stage: the IPCV cell's e2e gain is beyond the spread,
    and so is its prefill's (18 ms against 20: a fluke, its input is unchanged); DART's e2e range
    straddles the baseline's."""
    table = results_table()
    table.loc[table.cell_id == "i", "prefill_ms"] = 18.0
    spreads = {"b": dict(e2e=(100, 110), vision=(38, 42), prefill=(19, 21)),
               "i": dict(e2e=(80, 90), vision=(19, 21), prefill=(17.5, 18.5)),
               "d": dict(e2e=(80, 104), vision=(38, 42), prefill=(9, 11))}
    for cell, stages in spreads.items():
        for stage, (p10, p90) in stages.items():
            table.loc[table.cell_id == cell, [f"{stage}_ms_p10", f"{stage}_ms_p90"]] = [p10, p90]
    return table


def test_speedups_carry_their_interval_and_noise_is_not_a_gain():
    rows = pareto.prepare(spread_table())
    rel = pareto.relative_to_baseline(rows, pareto.choose_quality(rows)).set_index("method")
    assert rel.loc["ipcv", ["e2e_speedup_lo", "e2e_speedup_hi"]].tolist() == [pytest.approx(100 / 90), pytest.approx(110 / 80)]
    assert rel.loc["ipcv", "e2e_speedup_within_noise"] == False  # noqa: E712 (1.11-1.38)
    # IPCV hands the LLM every visual token: its prefill speed-up (20/18 = 1.11, interval 1.03-1.2)
    # is noise by construction, though the interval misses 1
    assert rel.loc["ipcv", "prefill_speedup"] == pytest.approx(20 / 18) and rel.loc["ipcv", "prefill_speedup_lo"] > 1
    assert rel.loc["ipcv", "prefill_speedup_within_noise"] == True  # noqa: E712
    # DART: 105/90 = 1.17 but its e2e p10-p90 (80-104) against the baseline's (100-110) gives 0.96-1.38
    assert rel.loc["dart", "e2e_speedup"] == pytest.approx(105 / 90) and rel.loc["dart", "e2e_speedup_within_noise"]
    # and DART's vision (same input as the baseline) is noise whatever its figures say
    assert rel.loc["dart", "vision_speedup_within_noise"] == True  # noqa: E712
    assert pareto.gain(rel.reset_index()).tolist() == [pytest.approx(105 / 85), 1.0]
    from pipeline.report import tables

    shown = tables.render(rel.reset_index(), tables.speedup(pareto.choose_quality(rows)))
    assert shown["end to end speed-up (interval)"].tolist() == ["1.24 (1.11–1.38)", "≈1 (0.962–1.38)"]
    assert shown["vision encoder speed-up (interval)"].tolist()[1] == "≈1 (0.905–1.11)"
    assert shown["LLM prefill speed-up (interval)"].tolist()[0] == "≈1 (input unchanged)"
    stages = pareto.stage_breakdown(rows).set_index("setting")
    # IPCV saved 20 ms in the vision encoder: from 38 - 21 = 17 to 42 - 19 = 23
    assert stages.loc["ipcv K=3 r=0.5", ["vision_saved_ms_p10", "vision_saved_ms_p90"]].tolist() == [17, 23]


def test_report_md_states_provenance_spread_and_noise(tmp_path):
    table = spread_table().assign(torch_version="2.9.0", transformers_version="5.24.0", ipcv_version="0.1.0",
                                  ipcv_kernels="fused_rebuild", git_commit="abc123def456", dtype="bfloat16", attn_implementation="sdpa",
                                  gpus_per_worker=1.0, warmup=3, repeats=20, started_at=1.7e9, finished_at=1.7e9 + 60)
    build_report(write_sweep(tmp_path, table))
    md = (tmp_path / "report" / "report.md").read_text()
    for line in ("| device | H200 (CUDA, 1 GPU per worker) |", "| timed repeats | 20 |", "| warm-up requests | 3 |",
                 "| git commit | abc123def456 |", "| dtype | bfloat16 |", "| attention | sdpa |", "| torch | 2.9.0 |",
                 "| transformers | 5.24.0 |", "| IPCV kernels | fused_rebuild |",
                 "| measured | 2023-11-14 22:13 UTC to 2023-11-14 22:14 UTC |"):
        assert line in md, line
    assert "timed repeat(s) per cell" not in md  # 20 repeats: no warning about weak spreads
    # the frontier's cost with its spread; the DART gain within noise, ranked below IPCV's
    assert "| ipcv K=3 r=0.5 | 85 (80–90) | 0.78 |" in md
    assert md.index("| ipcv K=3 r=0.5 | 1.24 (1.11–1.38)") < md.index("| dart K'=2 r'=0.778 | ≈1 (0.962–1.38)")
    page = (tmp_path / "report" / "report.html").read_text()
    assert "abc123def456" in page and "end to end speed-up (interval)" in page and "e2e_speedup" not in page


def test_provenance_falls_back_to_the_profile_for_older_rows():
    from pipeline.report.provenance import provenance

    header = provenance(pareto.prepare(results_table()), {"measurement": {"warmup": 1, "repeats": 2}})
    assert header["timed repeats"] == "2 (from the profile)" and header["git commit"] == "not recorded"
    assert header["IPCV kernels"] == "not recorded"
    from pipeline.report.provenance import fewest_repeats

    assert fewest_repeats(pareto.prepare(results_table()), {"measurement": {"repeats": 2}}) == 2
    assert fewest_repeats(pareto.prepare(results_table()).assign(repeats=[20, 3, 20, 20]), {}) == 3
    assert header["device"] == "H200 (CUDA)" and header["dtype"] == "not recorded"  # no such columns here


def test_sweep_summary_has_one_row_per_setting():
    from pipeline.report.tables import sweep_summary

    table = spread_table()
    extra = table[table.cell_id == "i"].assign(cell_id="i2", ipcv_reduction_ratio=0.65, vision_ms=15.0)
    shown = sweep_summary(pd.concat([table, extra], ignore_index=True))
    mine = shown[shown.input == "image 448px"]
    # the two IPCV ratios are two rows, in the methods' fixed order after the baseline
    assert mine.setting.tolist() == ["baseline", "ipcv K=3 r=0.5", "ipcv K=3 r=0.65", "dart K'=2 r'=0.778"]
    assert mine["vision ms (p10–p90)"].tolist() == ["40 (38–42)", "20 (19–21)", "15 (19–21)", "40 (38–42)"]
    assert mine["GFLOPs"].tolist() == ["10", "8", "8", "7"]


def test_figures_fixed_method_order_and_lower_is_better_axis():
    import matplotlib.pyplot as plt

    from pipeline.report import figures
    from pipeline.report.html import _group_figure

    frame = pd.DataFrame({"method": ["dart", "ipcv+fastv", "baseline", "ipcv", "dart"]})
    assert [m for m, _ in figures._by_method(frame)] == ["baseline", "ipcv", "dart", "ipcv+fastv"]
    kl = pareto.QUALITY["fidelity_first_token_kl"]
    fig, ax = plt.subplots()
    figures._quality_axis(ax, kl)
    assert ax.yaxis_inverted() and "up is better" in ax.get_ylabel()
    figures._quality_axis(ax2 := fig.add_subplot(2, 1, 2), pareto.QUALITY["accuracy"])
    assert not ax2.yaxis_inverted()
    plt.close(fig)
    rows = pareto.prepare(spread_table().assign(fidelity_first_token_kl=[0.0, 0.02, 0.05, None, 0.03]))
    points = pareto.frontiers(rows, kl, ["e2e_ms"])
    html_fig = _group_figure(points[points.input == "image 448px"], kl, ["e2e_ms"], "t")
    assert html_fig.layout.yaxis.autorange == "reversed"
    (base,) = [t for t in html_fig.data if t.name == "baseline"]
    assert list(base.error_x.arrayminus) == [5.0] and list(base.error_x.array) == [5.0]  # 105 (100-110)


def test_point_numbers_follow_method_order_and_are_the_same_for_every_cost():
    rows = pareto.prepare(results_table())
    points = pareto.frontiers(rows, pareto.choose_quality(rows), ["e2e_ms", "total_flops"])
    mine = points[points.input == "image 448px"]
    for cost in ("e2e_ms", "total_flops"):
        assert mine[mine.cost_metric == cost].set_index("cell_id").point.to_dict() == {"b": 1, "i": 2, "d": 3}


def test_publish_needs_a_definition_and_a_key_and_says_so(tmp_path, monkeypatch):
    from pipeline.report import wandb_report

    for name in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "NETRC", "WANDB_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc: no wandb login
    result = CliRunner().invoke(app, ["publish", str(tmp_path)])
    assert result.exit_code == 2 and "no W&B report definition" in result.output
    out = write_sweep(tmp_path, results_table(), mode="offline")
    build_report(out)
    definition = out / "report" / "wandb_report.json"
    assert json.loads(definition.read_text())["publish"] == f"ipcv-study publish {definition}"
    assert not wandb_report.has_credentials()
    result = CliRunner().invoke(app, ["publish", str(out)])
    assert result.exit_code == 2 and "no W&B API key on this machine" in result.output
    (tmp_path / ".netrc").write_text("machine api.wandb.ai\n  login user\n  password abc\n")
    (tmp_path / ".netrc").chmod(0o600)
    assert wandb_report.has_credentials()  # a wandb login entry is found; the publishing itself needs the network
    (tmp_path / "bad.json").write_text("{}")
    result = CliRunner().invoke(app, ["publish", str(tmp_path / "bad.json")])
    assert result.exit_code == 2 and "not a W&B report definition" in result.output


def test_figure_key_lists_each_point_and_the_frontiers_it_is_on():
    from pipeline.report.markdown import key_table

    rows = pareto.prepare(results_table())
    points = pareto.frontiers(rows, pareto.choose_quality(rows), ["e2e_ms", "total_flops"])
    key = key_table(points[points.input == "image 448px"], ["e2e_ms", "total_flops"]).splitlines()
    # e2e: baseline and IPCV on the frontier, DART dominated; GFLOPs: all three trade off (10/0.8, 8/0.78, 7/0.7)
    assert key[2:] == ["| 1 | baseline | e2e ms, GFLOPs |", "| 2 | ipcv K=3 r=0.5 | e2e ms, GFLOPs |",
                       "| 3 | dart K'=2 r'=0.778 | GFLOPs |"]
