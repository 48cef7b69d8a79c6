"""A synthetic benchmark with known answers, rendered locally, written in the real data layouts.

Every task gets rows in the layout its real benchmark ships in (so the same loaders read both):
MMBench-style Parquet with HF image records, TextVQA-style JSON Lines with image files, POPE-style
Parquet, OCRBench-style JSON list, MVBench-style JSON with videos as folders of frames. The
pictures hold what the questions ask: the colour of a shape, how many circles there are, a
word to read, whether a given shape is present, which way a square moves. Seeded: the same seed
writes the same files.

This makes the whole accuracy path (load, prompt, answer, score) run without downloads. Scores of
the random-weight tiny presets on it are chance-level; they show the path works, not a model.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

COLOURS = {"red": (220, 30, 30), "green": (30, 160, 60), "blue": (40, 70, 220), "yellow": (235, 200, 20),
           "purple": (140, 50, 170), "orange": (245, 130, 20)}
SHAPES = ("circle", "square", "triangle")
WORDS = ("apple", "river", "stone", "cloud", "tiger", "piano", "lemon", "train", "paper", "green",
         "house", "light", "music", "ocean", "plant", "smile")
DIRECTIONS = ("left", "right", "up", "down")
FILES = {"mmbench": "mmbench.parquet", "textvqa": "textvqa.jsonl", "pope": "pope.parquet",
         "ocrbench": "ocrbench.json", "mvbench": "mvbench.json"}


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: tuple[int, int, int, int], colour) -> None:
    x0, y0, x1, y1 = box
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "square":
        draw.rectangle(box, fill=colour)
    else:
        draw.polygon([((x0 + x1) // 2, y0), (x1, y1), (x0, y1)], fill=colour)


def _canvas(size: int) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    image = Image.new("RGB", (size, size), (245, 245, 240))
    return image, ImageDraw.Draw(image)


def _boxes(rng: np.random.Generator, count: int, size: int) -> list[tuple[int, int, int, int]]:
    """``count`` non-overlapping boxes on a grid of cells."""
    cells = 3
    step = size // cells
    chosen = rng.choice(cells * cells, size=count, replace=False)
    out = []
    for c in chosen:
        gx, gy = int(c) % cells, int(c) // cells
        pad = step // 6
        out.append((gx * step + pad, gy * step + pad, (gx + 1) * step - pad, (gy + 1) * step - pad))
    return out


def _text_image(text: str, size: int) -> Image.Image:
    image, draw = _canvas(size)
    font = ImageFont.load_default(size=max(12, size // (len(text) // 2 + 2)))
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    draw.text(((size - (right - left)) // 2 - left, (size - (bottom - top)) // 2 - top), text, fill=(0, 0, 0), font=font)
    return image


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _options(rng: np.random.Generator, correct: str, pool: tuple[str, ...] | list[str], n: int = 4) -> list[str]:
    others = [p for p in pool if p != correct]
    picked = [correct] + [others[i] for i in rng.choice(len(others), size=n - 1, replace=False)]
    return [picked[i] for i in rng.permutation(n)]


def mmbench_rows(n: int, rng: np.random.Generator, size: int) -> list[dict[str, Any]]:
    rows = []
    for i in range(n):
        image, draw = _canvas(size)
        if i % 2 == 0:
            colour = str(rng.choice(list(COLOURS)))
            _draw_shape(draw, str(rng.choice(SHAPES)), (size // 5, size // 5, 4 * size // 5, 4 * size // 5), COLOURS[colour])
            question, correct, pool, category = "What colour is the shape in the picture?", colour, list(COLOURS), "colour"
        else:
            count = int(rng.integers(1, 5))
            for box in _boxes(rng, count, size):
                _draw_shape(draw, "circle", box, COLOURS[str(rng.choice(list(COLOURS)))])
            question, correct, pool, category = "How many circles are in the picture?", str(count), ["1", "2", "3", "4", "5"], "counting"
        options = _options(rng, correct, pool)
        rows.append({"index": i, "question": question, "hint": "", **dict(zip("ABCD", options)),
                     "answer": "ABCD"[options.index(correct)], "category": category,
                     "image": {"bytes": _png(image), "path": f"mmbench_{i}.png"}})
    return rows


def textvqa_rows(n: int, rng: np.random.Generator, size: int, folder: Path) -> list[dict[str, Any]]:
    rows = []
    (folder / "images").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        word = str(rng.choice(WORDS))
        name = f"images/textvqa_{i}.png"
        _text_image(word, size).save(folder / name)
        # annotators' answers vary in case, articles and punctuation, as real ones do
        answers = [word] * 6 + [word.upper(), f"the {word}", f"{word}.", f"'{word}'"]
        rows.append({"question_id": i, "question": "What word is written in the image?", "image": name,
                     "answers": answers})
    return rows


def pope_rows(n: int, rng: np.random.Generator, size: int) -> list[dict[str, Any]]:
    rows = []
    for i in range(n):
        image, draw = _canvas(size)
        present = []
        for box in _boxes(rng, int(rng.integers(1, 4)), size):
            shape, colour = str(rng.choice(SHAPES)), str(rng.choice(list(COLOURS)))
            _draw_shape(draw, shape, box, COLOURS[colour])
            present.append((colour, shape))
        if i % 2 == 0:
            colour, shape = present[int(rng.integers(len(present)))]
        else:
            absent = [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in present]
            colour, shape = absent[int(rng.integers(len(absent)))]
        rows.append({"question_id": str(i), "question": f"Is there a {colour} {shape} in the image?",
                     "answer": "yes" if i % 2 == 0 else "no", "category": "random",
                     "image_source": f"synthetic_{i}", "image": {"bytes": _png(image), "path": f"pope_{i}.png"}})
    return rows


def ocrbench_rows(n: int, rng: np.random.Generator, size: int, folder: Path) -> list[dict[str, Any]]:
    rows = []
    (folder / "images").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        text = " ".join(str(w) for w in rng.choice(WORDS, size=2, replace=False))
        name = f"images/ocrbench_{i}.png"
        _text_image(text, size).save(folder / name)
        rows.append({"id": i, "dataset": "synthetic", "question_type": "Regular Text Recognition",
                     "question": "what is written in the image?", "answer": [text], "image_path": name})
    return rows


def mvbench_rows(n: int, rng: np.random.Generator, size: int, folder: Path, frames: int = 8) -> list[dict[str, Any]]:
    rows = []
    for i in range(n):
        direction = str(rng.choice(DIRECTIONS))
        colour = COLOURS[str(rng.choice(list(COLOURS)))]
        video = folder / "videos" / f"clip_{i}"
        video.mkdir(parents=True, exist_ok=True)
        side = size // 5
        for f in range(frames):
            travel = int((size - side) * f / (frames - 1))
            x, y = {"right": (travel, size // 2 - side // 2), "left": (size - side - travel, size // 2 - side // 2),
                    "down": (size // 2 - side // 2, travel), "up": (size // 2 - side // 2, size - side - travel)}[direction]
            image, draw = _canvas(size)
            draw.rectangle((x, y, x + side, y + side), fill=colour)
            image.save(video / f"{f:04d}.png")
        candidates = _options(rng, direction, DIRECTIONS)
        rows.append({"id": f"clip_{i}", "video": f"videos/clip_{i}", "task_type": "moving_direction",
                     "question": "In which direction does the square move?", "candidates": candidates,
                     "answer": direction})
    return rows


def write_synthetic(task: str, folder: str | Path, samples: int = 8, seed: int = 0, size: int = 224) -> Path:
    """Write ``samples`` rows of ``task`` under ``folder``; returns the data file to load."""
    if task not in FILES:
        raise ValueError(f"no synthetic data for task {task!r}; tasks: {', '.join(FILES)}")
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, list(FILES).index(task)])
    path = folder / FILES[task]
    if task == "mmbench":
        rows = mmbench_rows(samples, rng, size)
    elif task == "pope":
        rows = pope_rows(samples, rng, size)
    elif task == "textvqa":
        rows = textvqa_rows(samples, rng, size, folder)
    elif task == "ocrbench":
        rows = ocrbench_rows(samples, rng, size, folder)
    else:
        rows = mvbench_rows(samples, rng, size, folder)
    if path.suffix == ".parquet":
        import pandas as pd

        pd.DataFrame(rows).to_parquet(path, index=False)
    elif path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        path.write_text(json.dumps(rows, indent=1))
    return path


def answer_vocabulary() -> list[str]:
    """Every word an answer to the synthetic benchmark can need (for the tiny presets' tokenizer)."""
    return ["A", "B", "C", "D", "yes", "no", "1", "2", "3", "4", "5", *COLOURS, *SHAPES, *WORDS, *DIRECTIONS]
