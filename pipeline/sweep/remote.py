"""A sweep's output folder in object storage (``--out s3://bucket/prefix``, ``gs://``, ``file://``).

The sweep works in a local staging folder (under ``~/.cache/ipcv-study/staging/``, one per URI, so
the folder lock still keeps a second driver on this machine out) and mirrors it to the URI
through pyarrow's filesystems: before it starts, whatever the URI holds is brought down (a rerun
resumes from the URI, wherever it runs); every finished cell is put up as one whole object (to a
temporary name, then moved: no reader ever sees part of a cell); at the end the consolidated table
and the folder's records follow. Credentials come the way pyarrow finds them (environment, the
instance's role); none are written anywhere by this code.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path

MIRRORED = ("sweep.json", "profile.json", "summary.json", "results.parquet", "wandb_logged.jsonl")
FOLDERS = ("cells", "predictions")


def is_uri(out: str | Path) -> bool:
    return "://" in str(out)


class RemoteFolder:
    """The object-storage side of an output folder; ``local`` is where the sweep works."""

    def __init__(self, uri: str, local: Path | None = None) -> None:
        from pyarrow import fs

        try:
            self.fs, self.base = fs.FileSystem.from_uri(uri)
        except Exception as err:  # an unknown scheme, a malformed URI, missing credentials support
            raise ValueError(f"--out {uri}: not a filesystem URI pyarrow can open ({err})") from None
        self.uri = uri
        self.local = local or staging_folder(uri)

    def _remote(self, relative: str) -> str:
        return f"{self.base.rstrip('/')}/{relative}"

    def pull(self) -> int:
        """Bring down what the URI holds (files the local copy lacks or has in another size)."""
        from pyarrow import fs

        self.local.mkdir(parents=True, exist_ok=True)
        try:
            infos = self.fs.get_file_info(fs.FileSelector(self.base, recursive=True, allow_not_found=True))
        except OSError as err:
            raise ValueError(f"--out {self.uri}: cannot be listed ({err})") from None
        pulled = 0
        for info in infos:
            if info.type != fs.FileType.File:
                continue
            relative = info.path[len(self.base.rstrip("/")) + 1:]
            if not (relative in MIRRORED or relative.split("/", 1)[0] in FOLDERS) or "/." in f"/{relative}":
                continue
            target = self.local / relative
            if target.exists() and target.stat().st_size == info.size:
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with self.fs.open_input_stream(info.path) as source:
                data = source.read()
            tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, target)
            pulled += 1
        return pulled

    def put(self, relative: str) -> None:
        """One local file of the folder up as one whole object."""
        source = self.local / relative
        if not source.exists():
            return
        final = self._remote(relative)
        folder = final.rsplit("/", 1)[0]
        self.fs.create_dir(folder, recursive=True)
        tmp = f"{folder}/.{relative.rsplit('/', 1)[-1]}.{uuid.uuid4().hex[:8]}.tmp"
        with self.fs.open_output_stream(tmp) as sink:
            sink.write(source.read_bytes())
        self.fs.move(tmp, final)

    def put_cell(self, cell_id: str) -> None:
        for folder in ("predictions", "cells"):  # answers first, as locally: an ok row has its answers
            self.put(f"{folder}/{cell_id}.parquet")

    def put_records(self) -> None:
        for name in MIRRORED:
            self.put(name)


def staging_folder(uri: str) -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ipcv-study" / "staging"
    return cache / hashlib.sha256(uri.encode()).hexdigest()[:16]
