"""Reading benchmark data where the field keeps it: tables of rows, and the images or videos they name.

Tables: JSON Lines, a JSON list, Parquet (the layout of HF datasets on the hub, e.g.
``lmms-lab/textvqa``'s ``data/*.parquet``), TSV/CSV (the original MMBench files), a folder of
such files (an HF "imagefolder": images beside a ``metadata.jsonl`` whose ``file_name`` names
them), a dataset saved with ``datasets``' ``save_to_disk``, or, when the ``datasets`` library is
installed, a hub dataset id already in the local cache or reachable from the machine
(``hf://lmms-lab/POPE``).

Media fields hold what those layouts hold: ``{"bytes": ..., "path": ...}`` (HF ``Image``
feature in Parquet), a decoded PIL image (``datasets``), raw bytes, base64 text (MMBench TSV), or
a path, absolute or relative to the data file (or to ``media_root`` when given). A video is a
file (decoded with PyAV, the ``video`` extra), a folder of frame images, or a list of frame
paths; frames are sampled uniformly.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from PIL import Image

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff"}
TABLE_SUFFIXES = {".jsonl", ".json", ".parquet", ".tsv", ".csv"}
_BASE64 = re.compile(r"[A-Za-z0-9+/]{16,}={0,2}")


class DataError(ValueError):
    """Benchmark data that cannot be used; the message names the source, the row and the field."""


def read_rows(source: str, split: str | None = None) -> tuple[list[dict[str, Any]], Path | None]:
    """All rows of a table source, and the folder relative media paths are resolved against."""
    if source.startswith("hf://"):
        return _hub_rows(source.removeprefix("hf://"), split), None
    path = Path(source).expanduser()
    if not path.exists():
        raise DataError(f"{source}: no such file or folder (give a data file, a folder of them, "
                        "a dataset saved with save_to_disk, or hf://<dataset id>)")
    if path.is_dir():
        if (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists():
            return _disk_rows(path, split), path
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in TABLE_SUFFIXES and p.is_file())
        if split:
            named = [p for p in files if split in p.name]
            if files and not named:
                raise DataError(f"{source}: no data file has {split!r} in its name (split: {split})")
            files = named
        if not files:
            raise DataError(f"{source}: the folder holds no {'/'.join(sorted(TABLE_SUFFIXES))} files")
        rows: list[dict[str, Any]] = []
        for f in files:
            rows += [_with_origin(r, f.parent) for r in _file_rows(f)]
        return rows, path
    return _file_rows(path), path.parent


def _with_origin(row: dict[str, Any], folder: Path) -> dict[str, Any]:
    row.setdefault("__root__", str(folder))
    return row


def _file_rows(path: Path) -> list[dict[str, Any]]:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        rows = []
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise DataError(f"{path}: line {number} is not valid JSON: {err.msg}") from None
        return rows
    if suffix == ".json":
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise DataError(f"{path}: not valid JSON: {err.msg} (line {err.lineno})") from None
        if not isinstance(data, list):
            raise DataError(f"{path}: expected a JSON list of rows, got {type(data).__name__}")
        return data
    import pandas as pd

    try:
        if suffix == ".parquet":
            frame = pd.read_parquet(path)
        else:
            frame = pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",", keep_default_na=False)
    except Exception as err:
        raise DataError(f"{path}: cannot be read as {suffix[1:]}: {type(err).__name__}: {err}") from None
    return [{k: _plain(v) for k, v in row.items()} for row in frame.to_dict(orient="records")]


def _plain(value: Any) -> Any:
    """numpy arrays and scalars from Parquet as Python lists and numbers."""
    if hasattr(value, "tolist") and not isinstance(value, (bytes, str)):
        return value.tolist()
    return value


def _datasets():
    try:
        import datasets
    except ImportError:
        raise DataError("reading HF datasets needs the `datasets` library: pip install 'ipcv-study[data]'") from None
    return datasets


def _disk_rows(path: Path, split: str | None) -> list[dict[str, Any]]:
    data = _datasets().load_from_disk(str(path))
    return _dataset_rows(data, split, str(path))


def _hub_rows(name: str, split: str | None) -> list[dict[str, Any]]:
    try:
        data = _datasets().load_dataset(name, split=split)
    except DataError:
        raise
    except Exception as err:
        raise DataError(f"hf://{name}: could not load the dataset ({type(err).__name__}: {err}); "
                        "it must be in the local HF cache or reachable from this machine") from None
    return _dataset_rows(data, split, f"hf://{name}")


def _dataset_rows(data: Any, split: str | None, where: str) -> list[dict[str, Any]]:
    if hasattr(data, "keys") and not hasattr(data, "features"):  # a DatasetDict
        splits = list(data.keys())
        if split is None and len(splits) == 1:
            split = splits[0]
        if split not in splits:
            raise DataError(f"{where}: choose a split with `split:` (available: {', '.join(splits)})")
        data = data[split]
    return [dict(row) for row in data]


def load_image(value: Any, root: Path | None) -> Image.Image:
    """An RGB image from any of the media-field forms the layouts use."""
    if isinstance(value, Image.Image):
        return value.convert("RGB")
    if isinstance(value, dict):
        if value.get("bytes"):
            return load_image(value["bytes"], root)
        if value.get("path"):
            return load_image(value["path"], root)
        raise ValueError("an image record with neither bytes nor path")
    if isinstance(value, (bytes, bytearray)):
        return Image.open(io.BytesIO(value)).convert("RGB")
    if isinstance(value, str):
        path = _resolve(value, root)
        if path is not None:
            return Image.open(path).convert("RGB")
        if _BASE64.fullmatch(value):  # MMBench TSV: the image itself, base64-encoded
            try:
                return Image.open(io.BytesIO(base64.b64decode(value, validate=True))).convert("RGB")
            except (binascii.Error, ValueError):
                pass
        raise FileNotFoundError(f"image {value[:120]!r} is neither a file (looked in {root}) nor base64 image data")
    raise TypeError(f"cannot read an image from a {type(value).__name__}")


def _resolve(value: str, root: Path | None) -> Path | None:
    if len(value) > 4096 or "\n" in value:
        return None
    path = Path(value).expanduser()
    for candidate in ([path] if path.is_absolute() else [p for p in ((root / path) if root else None, path) if p]):
        if candidate.exists():
            return candidate
    return None


def load_video_frames(value: Any, root: Path | None, frames: int) -> list[Image.Image]:
    """``frames`` frames sampled uniformly from a video file, a folder of frames or a list of frames."""
    if isinstance(value, (list, tuple)):
        items = list(value)
        return [load_image(items[i], root) for i in uniform_indices(len(items), frames)]
    if not isinstance(value, str):
        raise TypeError(f"a video is a path or a list of frames, got {type(value).__name__}")
    path = _resolve(value, root)
    if path is None:
        raise FileNotFoundError(f"video {value!r} not found (looked in {root})")
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise FileNotFoundError(f"video folder {path} holds no frame images")
        return [Image.open(files[i]).convert("RGB") for i in uniform_indices(len(files), frames)]
    return _decode_video(path, frames)


def uniform_indices(total: int, frames: int) -> list[int]:
    """Indices of ``frames`` frames spread evenly over ``total`` (the middle of each segment);
    a video shorter than ``frames`` repeats frames."""
    if total < 1:
        raise ValueError("a video with no frames")
    return [min(total - 1, int((i + 0.5) * total / frames)) for i in range(frames)]


def _decode_video(path: Path, frames: int) -> list[Image.Image]:
    try:
        import av
    except ImportError:
        raise DataError(f"{path}: decoding video files needs PyAV: pip install 'ipcv-study[video]' "
                        "(or give a folder of frame images)") from None
    with av.open(str(path)) as container:
        decoded = [f.to_image() for f in container.decode(video=0)]
    return [decoded[i].convert("RGB") for i in uniform_indices(len(decoded), frames)]


def iter_rows(rows: list[dict[str, Any]], limit: int | None) -> Iterator[tuple[int, dict[str, Any]]]:
    """(row number from 1, row), at most ``limit`` of them."""
    yield from enumerate(rows[: limit if limit else None], start=1)
