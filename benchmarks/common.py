"""What the benchmark scripts share: the common command-line options and writing results."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch


def parser(doc: str, *, resolutions: str, warmup: int, repeats: int) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--resolutions", default=resolutions, help="comma list of image sides (multiples of 28)")
    p.add_argument("--warmup", type=int, default=warmup)
    p.add_argument("--repeats", type=int, default=repeats)
    p.add_argument("--out", type=Path, default=None, help="write <stem>.json and <stem>.md")
    return p


def command_line() -> str:
    return " ".join(["python", *sys.argv])


def save(out: Path | None, meta: dict[str, Any], rows: list[dict[str, Any]], table: str) -> None:
    print(table)
    if out is None:
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2, default=str))
    out.with_suffix(".md").write_text(table + "\n")
