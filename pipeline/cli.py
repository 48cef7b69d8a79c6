"""The ``ipcv-study`` command."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    help="IPCV scaling study: what visual-token compression buys, stage by stage.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console()


@app.callback()
def main() -> None:
    """IPCV scaling study: what visual-token compression buys, stage by stage."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()


@app.command()
def demo(
    model: str = typer.Option("tiny-qwen2-vl", help="Preset name (tiny-qwen2-vl, tiny-qwen2.5-vl), hub id or local path."),
    resolution: int = typer.Option(448, help="Image side in pixels (a multiple of 28)."),
    images: int = typer.Option(2, min=1, help="Images in the request."),
    prune_layer: int = typer.Option(3, help="K: prune after block K-1 (>= 2)."),
    reduction_ratio: float = typer.Option(0.65, help="r: share of vision tokens removed, in [0, 1)."),
    as_layers: int = typer.Option(7, help="A: Attention Stabilization blocks."),
    neighbors: int = typer.Option(10, help="k: neighbours for reconstruction."),
    budget: str = typer.Option("global", help="global (as published) or per_image."),
    neighbor_scope: str = typer.Option("global", help="global (as published) or same_image."),
    selection: str = typer.Option("feature_diff", help="feature_diff (the paper) or random (control)."),
    restore: str = typer.Option("ngr", help="ngr or frozen (no-NGR ablation)."),
    dtype: str = typer.Option("float32", help="float32, bfloat16 or float16."),
    device: str = typer.Option("cpu", help="cpu or cuda."),
    seed: int = typer.Option(0, help="Seed of the tiny model's weights and of the images."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the result as JSON here."),
) -> None:
    """Run IPCV on one request's vision encoder: kept tokens, FLOPs saved, feature fidelity."""
    import ipcv
    from pipeline.inputs import synthetic_images
    from pipeline.models import load_model
    from pipeline.vision_measure import compare_vision

    try:
        config = ipcv.IPCVConfig(
            prune_layer=prune_layer, reduction_ratio=reduction_ratio, as_layers=as_layers,
            neighbors=neighbors, budget=budget, neighbor_scope=neighbor_scope,
            selection=selection, restore=restore, seed=seed,
        )
        inp = synthetic_images(resolution, images, seed=seed)
        loaded = load_model(model, dtype=dtype, device=device, seed=seed)
        result = compare_vision(loaded, inp, config)
    except (ValueError, TypeError) as err:
        console.print(f"[red]error:[/red] {err}")
        raise typer.Exit(2) from None

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
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        payload = {"model": model, "input": inp.description, "config": config.to_dict(), **result.__dict__}
        json_out.write_text(json.dumps(payload, indent=2))
        console.print(f"wrote {json_out}")


if __name__ == "__main__":
    app()
