"""Scoring rules against cases worked out by hand from each benchmark's published rule."""

import pytest

from pipeline.evaluation import scoring


@pytest.mark.parametrize("raw, normalised", [
    ("Two.", "2"),  # number word, trailing period
    ("the Dog", "dog"),  # article, case
    ("dont", "don't"),  # contraction restored
    ("3,000", "3000"),  # digit comma: punctuation dropped, not spaced
    ("hello-world", "hello world"),  # lone hyphen becomes a space
    ("yes !", "yes"),  # punctuation with a space: dropped
    ("3.5", "3.5"),  # a decimal point stays
    ("a.b", "ab"),  # other periods go
    ("  An apple\n", "apple"),
    ("man's", "man's"),  # apostrophes are not punctuation here
])
def test_vqa_normalisation(raw, normalised):
    assert scoring.vqa_normalize(raw) == normalised


def test_vqa_accuracy_leave_one_out_by_hand():
    # 2 of 10 annotators said yes. Leaving out a "yes": 1 match -> 1/3; leaving out a "no": 2 -> 2/3.
    # (2 * 1/3 + 8 * 2/3) / 10 = 0.6
    truths = ["yes"] * 2 + ["no"] * 8
    assert scoring.vqa_accuracy("yes", truths) == pytest.approx(0.6)
    # 4 of 10: leaving out one of them leaves 3 -> 1; leaving out another leaves 4 -> 1: full credit
    assert scoring.vqa_accuracy("Blue.", ["blue"] * 4 + ["navy"] * 6) == 1.0
    # 3 of 10: (3 * 2/3 + 7 * 1) / 10 = 0.9
    assert scoring.vqa_accuracy("two", ["2"] * 3 + ["3"] * 7) == pytest.approx(0.9)
    assert scoring.vqa_accuracy("cat", ["dog"] * 10) == 0.0
    with pytest.raises(ValueError):
        scoring.vqa_accuracy("x", [])


@pytest.mark.parametrize("answer, letter", [
    ("B", "B"), ("(C) cat", "C"), ("D.", "D"), ("A: red", "A"), ("The answer is D.", "D"),
    ("option (b)", "B"), ("I pick (C) here", "C"), ("cat", "C"), ("the colour is Blue", "B"),
    ("a dog or a cat", None), ("", None), ("E", None), ("[12] [40]", None),
])
def test_choice_letter(answer, letter):
    assert scoring.choice_letter(answer, ["red", "blue", "cat", "dog"]) == letter


def test_multiple_choice_score():
    assert scoring.multiple_choice_score("(B) blue", ["red", "blue"], "B") == 1.0
    assert scoring.multiple_choice_score("red", ["red", "blue"], "B") == 0.0


@pytest.mark.parametrize("answer, reading", [
    ("Yes, there is a cat.", "yes"), ("No, there is not.", "no"), ("There is no dog in it", "no"),
    ("Yes. But not the red one.", "yes"),  # only the first sentence counts
    ("I cannot tell", "yes"),  # POPE's rule looks for the words no / not only
    ("[14] [9]", "yes"),
])
def test_yes_no_reading(answer, reading):
    assert scoring.yes_no(answer) == reading


def test_yes_no_metrics_by_hand():
    # tp = 2 (rows 1, 5), fp = 1 (row 2), tn = 1 (row 3), fn = 1 (row 4)
    m = scoring.yes_no_metrics(["yes", "yes", "no", "no", "yes"], ["yes", "no", "no", "yes", "yes"])
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3)
    assert m["yes_ratio"] == pytest.approx(3 / 5)
    none_yes = scoring.yes_no_metrics(["no", "no"], ["yes", "no"])
    assert none_yes["precision"] == 0.0 and none_yes["f1"] == 0.0 and none_yes["accuracy"] == 0.5
    with pytest.raises(ValueError):
        scoring.yes_no_metrics(["yes"], ["yes", "no"])


def test_ocr_score():
    assert scoring.ocr_score("The text says Hello World", ["hello world"]) == 1.0
    assert scoring.ocr_score("hello", ["hello world"]) == 0.0
    assert scoring.ocr_score("first\nline", ["first line"]) == 1.0
    assert scoring.ocr_score("no", ["STOP", "no"]) == 1.0  # any ground truth
    # handwritten maths: whitespace ignored on both sides
    assert scoring.ocr_score("x ^ { 2 }", ["x^{2}"], handwritten_math=True) == 1.0
    assert scoring.ocr_score("x ^ { 2 }", ["x^{2}"]) == 0.0
