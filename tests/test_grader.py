"""Tests of the answer grader: extraction order, tolerances and tricky model outputs."""

from __future__ import annotations

import pytest

from searchlab_evaluation.grader import accuracy, extract_answer, grade, is_correct


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # \boxed{...}: nested braces, the last one wins, empty ones are skipped.
        (r"so \boxed{\frac{1}{2}} it is", r"\frac{1}{2}"),
        (r"first \boxed{3}, then \boxed{5}", "5"),
        (r"\boxed{7} and later \boxed{}", "7"),
        (r"\boxed{ XIV }", "XIV"),
        (r"\boxed{g r j v}", "g r j v"),
        (r"The answer is 12, so \boxed{13}", "13"),
        (r"truncated \boxed{9", "9"),  # unclosed: falls through to the last number
        # Final-answer patterns, the last occurrence, trailing punctuation stripped.
        ("The final answer is 42.", "42"),
        ("Final Answer: XIV.", "XIV"),
        ("answer is **0101**", "0101"),
        ("The answer is 3. Wait, no. The answer is 4.", "4"),
        ("Answer:\n  g r j v", "g r j v"),
        ("The final answer is: 2.5", "2.5"),
        ("answer: 7 because 3 + 4 = 7. Done", "7 because 3 + 4 = 7"),
        # The last number.
        ("I think 3 then 1,234,567 apples", "1,234,567"),
        ("it is -17 degrees", "-17"),
        ("roughly 6.02e23 of them", "6.02e23"),
        ("the result was -3.5, not 2", "2"),
        ("from 3-5", "5"),
        # The last non-empty line.
        ("thinking...\nXIV\n\n   ", "XIV"),
        ("  only words here  ", "only words here"),
    ],
)
def test_extract_answer(text: str, expected: str) -> None:
    assert extract_answer(text) == expected


@pytest.mark.parametrize("text", ["", "   ", "\n\t\n"])
def test_extract_answer_empty(text: str) -> None:
    assert extract_answer(text) is None


@pytest.mark.parametrize(
    ("prediction", "answer", "expected"),
    [
        # Binary strings: exact, not numeric.
        ("0101", "0101", True),
        ("101", "0101", False),
        ("0101.0", "0101", False),
        (" 0101 ", "0101", True),
        ("10", "10", True),
        ("10.0", "10", False),
        # Single 0 and 1 are numbers.
        ("1.0", "1", True),
        ("0", "0", True),
        ("1e-12", "0", True),
        ("0.001", "0", False),
        # Numbers within / outside a relative tolerance of 1e-2.
        ("201.9", "200", True),
        ("202.1", "200", False),
        ("-99.5", "-100", True),
        ("99.5", "-100", False),
        ("1,200", "1200", True),
        ("1200", "1,200", True),
        ("3.0", "3", True),
        ("4", "3", False),
        # Words: case-insensitive, whitespace runs collapsed.
        ("xiv", "XIV", True),
        ("XIV", "XV", False),
        ("g  r j\tv", "g r j v", True),
        ("grjv", "g r j v", False),
        (None, "42", False),
        ("", "42", False),
    ],
)
def test_is_correct(prediction: str | None, answer: str, expected: bool) -> None:
    assert is_correct(prediction, answer) is expected


def test_grade() -> None:
    assert grade(r"Reasoning... \boxed{\frac{1}{2}}", r"\frac{1}{2}")
    assert grade("The final answer is 42.", "42")
    assert grade("We get 2,000,000 in total", "2000000")
    # "1000000" is a binary-looking answer: exact match only.
    assert not grade("We get 1,000,000 in total", "1000000")
    assert grade("Shifting each letter.\ng r j v", "g r j v")
    # A number anywhere beats the last-line fallback.
    assert not grade("Step 1: shift.\ng r j v", "g r j v")
    assert not grade("The answer is 101", "0101")
    assert not grade("", "0")


def test_accuracy() -> None:
    texts = ["The answer is 5", r"\boxed{XIV}", "no idea", "0101"]
    answers = ["5", "xiv", "7", "101"]
    assert accuracy(texts, answers) == pytest.approx(0.5)
    assert accuracy(["1"], ["1"]) == 1.0


def test_accuracy_rejects_bad_lengths() -> None:
    with pytest.raises(ValueError, match="length"):
        accuracy(["1", "2"], ["1"])
    with pytest.raises(ValueError, match="empty"):
        accuracy([], [])
