"""The ``ipcv-study`` command."""

from __future__ import annotations

import enum
import json
import sys
from pathlib import Path
from typing import Literal, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ipcv.config import AsQueries, Budget, NeighborScope, Restore, Selection
from pipeline import columns
from pipeline.evaluation.tasks import TASKS
from pipeline.methods import LLM_METHODS

app = typer.Typer(
    help="IPCV scaling study: what visual-token compression buys, stage by stage. "
    "An unexpected error prints one message; add --debug (anywhere) for its traceback.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# In a terminal rich uses its width; in logs and pipes (80 columns by default) the tables would be
# squeezed into unreadable wrapping, so give them room there.
console = Console() if Console().is_terminal else Console(width=160)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            number = version("ipcv-study")
        except PackageNotFoundError:  # run from a checkout that is not installed
            number = "0.1.0 (not installed)"
        console.print(f"ipcv-study {number}", highlight=False)
        raise typer.Exit()


@app.callback()
def main(
    show_version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                      help="Print the version and exit."),
) -> None:
    """IPCV scaling study: what visual-token compression buys, stage by stage."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()


# Options shared by the commands: one definition each.
MODEL = typer.Option("tiny-qwen2-vl", help="Preset name (tiny-qwen2-vl, tiny-qwen2.5-vl, tiny-internvl3, "
                                           "tiny-internvl3-qknorm), hub id or local path.")
RESOLUTION = typer.Option(448, help="Image side in pixels (Qwen-VL: a multiple of 28, its patch grid; InternVL "
                                    "cuts the image into 448² tiles).")
PRUNE_LAYER = typer.Option(3, help="IPCV K: tokens scored by block K-1, pruned from block K on (>= 2).")
REDUCTION_RATIO = typer.Option(0.65, help="IPCV r: share of vision tokens removed, in [0, 1).")
AS_LAYERS = typer.Option(7, help="IPCV A: Attention Stabilization blocks.")
NEIGHBORS = typer.Option(10, help="IPCV k: neighbours for reconstruction.")
BUDGET = typer.Option("global", help="IPCV budget: global (over all images of a request, as published) or per "
                      "image.")
NEIGHBOR_SCOPE = typer.Option("global", help="IPCV neighbour scope: global (as published) or same_image.")
SELECTION = typer.Option("feature_diff", help="IPCV selection: feature_diff (the paper) or random (control).")
RESTORE = typer.Option("ngr", help="IPCV restoration: ngr or frozen (no-NGR ablation).")
AS_QUERIES = typer.Option("all", help="IPCV queries in the Attention Stabilization blocks: all (as published) or "
                          "kept (only the kept tokens' queries: the same kept outputs, fewer FLOPs).")
DTYPE = typer.Option("float32", help="Weights and activations dtype.")
DEVICE = typer.Option("cpu", help="cpu or cuda[:N].")
SEED = typer.Option(0, help="Seed of the tiny model's weights and of the synthetic inputs.")
JSON_OUT = typer.Option(None, "--json", help="Also write the result as JSON here.")
LLM_CHOICES = ("none", *LLM_METHODS)
# enumerated options: typer shows a Literal's values in --help and refuses anything else
Dtype = Literal["float32", "bfloat16", "float16"]  # pipeline.models.DTYPES (tests/test_cli.py checks)
Attention = Literal["eager", "sdpa", "flash_attention_2", "torch_flash_varlen"]  # attention.IMPLEMENTATIONS (checked)
LLMChoice = Literal[LLM_CHOICES]
WandbMode = Literal["offline", "online", "disabled"]
Executor = Literal["ray", "local"]  # pipeline.sweep.driver.EXECUTORS (tests/test_cli.py checks)
Task = Literal[tuple(TASKS)]
Cost = enum.Enum("Cost", {c: c for c in columns.COSTS}, type=str)  # typer takes a list of Enum, not of Literal


def _ipcv_config(prune_layer, reduction_ratio, as_layers, neighbors, budget, neighbor_scope, selection, restore, seed,
                 as_queries="all"):
    import ipcv

    return ipcv.IPCVConfig(
        prune_layer=prune_layer, reduction_ratio=reduction_ratio, as_layers=as_layers, neighbors=neighbors,
        budget=budget, neighbor_scope=neighbor_scope, selection=selection, restore=restore, seed=seed,
        as_queries=as_queries,
    )


def _open_image(path: Path):
    from PIL import Image, UnidentifiedImageError

    try:
        return Image.open(path).convert("RGB")
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"--image {path}: not an image PIL can read ({err})") from None


def _llm_config(method: str, **settings):
    """LLM-side pruning of ``method`` (``None`` for "none")."""
    import ipcv

    if method not in LLM_CHOICES:
        raise ValueError(f"--llm-method must be one of {', '.join(LLM_CHOICES)}; got {method!r}")
    return ipcv.LLMPruneConfig(method=method, **settings) if method != "none" else None


def _fail(err: Exception, code: int = 2) -> None:
    console.print(f"[red]error:[/red] {escape(str(err))}")
    raise typer.Exit(code) from None


def _check_writable(path: Optional[Path], what: str = "--json") -> None:
    """Refuse an output path that cannot be written before the work that fills it starts."""
    if path is None:
        return
    if path.is_dir():
        raise ValueError(f"{what} {path} is a folder; give a file path")
    folder = next((p for p in (path.parent, *path.parent.parents) if p.exists()), Path("/"))
    if not folder.is_dir() or not _writable(folder):
        raise ValueError(f"{what} {path}: {folder} is not a writable folder")


def _writable(folder: Path) -> bool:
    import os

    return os.access(folder, os.W_OK)


def _write_json(path: Optional[Path], text: str) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        console.print(f"wrote {path}")


@app.command()
def demo(
    model: str = MODEL,
    resolution: int = RESOLUTION,
    images: int = typer.Option(2, min=1, help="Images in the request."),
    prune_layer: int = PRUNE_LAYER,
    reduction_ratio: float = REDUCTION_RATIO,
    as_layers: int = AS_LAYERS,
    neighbors: int = NEIGHBORS,
    budget: Budget = BUDGET,
    neighbor_scope: NeighborScope = NEIGHBOR_SCOPE,
    selection: Selection = SELECTION,
    restore: Restore = RESTORE,
    as_queries: AsQueries = AS_QUERIES,
    dtype: Dtype = DTYPE,
    device: str = DEVICE,
    seed: int = SEED,
    json_out: Optional[Path] = JSON_OUT,
) -> None:
    """Run IPCV on one request's vision encoder: kept tokens, FLOPs saved, feature fidelity."""
    from pipeline.measure.vision_compare import compare_vision
    from pipeline.models import family_of, load_model, requirements_for
    from pipeline.models.requests import synthetic_vision_input

    try:
        _check_writable(json_out)
        config = _ipcv_config(prune_layer, reduction_ratio, as_layers, neighbors, budget, neighbor_scope, selection, restore, seed,
                              as_queries)
        requirements_for(model).check_resolution(resolution)
        if images < 1:
            raise ValueError(f"count of images must be >= 1, got {images}")
        loaded = load_model(model, dtype=dtype, device=device, seed=seed)
        inp = synthetic_vision_input(family_of(loaded), resolution, images, seed=seed)
        result = compare_vision(loaded, inp, config)
    except (ValueError, TypeError) as err:
        _fail(err)

    table = Table(title=f"IPCV on {model} vision encoder: {inp.description} ({dtype}, {device})")
    table.add_column("image")
    table.add_column("tokens in", justify="right")
    table.add_column("kept after block K-1", justify="right")
    table.add_column("to merger", justify="right")
    for i, (n_in, n_kept, n_out) in enumerate(zip(result.tokens_in, result.tokens_kept, result.tokens_to_merger)):
        table.add_row(str(i), str(n_in), str(n_kept), str(n_out))
    console.print(table)
    base, cut = result.flops_baseline["total"], result.flops_ipcv["total"]
    console.print(
        f"vision FLOPs (analytic, 2 per multiply-add): {base / 1e9:.3f} G -> {cut / 1e9:.3f} G "
        f"({100 * result.flops_saved:.1f}% saved, IPCV overhead {result.flops_ipcv['ipcv_overhead'] / 1e9:.4f} G)"
    )
    console.print(
        f"fidelity: cosine similarity of LLM-bound visual features to the unpatched encoder: "
        f"mean {result.cosine_mean:.4f}, min {result.cosine_min:.4f} (random weights: fidelity, not accuracy)"
    )
    payload = {"model": model, "input": inp.description, "config": config.to_dict(), **result.__dict__}
    _write_json(json_out, json.dumps(payload, indent=2))


@app.command()
def profile(
    model: str = MODEL,
    resolution: int = RESOLUTION,
    images: int = typer.Option(1, min=1, help="Synthetic images in the request (ignored with --image or --video-frames)."),
    image: Optional[list[Path]] = typer.Option(None, help="An image file to send (repeat for several)."),
    video_frames: int = typer.Option(0, min=0, help="Send a synthetic video of this many frames (even) instead of images."),
    prompt: str = typer.Option("Describe the picture in one sentence.", help="Text of the request."),
    ipcv_on: bool = typer.Option(True, "--ipcv/--no-ipcv", help="Compress the vision encoder with IPCV."),
    prune_layer: int = PRUNE_LAYER,
    reduction_ratio: float = REDUCTION_RATIO,
    as_layers: int = AS_LAYERS,
    neighbors: int = NEIGHBORS,
    budget: Budget = BUDGET,
    neighbor_scope: NeighborScope = NEIGHBOR_SCOPE,
    selection: Selection = SELECTION,
    restore: Restore = RESTORE,
    as_queries: AsQueries = AS_QUERIES,
    llm_method: LLMChoice = typer.Option("none", help="LLM-side pruning (none: off)."),
    llm_layer: int = typer.Option(2, help="LLM pruning layer K' (>= 1)."),
    llm_ratio: float = typer.Option(0.778, help="LLM pruning ratio r' of image/video tokens, in [0, 1)."),
    dtype: Dtype = DTYPE,
    attn: Attention = typer.Option("sdpa", help="Attention implementation."),
    device: str = DEVICE,
    max_new_tokens: int = typer.Option(8, min=1, help="Tokens to generate (decode stage)."),
    warmup: int = typer.Option(1, min=0, help="Untimed requests before timing."),
    repeats: int = typer.Option(3, min=1, help="Timed requests."),
    flops: bool = typer.Option(True, "--flops/--no-flops", help="Also count FLOPs with fvcore and FlopCounterMode."),
    seed: int = SEED,
    json_out: Optional[Path] = JSON_OUT,
) -> None:
    """Measure one request stage by stage: preprocess, vision, prefill, decode, end to end."""
    from pipeline.measure.stages import MeasureSettings, StageError, measure_request
    from pipeline.models import RequestSpec, load_model, load_processor, requirements_for, synthetic_spec

    try:
        _check_writable(json_out)
        vision = _ipcv_config(prune_layer, reduction_ratio, as_layers, neighbors, budget, neighbor_scope, selection, restore,
                              seed, as_queries) if ipcv_on else None
        llm = _llm_config(llm_method, layer=llm_layer, reduction_ratio=llm_ratio)
        settings = MeasureSettings(warmup=warmup, repeats=repeats, max_new_tokens=max_new_tokens, count_flops=flops)
        requirements = requirements_for(model)
        requirements.check_resolution(resolution)
        if image:
            missing = [str(p) for p in image if not p.is_file()]
            if missing:
                raise ValueError(f"image file(s) not found: {', '.join(missing)}")
            spec = RequestSpec([_open_image(p) for p in image], [], prompt, resolution)
        else:
            spec = synthetic_spec(resolution, images=images, video_frames=video_frames, seed=seed, prompt=prompt,
                                  requirements=requirements)
        loaded = load_model(model, dtype=dtype, attn_implementation=attn, device=device, seed=seed)
        processor = load_processor(model)
        report = measure_request(loaded, spec, model_name=model, vision=vision, llm=llm, settings=settings,
                                 processor=processor)
    except StageError as err:
        _fail(err, code=1)
    except (ValueError, TypeError, ImportError) as err:
        _fail(err)
    _print_profile(report)
    _write_json(json_out, report.to_json())


@app.command()
def evaluate(
    task: Task = typer.Argument(..., help="Benchmark format."),
    data: str = typer.Option("synthetic", help="'synthetic', a data file or folder, a save_to_disk folder, or hf://<id>."),
    split: Optional[str] = typer.Option(None, help="Split of an HF dataset (or a name part of the files in a folder)."),
    limit: Optional[int] = typer.Option(None, min=1, help="First N rows (synthetic: rows to render, default 8)."),
    media_root: Optional[Path] = typer.Option(None, help="Folder that relative image/video paths are under."),
    frames: int = typer.Option(8, help="Frames sampled per video (video tasks; even)."),
    model: str = MODEL,
    resolution: int = RESOLUTION,
    prune_layer: int = PRUNE_LAYER,
    reduction_ratio: float = REDUCTION_RATIO,
    as_layers: int = AS_LAYERS,
    neighbors: int = NEIGHBORS,
    llm_method: LLMChoice = typer.Option("none", help="Also prune in the LLM, at its default settings (none: off)."),
    dtype: Dtype = DTYPE,
    device: str = DEVICE,
    max_new_tokens: int = typer.Option(16, min=1, help="Answer length limit."),
    seed: int = SEED,
    out: Optional[Path] = typer.Option(None, help="Write every sample's answers (both runs) here as JSON Lines."),
) -> None:
    """Score one benchmark uncompressed and with IPCV: accuracy, and fidelity to the uncompressed answers."""
    from tqdm import tqdm

    from pipeline.evaluation import DataError, check_sources, get_task
    from pipeline.evaluation import runner as ev
    from pipeline.measure.stages import compressed
    from pipeline.models import is_preset, requirements_for
    from pipeline.sweep.executor import CellExecutor
    from pipeline.sweep.spec import ModelSpec, TaskSpec

    try:
        _check_writable(out, "--out")
        spec = get_task(task)
        requirements_for(model).check_resolution(resolution)
        requirements_for(model).check_frames(frames)
        vision = _ipcv_config(prune_layer, reduction_ratio, as_layers, neighbors, "global", "global", "feature_diff", "ngr", seed)
        llm = _llm_config(llm_method)
        task_config = TaskSpec(task=task, source=data, split=split, limit=limit, frames=frames, seed=seed,
                               media_root=str(media_root) if media_root else None).cell_config()
        check_sources({"tasks": [task_config]})  # a wrong path or row stops here, before a model loads
        executor = CellExecutor(ModelSpec(name=model, dtype=dtype, seed=seed), device=device)
        if executor.model is None:
            raise ValueError(executor.load_error)
        samples = executor.task_samples(task_config)[1]
        runs = {}
        with tqdm(total=2 * len(samples), unit="sample", desc=task) as bar:
            runs["uncompressed"] = executor.answers(task_config, resolution, max_new_tokens, bar.update)
            with compressed(executor.model, vision, llm):
                runs["compressed"] = executor.answers(task_config, resolution, max_new_tokens, bar.update)
    except (DataError, ValueError, TypeError, ImportError) as err:
        _fail(err)
    scores = {name: ev.score(spec, samples, a, runs["uncompressed"] if name == "compressed" else None)
              for name, a in runs.items()}
    what = f"IPCV r={reduction_ratio}" + (f" + {llm_method}" if llm else "")
    view = Table(title=f"{task}: {len(samples)} samples at {resolution}px, {model}"
                 + (" (random weights: chance-level accuracy)" if is_preset(model) else ""))
    view.add_column("figure")
    view.add_column("uncompressed")
    view.add_column(what)
    for key in scores["compressed"]:
        view.add_row(key, _num(scores["uncompressed"].get(key)), _num(scores["compressed"][key]))
    console.print(view)
    if out:
        records = []
        for name, a in runs.items():
            records += [{**r, "run": name} for r in ev.predictions(spec, samples, a, None)]
        out.write_text("".join(json.dumps(r) + "\n" for r in records))
        console.print(f"answers: {out}")


@app.command()
def synthesize(
    out: Path = typer.Argument(..., help="Folder to write into (one subfolder per task)."),
    samples: int = typer.Option(8, min=1, help="Rows per task."),
    task: Optional[list[str]] = typer.Option(None, help="Only these tasks (repeat); default all."),
    seed: int = typer.Option(0, help="Seed of the synthetic benchmark's images, questions and answers."),
) -> None:
    """Write the synthetic benchmark (known answers, real layouts) to point profiles or tools at."""
    from pipeline.evaluation import TASKS
    from pipeline.evaluation.synthetic import write_synthetic

    names = task or list(TASKS)
    unknown = [t for t in names if t not in TASKS]
    if unknown:
        _fail(ValueError(f"unknown task(s) {', '.join(unknown)}; tasks: {', '.join(TASKS)}"))
    for name in names:
        path = write_synthetic(name, out / name, samples, seed=seed)
        console.print(f"{name}: {samples} rows -> {path}")


_TOKEN_LABELS = {
    "vision": ("patches_in", "kept_after_prune_layer", "to_merger", "visual_tokens_out"),
    "prefill": ("sequence", "visual_tokens_in", "visual_tokens_kept", "sequence_after_pruning"),
    "decode": ("generated",),
}


def _print_profile(report) -> None:
    p = report.provenance
    table = Table(
        title=f"{report.model}: {report.request} — {p['device']} ({p['device_type']}), {p['dtype']}, "
        f"{p['attn_implementation']}, batch {p['batch_size']}, torch {p['torch']}, transformers {p['transformers']}"
    )
    for column in ("stage", "ms: median [p10, p90]", "peak MiB", "GFLOPs: analytic / fvcore / FlopCounterMode", "tokens"):
        table.add_column(column)
    clocks = set()
    for name, stage in report.stages.items():
        t = stage.time
        if t:
            clocks.add(f"{name} {t.clock}")
        timing = f"{t.median_ms:.2f} [{t.p10_ms:.2f}, {t.p90_ms:.2f}]" if t else "not measured"
        memory = f"{stage.peak_memory_bytes / 2**20:.1f}" if stage.peak_memory_bytes is not None else "n/m"
        flops = " / ".join(
            "-" if stage.flops.get(route) is None else f"{stage.flops[route] / 1e9:.3f}"
            for route in ("analytic", "fvcore", "flop_counter")
        ) if stage.flops else ""
        tokens = " → ".join(str(stage.tokens[k]) for k in _TOKEN_LABELS.get(name, ()) if k in stage.tokens)
        table.add_row(name, timing, memory, flops, tokens)
    console.print(table)
    console.print(
        "tokens: vision patches in → kept after block K-1 → to merger → visual tokens out; prefill sequence → "
        "visual tokens in → kept → sequence after pruning; decode tokens generated. Clocks: " + ", ".join(sorted(clocks))
    )
    if report.decode_per_token:
        d = report.decode_per_token
        console.print(f"decode per token: {d.median_ms:.2f} ms [{d.p10_ms:.2f}, {d.p90_ms:.2f}]")
    if report.ipcv_overhead_ms:
        console.print("IPCV overhead ms (separate runs): " + ", ".join(f"{k} {v:.2f}" for k, v in report.ipcv_overhead_ms.items()))
    kv = "not measured" if report.kv_cache_bytes is None else f"{report.kv_cache_bytes / 2**20:.2f} MiB"
    console.print(f"KV cache after prefill: {kv}. {report.flop_convention}")
    if report.uncounted_ops:
        console.print(f"[yellow]fvcore could not count:[/yellow] {report.uncounted_ops}")
    for line in report.not_measured:
        console.print(f"[yellow]not measured:[/yellow] {line}")


@app.command()
def run(
    profile_path: Path = typer.Argument(..., metavar="PROFILE", help="Sweep profile (YAML), e.g. profiles/smoke.yaml, "
                                        "or the name of a shipped one (smoke, qwen2-vl-7b)."),
    out: Optional[str] = typer.Option(None, "--out", help="Output directory (default: the profile's output_dir), or "
                                      "a URI in object storage (s3://bucket/prefix, gs://..., file:///...)."),
    address: Optional[str] = typer.Option(None, help="Ray cluster address (default: a local Ray on 127.0.0.1)."),
    node_ip: Optional[str] = typer.Option(None, "--node-ip-address", "--node-ip",
                                          help="This machine's IP as the cluster at --address knows it "
                                          "(as ray start --node-ip-address; --node-ip is the older name)."),
    resume: bool = typer.Option(True, "--resume/--no-resume", help="Skip cells already finished in --out (a rerun "
                                "resumes too); --no-resume measures them again, moving their earlier results to "
                                "OUT/superseded/ (nothing is deleted)."),
    add: bool = typer.Option(False, "--add", help="Measure this profile into a folder that holds another sweep's "
                             "results (its results then hold this profile's cells; the others stay on disk)."),
    wandb_mode: Optional[WandbMode] = typer.Option(None, help="Override the profile's W&B mode."),
    executor: Executor = typer.Option("ray", help="ray (actors: a local Ray on 127.0.0.1, or the cluster at --address) "
                                 "or local (every cell in this process, no Ray: one GPU or a CPU)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="List the cells (count per model and method) and stop: "
                                 "nothing is loaded, run or written."),
) -> None:
    """Run a sweep: every cell of the profile on Ray (or in this process), results to Parquet and W&B, resumable.

    An output folder belongs to one sweep (OUT/sweep.json): another sweep's folder is refused
    unless --add; a changed profile keeps the earlier version's cells on disk but out of the
    results; a second driver on the same folder is refused.

    Exit status: 0 when every cell is ok, 1 when some failed (listed above the results path),
    2 for bad input (profile, options, benchmark data), 130 when interrupted."""

    from pipeline.sweep.driver import run_sweep
    from pipeline.sweep.grid import expand
    from pipeline.sweep.spec import ProfileError, find_profile, load_spec

    try:
        if executor == "local" and address:
            raise ProfileError("--address needs --executor ray")
        spec = load_spec(find_profile(profile_path))
        if wandb_mode is not None:
            spec = spec.model_copy(update={"tracking": spec.tracking.model_copy(update={"mode": wandb_mode})})
        cells = expand(spec)
    except ProfileError as err:
        _fail(err)
    out_dir = out if out and "://" in out else Path(out or spec.output_dir)
    console.print(f"sweep [bold]{spec.name}[/bold]: {len(cells)} cells -> {out_dir}")
    for warning in _cpu_warnings(spec):
        console.print(f"[yellow]warning:[/yellow] {warning}")
    if dry_run:
        _print_cells(cells)
        return
    from pipeline.evaluation import DataError
    from pipeline.sweep.resources import ResourceError
    from pipeline.sweep.store import StoreError, StoreWriteError

    try:
        summary = run_sweep(spec, out_dir, address=address, node_ip_address=node_ip, executor=executor,
                            resume=resume, add=add)
    except StoreWriteError as err:
        _fail(err, code=1)
    except (DataError, StoreError, ResourceError, ValueError) as err:
        _fail(err)
    for note in summary.notes:
        console.print(f"[yellow]note:[/yellow] {note}")
    if summary.superseded:
        console.print(f"--no-resume: the earlier results of these cells were moved to {summary.superseded}")
    _print_sweep(summary)
    if summary.interrupted:
        raise typer.Exit(130)
    if summary.failed:
        raise typer.Exit(1)


def _cpu_warnings(spec) -> list[str]:
    """A real-size model left on the CPU (``gpus: 0``, the default) is almost never meant."""
    from pipeline.models import is_preset

    return [f"{m.name} runs on the CPU (gpus: 0 in the profile): a real-size model there takes minutes per cell; "
            f"set gpus: 1 to put it on a GPU" for m in spec.models if m.gpus == 0 and not is_preset(m.name)]


def _print_cells(cells) -> None:
    """What a sweep would run: cells per model and method, then every cell's id and labels."""
    import collections

    counts = collections.Counter((c.model.name, c.method) for c in cells)
    table = Table(title=f"{len(cells)} cells (dry run: nothing loaded, run or written)")
    for header in ("model", "method", "cells"):
        table.add_column(header)
    for (model, method), n in sorted(counts.items()):
        table.add_row(model, method, str(n))
    console.print(table)
    from pipeline.sweep.rows import base_row

    for cell in cells:
        row = base_row(cell)
        console.print(f"{cell.id}  {cell.model.name}  {row['input']}  {row['setting']}", highlight=False)


def _print_sweep(summary) -> None:
    import pandas as pd

    from pipeline.report.tables import sweep_summary

    table = pd.read_parquet(summary.results) if summary.results.exists() else pd.DataFrame()
    if not table.empty:
        view = Table(title="Sweep summary, one row per setting (latency: median and p10–p90 over the repeats; CPU "
                           "figures are CPU time; fidelity is agreement with the uncompressed model; accuracy is the "
                           "mean benchmark score, chance level for random-weight models)")
        shown = sweep_summary(table)
        for header in shown.columns:
            view.add_column(header, justify="left" if header in ("model", "input", "setting") else "right")
        for row in shown.itertuples(index=False):
            view.add_row(*(escape(str(v)) for v in row))
        console.print(view)
        failed = table[table.status != "ok"]
        for _, row in failed.iterrows():
            console.print(f"[red]failed[/red] {row['model']} {row['input_kind']} {row['resolution']} {row['method']}: {row['error']}")
    console.print(
        f"{summary.ok} ok, {summary.failed} failed, {summary.skipped} already done (of {summary.total}); "
        f"wall {summary.wall_s:.1f} s for {summary.cell_s:.1f} s of cell time; "
        f"model loads per worker: {summary.loads_per_worker or '-'}"
        + (f"; W&B failures: {summary.wandb_failures} (local results kept)" if summary.wandb_failures else "")
    )
    console.print(f"results: {summary.remote or summary.results}"
                  + (f" (local copy: {summary.results})" if summary.remote else ""))


@app.command()
def submit(
    profile_path: Path = typer.Argument(..., metavar="PROFILE", help="Sweep profile inside this checkout, or a shipped "
                                        "profile's name."),
    address: str = typer.Option(..., help="The cluster's job server, e.g. http://HEAD:8265."),
    out: str = typer.Option(..., "--out", help="Where results go: an absolute path on the cluster's head, or an "
                            "object-storage URI (s3://bucket/prefix)."),
    wandb_mode: Optional[WandbMode] = typer.Option(None, help="Override the profile's W&B mode."),
    pass_wandb_key: bool = typer.Option(False, "--pass-wandb-key", help="Send this machine's WANDB_API_KEY with the job "
                                        "(Ray keeps it in the job's metadata; otherwise set it on the cluster)."),
    wait: bool = typer.Option(True, "--wait/--no-wait", help="Stream the job's log until it ends (default)."),
) -> None:
    """Run a sweep as a Ray job on a running cluster, from this checkout's code; stream its log."""
    from pipeline.sweep.spec import ProfileError
    from pipeline.sweep.submit import submit as submit_job

    try:
        done = submit_job(profile_path, address, out, wandb_mode=wandb_mode, pass_wandb_key=pass_wandb_key, wait=wait,
                          echo=lambda line: console.print(escape(line), highlight=False))
    except (ProfileError, ValueError) as err:
        _fail(err)
    except ConnectionError as err:
        _fail(ValueError(f"no Ray job server answers at {address} ({err})"))
    if done.status is None:
        console.print(f"follow it with: ray job logs --address {address} --follow {done.job_id}")
        return
    console.print(f"job {done.job_id}: {done.status}; results: {done.out}")
    if done.status != "SUCCEEDED":
        raise typer.Exit(1)


@app.command("sync-wandb")
def sync_wandb(
    out_dir: Path = typer.Argument(..., metavar="OUTPUT_DIR", help="A sweep's output folder."),
    wandb_mode: Optional[Literal["offline", "online"]] = typer.Option(None, help="Default: the sweep profile's."),
) -> None:
    """Log the W&B runs a sweep's folder lacks (cells an earlier run could not log: W&B slow or unreachable)."""
    from pipeline.sweep.driver import sync_wandb as sync
    from pipeline.sweep.spec import ProfileError
    from pipeline.sweep.store import StoreError

    try:
        queued, not_logged = sync(out_dir, wandb_mode)
    except (StoreError, ProfileError) as err:
        _fail(err)
    console.print(f"{queued} cell(s) lacked a W&B run; {queued - not_logged if queued else 0} logged now"
                  + (f", {not_logged} still not logged" if not_logged else ""))
    if not_logged:
        raise typer.Exit(1)


@app.command()
def report(
    out_dir: Path = typer.Argument(..., metavar="OUTPUT_DIR", help="A sweep's output directory (holds results.parquet or cells/)."),
    quality: str = typer.Option("auto", help="Quality axis: auto (accuracy of real-weight models, else fidelity), "
                                "an acc_<task> column, or one of " + ", ".join(columns.QUALITY) + "."),
    cost: Optional[list[Cost]] = typer.Option(None, help="Cost axes (repeat). Default: all that were measured."),
    wandb_mode: Optional[WandbMode] = typer.Option(None, help="Default: the sweep profile's."),
) -> None:
    """Pareto analysis of a sweep: frontier tables, speed-ups, per-stage breakdowns, plots, HTML, W&B report."""
    from pipeline.report import ReportError, build_report

    try:
        result = build_report(out_dir, quality=quality, costs=[c.value for c in cost or []] or None,
                              wandb_mode=wandb_mode)
    except (ReportError, ValueError) as err:
        _fail(err)
    console.print(f"quality axis: {result.quality.label}; costs: {', '.join(result.costs)}")
    for note in result.notes:
        console.print(f"[yellow]note:[/yellow] {note}")
    for path in result.files:
        console.print(f"wrote {path}")
    if result.wandb_report:
        console.print(f"W&B report: {result.wandb_report}")


@app.command()
def publish(
    target: Path = typer.Argument(..., metavar="OUTPUT_DIR", help="A sweep's output folder (its report/wandb_report"
                                  ".json is published) or a wandb_report.json itself."),
) -> None:
    """Publish the W&B Report that ipcv-study report wrote offline; needs a W&B login (wandb login or WANDB_API_KEY).

    The report's panels read the sweep's cell runs: sync the offline runs first (wandb sync OUT/wandb)."""
    from pipeline.report import wandb_report

    path = target / "report" / "wandb_report.json" if target.is_dir() else target
    try:
        plan = wandb_report.read_plan(path)
        if not wandb_report.has_credentials():
            raise ValueError("no W&B API key on this machine: run wandb login (or set WANDB_API_KEY), then publish "
                             f"again; the report's definition stays in {path}")
    except (FileNotFoundError, ValueError) as err:
        _fail(err)
    try:
        url = wandb_report.publish(plan)
    except Exception as err:  # the W&B API: network, permissions, a project that does not exist
        _fail(ValueError(f"W&B did not save the report ({type(err).__name__}: {err})"), code=1)
    console.print(f"W&B report: {url}")


@app.command("profile-reference")
def profile_reference(
    out: Optional[Path] = typer.Option(None, "--out", help="Write it here (docs/profile.md) instead of printing it."),
) -> None:
    """The profile reference: every key, its type, allowed values, bounds and default (from the schema)."""
    from pipeline.sweep.reference import render

    if out is None:
        typer.echo(render(), nl=False)  # as it is: no rich wrapping of the long table rows
        return
    out.write_text(render())
    console.print(f"wrote {out}")


@app.command()
def check(
    profile_path: Path = typer.Argument(..., metavar="PROFILE", help="Gate profile, e.g. profiles/ci.yaml."),
    baseline: Path = typer.Option(..., "--baseline", help="Committed baseline, e.g. profiles/baselines/ci.json."),
    costs: Optional[Literal["instructions", "time"]] = typer.Option(
        None, help="How costs are compared: instructions (callgrind instruction counts, deterministic; needs "
        "valgrind) or time (interleaved timings with a confidence interval; for GPU runners). Default: the baseline's."),
    update: bool = typer.Option(False, "--update", help="Rewrite the baseline from this run and say what changed."),
    force: bool = typer.Option(False, "--force", help="With --update: write even though python / torch / "
                               "transformers differ from the versions the baseline was made with."),
    strict_versions: bool = typer.Option(False, "--strict-versions", help="Fail when the baseline's versions differ."),
    json_out: Optional[Path] = JSON_OUT,
) -> None:
    """Efficiency gate: rerun a small fixed profile and compare with a baseline; exit 1 on a regression."""
    from pipeline import gate
    from pipeline.measure import instructions
    from pipeline.sweep.spec import ProfileError, find_profile, load_spec

    try:
        _check_writable(json_out)
        spec = load_spec(find_profile(profile_path))
        document = None
        if baseline.exists() or not update:
            document = gate.read(baseline) if update else gate.load(baseline, spec, costs)
        measure_costs = costs or (document.costs if document else "instructions")
        if update and document is not None and not force and gate.pinned_differences(document):
            raise ValueError(f"{baseline}: made with other versions ({'; '.join(gate.pinned_differences(document))}); "
                             "its figures would not be comparable. Run the gate in the pinned environment "
                             "(docs/ci_gate.md), or add --force to make a baseline for these versions")
        if measure_costs == "instructions" and instructions.available():
            raise ValueError(f"instruction counts: {instructions.available()}; or use --costs time")
    except (ProfileError, gate.BaselineError, ValueError) as err:
        _fail(err)
    console.print(f"gate [bold]{spec.name}[/bold]: measuring {profile_path} ({measure_costs}) ...")
    if document is None or update and document.costs != measure_costs:
        measured = gate.measure(spec, measure_costs)
        gate.write(baseline, spec.name, measure_costs, measured.figures)
        console.print(f"wrote a new baseline with {len(measured.figures)} figures: {baseline}")
        return
    if update:
        measured = gate.measure(spec, measure_costs)
        result = gate.compare(document, measured.figures, measured.estimates)
    else:
        measured, result = gate.check(spec, document)
    for note in result.version_notes:
        console.print(f"[yellow]versions differ:[/yellow] {note}")
    if result.moved:
        table = Table(title="What moved (figure: model|input|method|metric)")
        for column in ("figure", "baseline", "now", "change", "interval", "worse when", "verdict"):
            table.add_column(column)
        for d in result.moved:
            verdict = "[red]REGRESSION[/red]" if d.regression else d.note
            interval = f"[{d.interval[0]:.4g}, {d.interval[1]:.4g}]" if d.interval else ""
            table.add_row(d.key, _num(d.baseline), _num(d.current), d.change, interval, d.worse, verdict)
        console.print(table)
    else:
        console.print(f"all {len(result.deltas)} figures within tolerance")
    if result.remeasured:
        console.print(f"re-measured (looked worse at first): {', '.join(sorted(set(result.remeasured)))}")
    _write_json(json_out, json.dumps(gate.result_dict(result), indent=2, default=str))
    if update:
        gate.write(baseline, spec.name, measure_costs, measured.figures,
                   {name: t.model_dump() for name, t in document.tolerances.items()})
        console.print(f"baseline updated: {baseline} ({len(result.moved)} figures changed)")
        return
    if result.regressions:
        console.print(f"[red]{len(result.regressions)} regression(s)[/red]. If the change is intended (the computation "
                      "changed on purpose), rerun with --update and commit the baseline with it")
        raise typer.Exit(1)
    if strict_versions and result.version_notes:
        console.print("[red]baseline made with other versions[/red] (--strict-versions)")
        raise typer.Exit(3)


def _num(value) -> str:
    if value is None:
        return "-"
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def entry() -> None:
    """The ``ipcv-study`` command. An error the commands do not expect ends with one message and
    exit 1; ``--debug`` (anywhere on the command line) lets its traceback through."""
    debug = "--debug" in sys.argv
    if debug:
        sys.argv.remove("--debug")
    try:
        app()
    except Exception as err:
        if debug:
            raise
        console.print(f"[red]error:[/red] {escape(type(err).__name__)}: {escape(str(err))}\n"
                      "(run again with --debug to see the traceback)")
        sys.exit(1)


if __name__ == "__main__":
    entry()
