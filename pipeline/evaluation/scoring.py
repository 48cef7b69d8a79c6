"""Scoring rules of the benchmark formats, as the field computes them.

Each rule takes the model's decoded answer and the row's ground truth and returns a score in
[0, 1]; the aggregates (accuracy, POPE's precision / recall / F1) are means over samples. The
rules follow the reference evaluations that lmms-eval reproduces:

- open VQA (TextVQA): the EvalAI answer processor (punctuation, number words, articles,
  contractions) on both answer and ground truths, then the standard VQA accuracy: for each of the
  ground-truth answers, min(1, matches among the *other* answers / 3), averaged.
- multiple choice (MMBench, MVBench): the option letter is read from the answer ("B", "(B)",
  "B. cat", "The answer is B"); failing that, an answer that names exactly one option's text
  picks that option. No letter and no option text: wrong.
- yes/no (POPE): the first sentence decides; "no" or "not" in it means no, otherwise yes (the
  POPE paper's rule). F1 takes "yes" as the positive class.
- OCR (OCRBench): a ground truth contained in the answer, case-insensitive, newlines as
  spaces; for handwritten math expressions (HME100k) all whitespace is removed first.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

_PUNCTUATION = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@",
                "`", ",", "?", "!"]
_NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                 "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = {"a", "an", "the"}
# the contractions the VQA evaluation restores when written without their apostrophe(s)
_CONTRACTED = (
    "ain't aren't can't could've couldn't couldn't've didn't doesn't don't hadn't hadn't've hasn't haven't "
    "he'd he'd've he's how'd how'll how's I'd I'd've I'll I'm I've isn't it'd it'd've it'll let's ma'am "
    "mightn't mightn't've might've mustn't must've needn't not've o'clock oughtn't 'ow's'at shan't she'd "
    "she'd've she's should've shouldn't shouldn't've somebody'd somebody'd've somebody'll somebody's "
    "someone'd someone'd've someone'll someone's something'd something'd've something'll that's there'd "
    "there'd've there're there's they'd they'd've they'll they're they've 'twas wasn't we'd we'd've we'll "
    "we're we've weren't what'll what're what's what've when's where'd where's where've who'd who'd've "
    "who'll who're who's who've why'll why're why's won't would've wouldn't wouldn't've y'all y'all'll "
    "y'all'd've you'd you'd've you'll you're you've"
).split()
_CONTRACTIONS = {word.replace("'", ""): word for word in _CONTRACTED}
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_STRIP = re.compile(r"(\d)(,)(\d)")


def _punctuation(text: str) -> str:
    out = text
    for p in _PUNCTUATION:
        if (p + " " in text or " " + p in text) or re.search(_COMMA_STRIP, text) is not None:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD_STRIP.sub("", out)


def _digits_articles(text: str) -> str:
    words = []
    for word in text.lower().split():
        word = _NUMBER_WORDS.get(word, word)
        if word not in _ARTICLES:
            words.append(_CONTRACTIONS.get(word, word))
    return " ".join(words)


def vqa_normalize(answer: str) -> str:
    """The EvalAI / VQA answer normalisation."""
    text = answer.replace("\n", " ").replace("\t", " ").strip()
    return _digits_articles(_punctuation(text)).strip()


def vqa_accuracy(answer: str, ground_truths: Sequence[str]) -> float:
    """Standard VQA accuracy of one answer against the annotators' answers (usually ten)."""
    if not ground_truths:
        raise ValueError("VQA accuracy needs at least one ground-truth answer")
    pred = vqa_normalize(answer)
    truths = [vqa_normalize(t) for t in ground_truths]
    scores = []
    for i in range(len(truths)):
        others = truths[:i] + truths[i + 1:] if len(truths) > 1 else truths
        scores.append(min(1.0, sum(t == pred for t in others) / 3))
    return sum(scores) / len(scores)


def choice_letter(answer: str, options: Sequence[str]) -> str | None:
    """The option letter an answer picks (options in letter order A, B, ...), or None."""
    letters = [chr(ord("A") + i) for i in range(len(options))]
    text = answer.strip()
    allowed = "".join(letters)
    patterns = (
        rf"^\(?([{allowed}])\)?(?:[.:,)\s]|$)",  # "B", "(B)", "B.", "B) cat", "B: cat"
        rf"\b(?:answer|option)\s*(?:is|:)?\s*\(?([{allowed}])\b",  # "The answer is B", "Option (C)"
        rf"\(([{allowed}])\)",  # "... (C) ..."
    )
    for pattern in patterns:
        match = re.search(pattern, text, flags=re.IGNORECASE if pattern.startswith(r"\b") else 0)
        if match:
            return match.group(1).upper()
    named = [letter for letter, option in zip(letters, options)
             if option and re.search(rf"\b{re.escape(option.strip().lower())}\b", text.lower())]
    return named[0] if len(named) == 1 else None


def multiple_choice_score(answer: str, options: Sequence[str], correct: str) -> float:
    return float(choice_letter(answer, options) == correct)


def yes_no(answer: str) -> str:
    """POPE's reading of an answer: "no" if its first sentence says no or not, else "yes"."""
    first = re.split(r"[.!?\n]", answer.strip(), maxsplit=1)[0]
    words = re.findall(r"[a-z']+", first.lower())
    return "no" if ("no" in words or "not" in words) else "yes"


def yes_no_metrics(predictions: Sequence[str], labels: Sequence[str]) -> dict[str, float]:
    """Accuracy, precision, recall and F1 (positive class "yes") and the share of yes answers."""
    if len(predictions) != len(labels):
        raise ValueError(f"{len(predictions)} predictions for {len(labels)} labels")
    if not labels:
        raise ValueError("no samples to score")
    tp = sum(p == "yes" and t == "yes" for p, t in zip(predictions, labels))
    fp = sum(p == "yes" and t == "no" for p, t in zip(predictions, labels))
    fn = sum(p == "no" and t == "yes" for p, t in zip(predictions, labels))
    correct = sum(p == t for p, t in zip(predictions, labels))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "accuracy": correct / len(labels),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "yes_ratio": sum(p == "yes" for p in predictions) / len(predictions),
    }


def ocr_score(answer: str, ground_truths: Sequence[str], handwritten_math: bool = False) -> float:
    """OCRBench: 1 when any ground truth appears in the answer."""
    if handwritten_math:
        pred = re.sub(r"\s+", "", answer)
        return float(any(re.sub(r"\s+", "", t) in pred for t in ground_truths))
    pred = answer.lower().replace("\n", " ").strip()
    return float(any(t.lower().replace("\n", " ").strip() in pred for t in ground_truths))
