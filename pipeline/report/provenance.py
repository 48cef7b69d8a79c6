"""The report's provenance header: where, with what and how the figures were measured, read from
the rows themselves (every cell records its device, versions, commit, dtype, attention, warm-up
and repeats), so that a table is never read without knowing what made it. Several values in one
sweep (two dtypes, a commit that changed mid-sweep) are all listed."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pandas as pd


def _values(rows: pd.DataFrame, column: str) -> list[str]:
    if column not in rows:
        return []
    values = rows[column].dropna()
    return sorted({str(int(v)) if isinstance(v, float) and v.is_integer() else str(v) for v in values})


def _device(rows: pd.DataFrame) -> str:
    if "device" not in rows:
        return "not recorded"
    kinds = rows.get("device_type", pd.Series("?", index=rows.index)).fillna("?").astype(str)
    gpus = rows.get("gpus_per_worker", pd.Series(0, index=rows.index)).fillna(0)
    seen = set()
    for kind, name, count in zip(kinds, rows["device"].fillna("?").astype(str), gpus):
        gpu = f", {float(count):g} GPU per worker" if kind == "cuda" and float(count) > 0 else ""
        seen.add(f"{name} ({kind.upper()}{gpu})")
    return "; ".join(sorted(seen))


def _dates(rows: pd.DataFrame) -> str:
    stamps = [float(t) for c in ("started_at", "finished_at") if c in rows for t in rows[c].dropna()]
    if not stamps:
        return "not recorded"
    first, last = (dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
                   for t in (min(stamps), max(stamps)))
    return first if first == last else f"{first} to {last}"


def _timing(rows: pd.DataFrame, profile: dict[str, Any], key: str) -> str:
    """Warm-up or repeats: the rows' (recorded per cell), else the profile's (rows of older versions)."""
    values = _values(rows, key)
    if values:
        return ", ".join(values)
    given = (profile.get("measurement") or {}).get(key)
    return f"{given} (from the profile)" if given is not None else "not recorded"


FEW_REPEATS = 5  # fewer timed repeats than this and the report says its spreads are weak


def fewest_repeats(rows: pd.DataFrame, profile: dict[str, Any]) -> int | None:
    """The smallest count of timed repeats behind a row (the rows', else the profile's)."""
    if "repeats" in rows and rows["repeats"].notna().any():
        return int(rows["repeats"].min())
    given = (profile.get("measurement") or {}).get("repeats")
    return int(given) if given is not None else None


def provenance(rows: pd.DataFrame, profile: dict[str, Any]) -> dict[str, str]:
    """Header name -> what the rows say (comma-separated when they differ)."""

    def listed(column: str) -> str:
        return ", ".join(_values(rows, column)) or "not recorded"

    return {
        "device": _device(rows),
        "clock": listed("clock"),
        "dtype": listed("dtype"),
        "attention": listed("attn_implementation"),
        "warm-up requests": _timing(rows, profile, "warmup"),
        "timed repeats": _timing(rows, profile, "repeats"),
        "torch": listed("torch_version"),
        "transformers": listed("transformers_version"),
        "ipcv-study": listed("ipcv_version"),
        "IPCV kernels": listed("ipcv_kernels"),
        "git commit": listed("git_commit"),
        "measured": _dates(rows),
        "report written": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
