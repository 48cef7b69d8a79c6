"""Results on disk: one Parquet file per cell, written atomically, in a folder that belongs to one sweep.

Each finished cell is written to ``cells/<cell_id>.parquet`` through a temporary file and
``os.replace``, so an interrupted sweep leaves only whole rows behind; a rerun skips cells whose
row says ``ok`` and measures failed or missing ones again.

The folder belongs to one sweep: ``sweep.json`` records its name, the fingerprint of its profile
and the ids of the profile's cells. Another sweep is refused unless asked for (``add``); a changed
profile of the same sweep keeps the earlier version's cells on disk but out of the results
(``results.parquet`` and the report hold the current profile's cells, and say what they left
out). A lock file keeps a second driver out. Nothing is deleted: cells measured again on purpose
(``supersede``) and unreadable cell files are moved aside, with the reason in the folder name.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

log = logging.getLogger(__name__)


class StoreError(ValueError):
    """The output folder cannot be used as asked; the message says why and what to do."""


class StoreWriteError(StoreError):
    """Writing a result failed during the sweep (a full disk, say); what was written is kept."""


@dataclass
class Coverage:
    """How much of the sweep's profile the folder holds."""

    cells: int  # cells of the current profile
    ok: int
    failed: int
    missing: int
    outside: int  # cell files of earlier profile versions (or other sweeps), left out of results


def fingerprint(profile: dict[str, Any]) -> str:
    """What identifies a profile's results: everything but where they go, how they are logged and
    how the cluster is asked for GPUs."""
    data = {k: v for k, v in profile.items() if k not in ("output_dir", "tracking", "cluster")}
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


class ResultStore:
    """An output folder. With ``mirror`` (a ``RemoteFolder``: ``--out`` in object storage) every
    cell and record written here is put up there as well, as one whole object."""

    def __init__(self, out_dir: str | Path, mirror: Any = None) -> None:
        self.root = Path(out_dir)
        self.cells = self.root / "cells"
        self.mirror = mirror

    def _path(self, cell_id: str) -> Path:
        return self.cells / f"{cell_id}.parquet"

    # -- the folder's owner ----------------------------------------------------------------------
    def sweep(self) -> dict[str, Any] | None:
        """``sweep.json``: the sweep the folder belongs to (None for a new or an older folder)."""
        path = self.root / "sweep.json"
        if not path.exists():
            return None
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise StoreError(f"{path}: unreadable ({err}); move it aside to let a sweep take this folder") from None

    def claim(self, name: str, profile: dict[str, Any], cell_ids: list[str], *, add: bool = False) -> list[str]:
        """Make the folder this sweep's (or refuse), record its profile and cells; returns notes
        for the user (a changed profile, cells left out of the results)."""
        self._check_folder()
        owner = self.sweep()
        owner_name = owner.get("name") if owner else self._legacy_name()
        if owner_name is None and self.cells.is_dir() and any(self.cells.glob("*.parquet")):
            owner_name = "(unknown: cells without a profile)"
        notes = []
        if owner_name is not None and owner_name != name:
            if not add:
                raise StoreError(
                    f"{self.root} holds the results of sweep {owner_name!r}, not {name!r}: choose another --out, "
                    f"or pass --add to measure {name!r} into this folder (its results then hold {name!r}'s cells "
                    "only; the other cells stay on disk)")
            notes.append(f"{self.root} held sweep {owner_name!r}: its cells stay in cells/ but out of the results")
        new = fingerprint(profile)
        if owner and owner.get("name") == name and owner.get("fingerprint") != new:
            notes.append("the profile changed since the last run: the earlier version's cells stay in cells/ but "
                         "out of results.parquet and the report")
        history = list(owner.get("history", [])) if owner else []
        if owner and owner.get("fingerprint") not in (None, new):
            history.append({"name": owner.get("name"), "fingerprint": owner.get("fingerprint"),
                            "cells": len(owner.get("cells", []))})
        self.root.mkdir(parents=True, exist_ok=True)
        self.write_json("profile.json", profile)
        self.write_json("sweep.json", {"name": name, "fingerprint": new, "cells": cell_ids, "history": history,
                                       "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
        outside = self.coverage().outside
        if outside and not notes:
            notes.append(f"{outside} cell file(s) in cells/ are not cells of this profile: left out of the results")
        return notes

    def _legacy_name(self) -> str | None:
        """The sweep name of a folder written before sweep.json existed (its profile.json)."""
        path = self.root / "profile.json"
        if not path.exists():
            return None
        try:
            return json.loads(path.read_text()).get("name")
        except (OSError, ValueError, AttributeError):
            return None

    def _check_folder(self) -> None:
        if self.root.exists() and not self.root.is_dir():
            raise StoreError(f"--out {self.root} is a file, not a folder")
        probe = self.root if self.root.exists() else next((p for p in self.root.parents if p.exists()), Path("/"))
        if not os.access(probe, os.W_OK):
            raise StoreError(f"--out {self.root}: {probe} is not writable")

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the folder's lock: a second driver on the same folder is refused, not run twice."""
        self._check_folder()
        self.root.mkdir(parents=True, exist_ok=True)
        handle = open(self.root / ".lock", "a+")  # noqa: SIM115 (held open for the lock's lifetime)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise StoreError(f"{self.root} is in use by another sweep driver ({holder}); wait for it to finish "
                             "or use another --out") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        handle.flush()
        try:
            yield
        finally:
            handle.seek(0)
            handle.truncate()
            fcntl.flock(handle, fcntl.LOCK_UN)
            handle.close()

    # -- cells -----------------------------------------------------------------------------------
    def write(self, row: dict[str, Any]) -> None:
        """The row to ``cells/``; its per-sample benchmark answers (``predictions``), if any, to
        ``predictions/<cell_id>.parquet`` first, so an ok row always has its answers beside it."""
        row = dict(row)
        records = row.pop("predictions", None)
        if records:
            folder = self.root / "predictions"
            folder.mkdir(parents=True, exist_ok=True)
            answers = pd.DataFrame(records).assign(cell_id=row["cell_id"])
            _atomic(folder / f"{row['cell_id']}.parquet", lambda p: answers.to_parquet(p, index=False))
        self.cells.mkdir(parents=True, exist_ok=True)
        frame = pd.DataFrame([row])
        _atomic(self._path(row["cell_id"]), lambda p: frame.to_parquet(p, index=False))
        if self.mirror is not None:
            self.mirror.put_cell(row["cell_id"])

    def _read(self, path: Path, columns: list[str] | None = None) -> pd.DataFrame | None:
        """A cell file, or None after moving an unreadable one aside (its cell is then measured again)."""
        try:
            return pd.read_parquet(path, columns=columns)
        except Exception as err:  # pyarrow raises several types for a damaged file
            aside = self.root / "unreadable"
            aside.mkdir(exist_ok=True)
            target = aside / f"{path.stem}.{int(time.time())}{path.suffix}"
            os.replace(path, target)
            log.warning("cell file %s is unreadable (%s: %s); moved to %s, the cell will be measured again",
                        path, type(err).__name__, err, target)
            return None

    def status(self, cell_id: str) -> str | None:
        path = self._path(cell_id)
        if not path.exists():
            return None
        frame = self._read(path, columns=["status"])
        return None if frame is None else str(frame["status"].iloc[0])

    def done(self) -> set[str]:
        return {p.stem for p in sorted(self.cells.glob("*.parquet")) if self.status(p.stem) == "ok"}

    def supersede(self, cell_ids: list[str]) -> Path | None:
        """Move these cells' files (and answers) aside, so that they are measured again; nothing is
        deleted. Returns the folder they went to (None when there were none)."""
        wanted = set(cell_ids)
        files = [p for p in self.cells.glob("*.parquet") if p.stem in wanted]
        files += [p for p in (self.root / "predictions").glob("*.parquet") if p.stem in wanted]
        if not files:
            return None
        folder = self.root / "superseded" / time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        for path in files:
            target = folder / path.parent.name / path.name
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, target)
        return folder

    def _ids(self, only_sweep: bool) -> set[str] | None:
        owner = self.sweep() if only_sweep else None
        return set(owner["cells"]) if owner and "cells" in owner else None

    def table(self, only_sweep: bool = True) -> pd.DataFrame:
        """Every row in ``cells/`` (by default only the cells of the folder's current profile)."""
        ids = self._ids(only_sweep)
        frames = []
        for path in sorted(self.cells.glob("*.parquet")):
            if ids is not None and path.stem not in ids:
                continue
            frame = self._read(path)
            if frame is not None:
                frames.append(frame)
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

    def coverage(self) -> Coverage:
        ids = self._ids(True)
        on_disk = {p.stem for p in self.cells.glob("*.parquet")}
        if ids is None:
            ids = on_disk
        table = self.table()
        ok = int((table.status == "ok").sum()) if "status" in table else 0
        failed = int(len(table) - ok)
        return Coverage(cells=len(ids), ok=ok, failed=failed, missing=len(ids) - ok - failed,
                        outside=len(on_disk - ids))

    def predictions(self) -> pd.DataFrame:
        """Every cell's per-sample benchmark answers (empty without benchmarks)."""
        ids = self._ids(True)
        files = [f for f in sorted((self.root / "predictions").glob("*.parquet")) if ids is None or f.stem in ids]
        return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True) if files else pd.DataFrame()

    def consolidate(self) -> Path:
        """Write ``results.parquet`` (the current profile's rows) atomically and return its path."""
        path = self.root / "results.parquet"
        table = self.table()
        _atomic(path, lambda p: table.to_parquet(p, index=False))
        if self.mirror is not None:
            self.mirror.put_records()
        return path

    def write_json(self, name: str, data: Any) -> None:
        text = json.dumps(data, indent=2, default=str)
        _atomic(self.root / name, lambda p: Path(p).write_text(text))
        if self.mirror is not None:
            self.mirror.put(name)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _atomic(path: Path, write) -> None:
    """Write through a temporary file and rename it into place, so a reader never sees half a
    file; the file gets the permissions the user's umask gives (mkstemp alone would leave 0600)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
