"""An output folder belongs to one sweep: nothing mixed, nothing lost, nothing measured twice."""

from __future__ import annotations

import copy
from pathlib import Path

import pandas as pd
import pytest
import yaml

from pipeline.report import build_report, load_results
from pipeline.sweep.driver import run_sweep
from pipeline.sweep.grid import expand
from pipeline.sweep.spec import parse_spec
from pipeline.sweep.store import ResultStore, StoreError, StoreWriteError

ROOT = Path(__file__).resolve().parents[1]


def profile(**overrides) -> dict:
    data = yaml.safe_load((ROOT / "profiles" / "tiny-test.yaml").read_text())
    data["models"] = data["models"][:1]  # one model, three cells: quick
    data["tracking"] = {"mode": "disabled"}
    data.update(overrides)
    return data


def sweep(data: dict, out: Path, **kw):
    return run_sweep(parse_spec(data), out, progress=False, executor="local", **kw)


def test_another_sweeps_folder_is_refused_unless_added(tmp_path):
    first = sweep(profile(), tmp_path)
    assert first.ok == 3
    other = profile(name="other", inputs={"images": {"resolutions": [56]}})
    with pytest.raises(StoreError, match="holds the results of sweep 'tiny-test', not 'other'.*--add"):
        sweep(other, tmp_path)
    added = sweep(other, tmp_path, add=True)
    assert added.ok == 3 and any("held sweep 'tiny-test'" in n for n in added.notes)
    table = pd.read_parquet(added.results)
    assert set(table.cell_id) == {c.id for c in expand(parse_spec(other))}  # only this sweep's rows
    assert len(list((tmp_path / "cells").glob("*.parquet"))) == 6  # the other sweep's cells stay on disk


def test_a_changed_profile_keeps_the_earlier_cells_out_of_the_results(tmp_path):
    sweep(profile(), tmp_path)
    changed = profile()
    changed["measurement"]["max_new_tokens"] = 3  # every cell id changes
    again = sweep(changed, tmp_path)
    assert again.skipped == 0 and any("profile changed" in n for n in again.notes)
    table = pd.read_parquet(again.results)
    assert set(table.cell_id) == {c.id for c in expand(parse_spec(changed))} and len(table) == 3
    report = build_report(tmp_path, wandb_mode="disabled")
    assert any("3 cell file(s) in cells/ belong to an earlier version" in n for n in report.notes)


def test_no_resume_moves_results_aside_and_measures_again(tmp_path):
    sweep(profile(), tmp_path)
    before = {p.name: p.read_bytes() for p in (tmp_path / "cells").glob("*.parquet")}
    again = sweep(profile(), tmp_path, resume=False)
    assert again.ok == 3 and again.skipped == 0 and again.superseded is not None
    kept = {p.name: p.read_bytes() for p in (again.superseded / "cells").glob("*.parquet")}
    assert kept == before  # nothing deleted: the earlier results are where the summary says


def test_a_second_driver_on_one_folder_is_refused(tmp_path):
    holder = ResultStore(tmp_path)
    with holder.locked():
        with pytest.raises(StoreError, match="in use by another sweep driver \\(pid"):
            sweep(profile(), tmp_path)
    assert sweep(profile(), tmp_path).ok == 3  # free again once the holder is done


def test_an_unreadable_cell_file_is_set_aside_and_measured_again(tmp_path):
    sweep(profile(), tmp_path)
    victim = sorted((tmp_path / "cells").glob("*.parquet"))[0]
    victim.write_bytes(b"PAR1 not really")
    again = sweep(profile(), tmp_path)
    assert again.ok == 1 and again.skipped == 2
    assert len(list((tmp_path / "unreadable").glob(f"{victim.stem}.*.parquet"))) == 1
    assert len(pd.read_parquet(again.results)) == 3


def test_the_report_reads_the_cells_and_says_what_is_missing(tmp_path):
    partial = sweep(profile(), tmp_path, stop_after=1)
    assert partial.ok == 1
    (tmp_path / "results.parquet").write_bytes(b"truncated")  # a stale or damaged consolidated table
    assert len(load_results(tmp_path)) == 1  # rebuilt from cells/
    report = build_report(tmp_path, wandb_mode="disabled")
    assert any("2 of the profile's 3 cells have no result yet" in n for n in report.notes)


def test_an_output_path_that_is_a_file_is_refused(tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(StoreError, match="is a file, not a folder"):
        sweep(profile(), target)
    data = copy.deepcopy(profile())
    assert sweep(data, tmp_path / "fresh").ok == 3


def test_a_full_disk_stops_the_sweep_with_a_message_and_keeps_what_was_written(tmp_path, monkeypatch):
    import errno

    written = []
    original = ResultStore.write

    def write(self, row):
        if written:
            raise OSError(errno.ENOSPC, "No space left on device")
        written.append(row["cell_id"])
        original(self, row)

    monkeypatch.setattr(ResultStore, "write", write)
    with pytest.raises(StoreWriteError, match="No space left on device.*a rerun resumes"):
        sweep(profile(), tmp_path)
    monkeypatch.undo()
    assert [p.stem for p in (tmp_path / "cells").glob("*.parquet")] == written
    again = sweep(profile(), tmp_path)
    assert again.skipped == 1 and again.ok == 2


def test_an_object_storage_out_holds_whole_cells_and_a_rerun_resumes_from_it(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "machine-a"))
    uri = f"file://{tmp_path}/bucket/sweeps/tiny"
    first = sweep(profile(), uri, stop_after=2)
    assert first.ok == 2 and first.remote == f"{uri}/results.parquet"
    bucket = tmp_path / "bucket" / "sweeps" / "tiny"
    assert len(list((bucket / "cells").glob("*.parquet"))) == 2 and not list(bucket.rglob(".*.tmp"))
    assert {"sweep.json", "profile.json", "results.parquet"} <= {p.name for p in bucket.iterdir()}
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "machine-b"))  # another machine: nothing local
    again = sweep(profile(), uri)
    assert again.skipped == 2 and again.ok == 1
    assert len(pd.read_parquet(bucket / "results.parquet")) == 3


def test_an_s3_out_on_a_local_s3_server(tmp_path, monkeypatch):
    """The same against S3's protocol: moto's server on 127.0.0.1, started and stopped here."""
    import socket
    import subprocess
    import sys
    import time

    from pyarrow import fs

    pytest.importorskip("moto.server", reason="moto[server] is not installed (the dev extra has it)")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # this interpreter's moto, not whichever `moto_server` comes first on PATH (another install's
    # older moto fails pyarrow's multipart uploads)
    process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "machine-a"))
        query = f"endpoint_override=127.0.0.1:{port}&scheme=http&region=us-east-1"
        # up when it answers: moto imports for seconds, longer on a loaded machine
        deadline = time.monotonic() + 90
        while True:
            try:
                s3, _ = fs.FileSystem.from_uri(f"s3://results?{query}&allow_bucket_creation=true")
                s3.create_dir("results")
                break
            except OSError as err:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"moto's S3 server on port {port} never answered "
                                         f"(exit {process.poll()}): {err}") from err
                time.sleep(0.2)
        uri = f"s3://results/sweeps/tiny?{query}"
        assert sweep(profile(), uri, stop_after=1).ok == 1
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "machine-b"))
        again = sweep(profile(), uri)
        assert again.skipped == 1 and again.ok == 2
        keys = [i.path for i in s3.get_file_info(fs.FileSelector("results/sweeps/tiny", recursive=True))]
        assert sum(k.startswith("results/sweeps/tiny/cells/") for k in keys) == 3
        assert not any(k.rsplit("/", 1)[-1].startswith(".") for k in keys)  # no temporary object left
    finally:
        process.terminate()
        process.wait(timeout=30)
