"""Results on disk: one Parquet file per cell, written atomically, plus a consolidated table.

Each finished cell is written to ``cells/<cell_id>.parquet`` through a temporary file and
``os.replace``, so an interrupted sweep leaves only whole rows behind; a rerun skips cells whose
row says ``ok`` and measures failed or missing ones again.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd


class ResultStore:
    def __init__(self, out_dir: str | Path) -> None:
        self.root = Path(out_dir)
        self.cells = self.root / "cells"
        self.cells.mkdir(parents=True, exist_ok=True)

    def _path(self, cell_id: str) -> Path:
        return self.cells / f"{cell_id}.parquet"

    def write(self, row: dict[str, Any]) -> None:
        """The row to ``cells/``; its per-sample benchmark answers (``predictions``), if any, to
        ``predictions/<cell_id>.parquet`` first, so an ok row always has its answers beside it."""
        row = dict(row)
        records = row.pop("predictions", None)
        if records:
            folder = self.root / "predictions"
            folder.mkdir(exist_ok=True)
            answers = pd.DataFrame(records).assign(cell_id=row["cell_id"])
            _atomic(folder / f"{row['cell_id']}.parquet", lambda p: answers.to_parquet(p, index=False))
        frame = pd.DataFrame([row])
        _atomic(self._path(row["cell_id"]), lambda p: frame.to_parquet(p, index=False))

    def predictions(self) -> pd.DataFrame:
        """Every cell's per-sample benchmark answers (empty without benchmarks)."""
        files = sorted((self.root / "predictions").glob("*.parquet"))
        return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True) if files else pd.DataFrame()

    def status(self, cell_id: str) -> str | None:
        path = self._path(cell_id)
        if not path.exists():
            return None
        return str(pd.read_parquet(path, columns=["status"])["status"].iloc[0])

    def done(self) -> set[str]:
        return {p.stem for p in self.cells.glob("*.parquet") if self.status(p.stem) == "ok"}

    def table(self) -> pd.DataFrame:
        files = sorted(self.cells.glob("*.parquet"))
        if not files:
            return pd.DataFrame()
        return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)

    def consolidate(self) -> Path:
        """Write ``results.parquet`` (all rows) atomically and return its path."""
        path = self.root / "results.parquet"
        table = self.table()
        _atomic(path, lambda p: table.to_parquet(p, index=False))
        return path

    def write_json(self, name: str, data: Any) -> None:
        text = json.dumps(data, indent=2, default=str)
        _atomic(self.root / name, lambda p: Path(p).write_text(text))


def _atomic(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
