"""Bad input and environment: profiles that would run the wrong thing (or nothing) are refused when
they load, with the file and key named; result files respect the umask."""

from __future__ import annotations

import json

import pytest

from pipeline.sweep.grid import expand
from pipeline.sweep.spec import ProfileError, load_spec, parse_spec

BASE = {"name": "t", "models": [{"name": "tiny-qwen2-vl"}], "inputs": {"images": {"resolutions": [56]}}}


def test_a_key_given_twice_is_an_error(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("name: a\nname: b\nmodels: [{name: tiny-qwen2-vl}]\ninputs: {images: {resolutions: [56]}}\n")
    with pytest.raises(ProfileError, match="key 'name' given twice"):
        load_spec(path)


def test_a_binary_file_or_a_folder_is_named_not_a_traceback(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    with pytest.raises(ProfileError, match="not a YAML text file"):
        load_spec(path)
    with pytest.raises(ProfileError, match="it is a folder"):
        load_spec(tmp_path)


@pytest.mark.parametrize(
    "methods, message",
    [
        ({"baseline": False}, "makes no cells"),
        ({"ipcv": {"reduction_ratio": []}}, "methods.ipcv.reduction_ratio: List should have at least 1 item"),
        ({"llm": {"method": []}}, "methods.llm.method: List should have at least 1 item"),
        # the tiny presets have 12 vision blocks and 4 decoder layers
        ({"ipcv": {"prune_layer": [11], "as_layers": [3]}}, "vision encoder depth (12)"),
        ({"llm": {"layer": [4]}}, "number of decoder layers (4)"),
    ],
)
def test_grids_that_would_silently_do_nothing_or_fail_later_are_refused(methods, message):
    with pytest.raises(ProfileError, match=message.replace("(", "\\(").replace(")", "\\)")):
        expand(parse_spec({**BASE, "methods": methods}))


def test_a_hub_model_of_unknown_depth_is_checked_when_it_loads(tmp_path):
    cells = expand(parse_spec({**BASE, "models": [{"name": "Qwen/Qwen2-VL-7B-Instruct"}],
                               "methods": {"ipcv": {"prune_layer": [30], "as_layers": [2]}}}))
    assert len(cells) == 2  # 32 blocks in the real model: nothing to refuse without its config
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2_vl", "num_hidden_layers": 28,
                                                        "vision_config": {"depth": 32}}))
    with pytest.raises(ProfileError, match="depth \\(32\\)"):
        expand(parse_spec({**BASE, "models": [{"name": str(tmp_path)}],
                           "methods": {"ipcv": {"prune_layer": [31], "as_layers": [2]}}}))


def test_result_files_follow_the_umask(tmp_path):
    import os

    from pipeline.sweep.store import ResultStore

    previous = os.umask(0o027)
    try:
        store = ResultStore(tmp_path)
        store.write({"cell_id": "c1", "status": "ok", "predictions": [{"task": "pope", "score": 1.0}]})
        store.write_json("profile.json", {"name": "t"})
        path = store.consolidate()
    finally:
        os.umask(previous)
    for written in (tmp_path / "cells" / "c1.parquet", tmp_path / "predictions" / "c1.parquet",
                    tmp_path / "profile.json", path):
        assert written.stat().st_mode & 0o777 == 0o640, written


def test_a_profile_read_back_from_its_output_folder_makes_the_same_cells():
    """OUT/profile.json is what resume, sync-wandb and cluster jobs read: its cells are the same
    cells (a default left as an int once made `gpus: 0` hash differently from `gpus: 0.0`)."""
    from pathlib import Path

    for path in sorted((Path(__file__).resolve().parents[1] / "profiles").glob("*.yaml")):
        spec = load_spec(path)
        again = parse_spec(json.loads(json.dumps(spec.model_dump())))
        assert [c.id for c in expand(again)] == [c.id for c in expand(spec)], path
