"""The benchmark formats: which fields a row needs, the prompt the field uses, how an answer is scored.

One ``Task`` per format. Rows are checked when they are read: a missing or malformed field stops
the load with the source, the row number and what the row should hold. Media are decoded only
when a sample is evaluated (a broken image is reported with its row number then).

Prompts follow lmms-eval's default templates for Qwen-VL models (the post-prompts that ask for a
letter or a short phrase); ``docs/accuracy.md`` lists them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.evaluation import scoring
from pipeline.evaluation.sources import (
    DataError,
    iter_rows,
    load_image,
    load_video_frames,
    read_rows,
)

SHORT_ANSWER = "Answer the question using a single word or phrase."
LETTER_ANSWER = "Answer with the option's letter from the given choices directly."
LETTERS = "ABCDEFGHIJ"


@dataclass
class Sample:
    task: str
    id: str
    row: int  # 1-based row number in the source, for messages
    prompt: str
    truth: Any  # letter (multiple choice), list of answers (VQA, OCR), "yes"/"no" (POPE)
    media: Any  # the row's image or video field, decoded on use
    root: Path | None
    options: list[str] = field(default_factory=list)
    category: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Task:
    name: str
    description: str
    video: bool
    parse: Callable[[dict[str, Any]], Sample]  # raises ValueError with what is wrong
    needs: str  # what a row must hold, for messages

    def load(self, source: str, *, split: str | None = None, limit: int | None = None,
             media_root: str | None = None) -> list[Sample]:
        rows, root = read_rows(source, split)
        if not rows:
            raise DataError(f"{source}: no rows")
        samples = []
        for number, row in iter_rows(rows, limit):
            if not isinstance(row, dict):
                raise DataError(f"{source}: row {number}: expected an object with fields, got {type(row).__name__}")
            try:
                sample = self.parse(row)
            except (KeyError, ValueError, TypeError) as err:
                what = f"field {err.args[0]!r} is missing" if isinstance(err, KeyError) else str(err)
                raise DataError(f"{source}: row {number}: {what} ({self.name} rows need {self.needs})") from None
            sample.row = number
            sample.task = self.name
            sample.root = Path(media_root) if media_root else Path(row.get("__root__") or root or ".")
            if not sample.id:
                sample.id = str(number)
            samples.append(sample)
        return samples

    def images(self, sample: Sample) -> list:
        try:
            media = sample.media if isinstance(sample.media, list) else [sample.media]
            return [load_image(m, sample.root) for m in media]
        except Exception as err:
            raise DataError(f"{self.name} row {sample.row} (id {sample.id}): image unreadable: {err}") from None

    def frames(self, sample: Sample, count: int) -> list:
        try:
            return load_video_frames(sample.media, sample.root, count)
        except DataError:
            raise
        except Exception as err:
            raise DataError(f"{self.name} row {sample.row} (id {sample.id}): video unreadable: {err}") from None

    def score(self, sample: Sample, answer: str) -> float:
        return SCORERS[self.name](sample, answer)

    def metrics(self, samples: list[Sample], answers: list[str]) -> dict[str, float]:
        """The task's figures over samples; ``accuracy`` is always the headline one."""
        if self.name == "pope":
            return scoring.yes_no_metrics([scoring.yes_no(a) for a in answers], [s.truth for s in samples])
        scores = [self.score(s, a) for s, a in zip(samples, answers)]
        return {"accuracy": sum(scores) / len(scores)}


def _text(row: dict[str, Any], key: str) -> str:
    value = row[key]
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"field {key!r} must be non-empty text, got {value!r}"[:200])
    return value.strip()


def _media(row: dict[str, Any], *keys: str) -> Any:
    for key in keys:
        value = row.get(key)
        if value is not None and value != "" and value != []:
            return value
    raise KeyError(keys[0])


def _answers(row: dict[str, Any], key: str) -> list[str]:
    value = row[key]
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not values or not all(isinstance(v, str) for v in values):
        raise ValueError(f"field {key!r} must be an answer or a non-empty list of answers, got {value!r}"[:200])
    return values


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, float) and value != value) or str(value).strip() in ("", "nan", "None")


def _mmbench(row: dict[str, Any]) -> Sample:
    question = _text(row, "question")
    options = []
    for letter in LETTERS:
        if letter not in row or _blank(row[letter]):
            break
        options.append(str(row[letter]).strip())
    if len(options) < 2:
        raise ValueError("needs option columns A, B (and C, D, ...), at least two of them filled")
    answer = _text(row, "answer").upper()
    if answer not in LETTERS[: len(options)]:
        raise ValueError(f"answer {answer!r} is not one of the option letters {', '.join(LETTERS[:len(options)])}")
    hint = "" if _blank(row.get("hint")) else str(row["hint"]).strip()
    lines = ([hint] if hint else []) + [question] + [f"{letter}. {o}" for letter, o in zip(LETTERS, options)] + [LETTER_ANSWER]
    return Sample("mmbench", str(row.get("index", row.get("id", ""))), 0, "\n".join(lines), answer,
                  _media(row, "image"), None, options, row.get("category"))


def _textvqa(row: dict[str, Any]) -> Sample:
    question = _text(row, "question")
    return Sample("textvqa", str(row.get("question_id", "")), 0, f"{question}\n{SHORT_ANSWER}",
                  _answers(row, "answers"), _media(row, "image", "image_path", "file_name"), None)


def _pope(row: dict[str, Any]) -> Sample:
    question = _text(row, "question")
    answer = _text(row, "answer").lower()
    if answer not in ("yes", "no"):
        raise ValueError(f"answer must be 'yes' or 'no', got {row['answer']!r}")
    return Sample("pope", str(row.get("question_id", row.get("id", ""))), 0, f"{question}\n{SHORT_ANSWER}",
                  answer, _media(row, "image", "image_path", "file_name"), None, category=row.get("category"))


def _ocrbench(row: dict[str, Any]) -> Sample:
    return Sample("ocrbench", str(row.get("id", "")), 0, _text(row, "question"), _answers(row, "answer"),
                  _media(row, "image", "image_path", "file_name"), None, category=row.get("question_type"),
                  extra={"dataset": row.get("dataset")})


def _mvbench(row: dict[str, Any]) -> Sample:
    question = _text(row, "question")
    candidates = row["candidates"]
    if not isinstance(candidates, list) or len(candidates) < 2 or len(candidates) > len(LETTERS):
        raise ValueError(f"field 'candidates' must be a list of 2 to {len(LETTERS)} options, got {candidates!r}"[:200])
    options = [str(c).strip() for c in candidates]
    answer = str(row["answer"]).strip()
    if answer not in options:
        raise ValueError(f"answer {answer!r} is not one of the candidates")
    lines = [question, "Options:"] + [f"({letter}) {o}" for letter, o in zip(LETTERS, options)] + [LETTER_ANSWER]
    return Sample("mvbench", str(row.get("id", row.get("video", ""))), 0, "\n".join(lines),
                  LETTERS[options.index(answer)], _media(row, "video", "frames"), None, options,
                  row.get("task_type", row.get("category")))


SCORERS: dict[str, Callable[[Sample, str], float]] = {
    "mmbench": lambda s, a: scoring.multiple_choice_score(a, s.options, s.truth),
    "mvbench": lambda s, a: scoring.multiple_choice_score(a, s.options, s.truth),
    "textvqa": lambda s, a: scoring.vqa_accuracy(a, s.truth),
    "pope": lambda s, a: float(scoring.yes_no(a) == s.truth),
    "ocrbench": lambda s, a: scoring.ocr_score(a, s.truth, handwritten_math=s.extra.get("dataset") == "HME100k"),
}

TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task("mmbench", "multiple choice on an image (option letters)", False, _mmbench,
             "question, image, option columns A, B, ... and answer (a letter)"),
        Task("textvqa", "open question on text in an image (VQA accuracy)", False, _textvqa,
             "question, image and answers (the annotators' answers)"),
        Task("pope", "yes/no object presence (accuracy, F1)", False, _pope,
             "question, image and answer ('yes' or 'no')"),
        Task("ocrbench", "text recognition (answer contained in the output)", False, _ocrbench,
             "question, image and answer (text or list of texts)"),
        Task("mvbench", "multiple choice on a video", True, _mvbench,
             "question, video (file, frame folder or frame list), candidates and answer (one candidate)"),
    )
}


def get_task(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; tasks: {', '.join(TASKS)}") from None
