"""Read W&B offline run files back (no mocking of wandb): the ``.wandb`` transaction log.

The file is a LevelDB-style log: a 7-byte header (":W&B", magic 0xBEE1, version 0), then 32 KiB
blocks of records, each with a 7-byte header (crc32, length, type: 1 full, 2 first, 3 middle,
4 last) followed by part of a serialized ``wandb_internal_pb2.Record``.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

from wandb.proto import wandb_internal_pb2 as pb

BLOCK = 32768
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path):
    data = Path(path).read_bytes()
    ident, magic, version = struct.unpack("<4sHB", data[:7])
    assert ident == b":W&B" and magic == 0xBEE1, (ident, magic)
    pos, pending = 7, b""
    while pos + 7 <= len(data):
        left = BLOCK - pos % BLOCK
        if left < 7:  # block trailer padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        pos += 7
        chunk = data[pos : pos + length]
        pos += length
        if kind == 0 and length == 0:
            continue
        if kind == FULL:
            yield _parse(chunk)
        elif kind == FIRST:
            pending = chunk
        elif kind == MIDDLE:
            pending += chunk
        elif kind == LAST:
            yield _parse(pending + chunk)
            pending = b""


def _parse(blob: bytes) -> pb.Record:
    record = pb.Record()
    record.ParseFromString(blob)
    return record


def read_run(path: Path) -> dict[str, Any]:
    """``{"id", "group", "name", "config", "summary"}`` of one offline run."""
    out: dict[str, Any] = {"config": {}, "summary": {}}
    for rec in records(path):
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            out.update(id=rec.run.run_id, group=rec.run.run_group, name=rec.run.display_name)
            for item in rec.run.config.update:
                out["config"][item.key] = json.loads(item.value_json)
        elif kind == "config":
            for item in rec.config.update:
                out["config"][item.key] = json.loads(item.value_json)
        elif kind == "summary":
            for item in rec.summary.update:
                key = ".".join(item.nested_key) if item.nested_key else item.key
                out["summary"][key] = json.loads(item.value_json)
    return out


def read_runs(wandb_dir: Path) -> list[dict[str, Any]]:
    return [read_run(p) for p in sorted(Path(wandb_dir).glob("offline-run-*/run-*.wandb"))]
