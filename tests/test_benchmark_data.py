"""Loaders read each benchmark layout; malformed rows and media stop with the row number."""

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.evaluation import DataError, check_sources, get_task
from pipeline.evaluation.sources import uniform_indices
from pipeline.evaluation.synthetic import COLOURS, write_synthetic
from tests.benchmark_fixtures import write_fixtures


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory) -> Path:
    """The benchmark fixtures, written for this module (tests/benchmark_fixtures.py)."""
    return write_fixtures(tmp_path_factory.mktemp("benchmarks"))


def test_mmbench_tsv_with_base64_images(fixtures):
    task = get_task("mmbench")
    first, second = task.load(str(fixtures / "mmbench.tsv"))
    assert first.options == ["red", "blue", "green"]  # the empty D column ends the options
    assert first.truth == "A" and second.truth == "B" and second.id == "12"
    assert first.prompt == ("What colour is the picture?\nA. red\nB. blue\nC. green\n"
                            "Answer with the option's letter from the given choices directly.")
    assert second.prompt.startswith("Look closely.\nWhat colour")  # the hint comes first
    (image,) = task.images(second)
    assert image.size == (56, 42) and image.getpixel((0, 0)) == (0, 0, 200)
    assert task.score(second, "B") == 1.0 and task.score(second, "red") == 0.0


def test_textvqa_jsonl_with_image_files(fixtures):
    task = get_task("textvqa")
    red, blue = task.load(str(fixtures / "textvqa.jsonl"))
    assert red.prompt == "What is the colour?\nAnswer the question using a single word or phrase."
    assert task.images(blue)[0].size == (42, 56)
    assert task.score(red, "Red") == 1.0
    # blue: 4 of 10 annotators, every leave-one-out subset keeps >= 3 matches
    assert task.score(blue, "blue") == 1.0
    assert task.metrics([red, blue], ["red", "navy"]) == {"accuracy": 1.0}


def test_pope_parquet_in_hf_layout(fixtures):
    task = get_task("pope")
    yes, no = task.load(str(fixtures / "pope.parquet"))
    assert (yes.truth, no.truth, no.category) == ("yes", "no", "adversarial")
    assert task.images(yes)[0].getpixel((1, 1)) == (200, 0, 0)
    m = task.metrics([yes, no], ["Yes.", "Yes, a dog."])
    assert m["accuracy"] == 0.5 and m["precision"] == 0.5 and m["recall"] == 1.0 and m["yes_ratio"] == 1.0


def test_ocrbench_json_list(fixtures):
    task = get_task("ocrbench")
    regular, maths = task.load(str(fixtures / "ocrbench.json"))
    assert regular.truth == ["STOP"] and maths.truth == ["x ^ { 2 }"]  # a single answer becomes a list
    assert task.score(regular, "it says stop") == 1.0
    assert task.score(maths, "x^{2}") == 1.0  # HME100k rows ignore whitespace
    assert task.images(maths)[0].size == (42, 56)


def test_mvbench_video_file_and_frame_folder(fixtures):
    pytest.importorskip("av")
    task = get_task("mvbench")
    clip, folder = task.load(str(fixtures / "mvbench.json"))
    assert clip.truth == "A" and folder.truth == "A" and folder.options == ["red", "green", "blue"]
    assert folder.prompt.splitlines()[1:4] == ["Options:", "(A) red", "(B) green"]
    frames = task.frames(clip, 4)  # 12 frames, red = 20 * i: the middles of 4 segments are 1, 4, 7, 10
    reds = [f.getpixel((32, 32))[0] for f in frames]
    assert len(frames) == 4 and all(abs(r - 20 * i) <= 12 for r, i in zip(reds, (1, 4, 7, 10)))
    frames = task.frames(folder, 2)  # 6 frames (red 40 * i): segments' middles are 1 and 4
    assert [f.getpixel((0, 0))[0] for f in frames] == [40, 160]


def test_uniform_indices():
    assert uniform_indices(12, 4) == [1, 4, 7, 10]
    assert uniform_indices(3, 6) == [0, 0, 1, 1, 2, 2]  # short videos repeat frames


def test_hf_save_to_disk_and_limit(fixtures, tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = pd.read_parquet(fixtures / "pope.parquet")
    data = datasets.Dataset.from_pandas(rows).cast_column("image", datasets.Image())
    datasets.DatasetDict({"test": data}).save_to_disk(str(tmp_path / "pope"))
    task = get_task("pope")
    samples = task.load(str(tmp_path / "pope"), split="test", limit=1)
    assert len(samples) == 1 and task.images(samples[0])[0].getpixel((0, 0)) == (200, 0, 0)
    with pytest.raises(DataError, match="choose a split.*test"):
        task.load(str(tmp_path / "pope"), split="validation")


def _jsonl(path: Path, rows) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


GOOD_VQA = {"question": "q?", "image": "x.png", "answers": ["a"]}


@pytest.mark.parametrize("task, bad, message", [
    ("textvqa", {"question": "q?", "image": "x.png"}, r"row 2: field 'answers' is missing"),
    ("textvqa", {"question": "", "image": "x.png", "answers": ["a"]}, r"row 2: field 'question' must be non-empty"),
    ("textvqa", {"question": "q?", "image": "x.png", "answers": [1, 2]}, r"row 2: field 'answers' must be"),
    ("pope", {"question": "q?", "image": "x.png", "answer": "maybe"}, r"row 2: answer must be 'yes' or 'no'"),
    ("mmbench", {"question": "q?", "image": "x", "A": "a", "B": "b", "answer": "C"},
     r"row 2: answer 'C' is not one of the option letters A, B"),
    ("mmbench", {"question": "q?", "image": "x", "A": "a", "answer": "A"}, r"row 2: needs option columns"),
    ("mvbench", {"question": "q?", "video": "v.mp4", "candidates": ["x", "y"], "answer": "z"},
     r"row 2: answer 'z' is not one of the candidates"),
    ("ocrbench", {"question": "q?", "answer": ["x"]}, r"row 2: field 'image' is missing"),
])
def test_malformed_rows_name_row_and_field(tmp_path, task, bad, message):
    good = {"textvqa": GOOD_VQA, "pope": {**GOOD_VQA, "answer": "yes"},
            "mmbench": {**GOOD_VQA, "A": "a", "B": "b", "answer": "A"},
            "mvbench": {"question": "q?", "video": "v.mp4", "candidates": ["x", "y"], "answer": "x"},
            "ocrbench": {**GOOD_VQA, "answer": "x"}}[task]
    path = _jsonl(tmp_path / "data.jsonl", [good, bad])
    with pytest.raises(DataError, match=message) as info:
        get_task(task).load(path)
    assert str(tmp_path / "data.jsonl") in str(info.value) and f"{task} rows need" in str(info.value)


def test_unreadable_inputs(tmp_path):
    task = get_task("textvqa")
    with pytest.raises(DataError, match="line 2 is not valid JSON"):
        task.load(_jsonl(tmp_path / "a.jsonl", [GOOD_VQA, "{not json"]))
    with pytest.raises(DataError, match="no such file or folder"):
        task.load(str(tmp_path / "missing.jsonl"))
    with pytest.raises(DataError, match="no rows"):
        task.load(_jsonl(tmp_path / "empty.jsonl", []))
    samples = task.load(_jsonl(tmp_path / "b.jsonl", [GOOD_VQA, {**GOOD_VQA, "image": "gone.png"}]))
    with pytest.raises(DataError, match=r"textvqa row 2 \(id 2\): image unreadable: image 'gone.png'"):
        task.images(samples[1])
    with pytest.raises(DataError, match=r"video unreadable"):
        get_task("mvbench").frames(get_task("mvbench").load(_jsonl(
            tmp_path / "v.jsonl", [{"question": "q", "video": "nope", "candidates": ["a", "b"], "answer": "a"}]))[0], 2)
    with pytest.raises(DataError, match="hf://"):
        check_sources({"tasks": [{"task": "pope", "source": str(tmp_path / "nothing"), "limit": None}]})


def test_media_root_and_folder_sources(fixtures, tmp_path):
    shutil.copytree(fixtures / "images", tmp_path / "media")
    rows = [{"question": "q?", "image": "red.png", "answers": ["red"]}]
    (tmp_path / "data").mkdir()
    path = _jsonl(tmp_path / "data" / "t.jsonl", rows)
    task = get_task("textvqa")
    (sample,) = task.load(path, media_root=str(tmp_path / "media"))
    assert task.images(sample)[0].getpixel((0, 0)) == (200, 0, 0)
    # a folder of data files is read whole (each file's media relative to its own folder)
    assert len(task.load(str(tmp_path / "data"), media_root=str(tmp_path / "media"))) == 1


def test_synthetic_benchmark_answers_are_true(tmp_path):
    """The generator's known answers hold in its pictures (checked from the pixels)."""
    mmbench = get_task("mmbench")
    samples = mmbench.load(str(write_synthetic("mmbench", tmp_path / "mm", 6, seed=3)))
    for sample in samples:
        if sample.category != "colour":
            continue
        pixels = np.asarray(mmbench.images(sample)[0]).reshape(-1, 3)
        centre = tuple(int(c) for c in np.asarray(mmbench.images(sample)[0])[112, 112])
        named = sample.options["ABCD".index(sample.truth)]
        assert centre == COLOURS[named], (sample.row, centre, named)
        assert (pixels == COLOURS[named]).all(axis=1).sum() > 1000
    mvbench = get_task("mvbench")
    for sample in mvbench.load(str(write_synthetic("mvbench", tmp_path / "mv", 4, seed=1))):
        first, last = (np.asarray(f).min(axis=-1) < 200 for f in mvbench.frames(sample, 8)[::7])
        (y0, x0), (y1, x1) = (np.argwhere(m).mean(axis=0) for m in (first, last))
        moved = {"right": x1 - x0, "left": x0 - x1, "down": y1 - y0, "up": y0 - y1}
        assert max(moved, key=moved.get) == sample.options["ABCD".index(sample.truth)]
    textvqa = get_task("textvqa")
    words = [s.truth[0] for s in textvqa.load(str(write_synthetic("textvqa", tmp_path / "tv", 5)))]
    # the same seed writes the same data
    again = [s.truth[0] for s in textvqa.load(str(write_synthetic("textvqa", tmp_path / "tv2", 5)))]
    assert words == again
    for name in ("pope", "ocrbench"):
        assert len(get_task(name).load(str(write_synthetic(name, tmp_path / name, 3)))) == 3


def test_image_folder_with_metadata(fixtures, tmp_path):
    """The HF imagefolder layout: images beside metadata.jsonl, whose file_name names them."""
    shutil.copy(fixtures / "images" / "red.png", tmp_path / "red.png")
    _jsonl(tmp_path / "metadata.jsonl", [{"file_name": "red.png", "question": "Is it red?", "answer": "yes"}])
    task = get_task("pope")
    (sample,) = task.load(str(tmp_path))
    assert sample.truth == "yes" and task.images(sample)[0].getpixel((0, 0)) == (200, 0, 0)
