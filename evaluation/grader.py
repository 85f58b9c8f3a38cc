"""Answer extraction and comparison, mirroring the NVIDIA Nemotron Reasoning Challenge metric.

:func:`extract_answer` finds the answer in a model's output, in this order of preference:

1. the content of the last non-empty ``\\boxed{...}`` (nested braces are balanced, so
   ``\\boxed{\\frac{1}{2}}`` gives ``\\frac{1}{2}``);
2. the value after the last "final answer" / "answer is" / "answer:" (case-insensitive), up to
   the end of its line, trailing punctuation stripped;
3. the last number (integers, decimals, negatives, scientific notation, thousands separators);
4. the last non-empty line.

:func:`is_correct` then compares it with the canonical answer: binary strings (only ``0``/``1``,
at least two characters) must match exactly; numbers match within a relative tolerance of 1e-2;
anything else matches case-insensitively with runs of whitespace collapsed.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

_BOXED = re.compile(r"\\boxed\s*\{")
# "final answer" is tried before the shorter cues at each position; "is", ":" or "=" after the
# cue are skipped. Only the cue is matched, so a later cue on the same line is still found; the
# value runs from the cue to the end of its line, or is the next line ("Answer:\n42").
_FINAL_ANSWER = re.compile(
    r"(?:final\s+answer|answer\s+is|answer\s*:)(?:\s*(?:is\b|:|=))*[ \t]*", re.IGNORECASE
)
# A number: optional sign, an integer with or without thousands separators (the separated form
# must not run on into more digits, so "1,0000" is not 1,000), optional fraction and exponent.
_NUMBER_CORE = r"[-+]?(?:(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?|\.\d+)(?:[eE][-+]?\d+)?"
# The look-behind keeps the "2" of "x2" and the "-" of "3-5" (a range, not a negative) out.
_NUMBER = re.compile(r"(?<![\w.])" + _NUMBER_CORE)
_NUMBER_FULL = re.compile(_NUMBER_CORE)
# A sentence break ends a final-answer value ("42. Because ..."), a decimal point does not.
_SENTENCE_BREAK = re.compile(r"[.!?;](?:\s|$)")
# Wrappers a model puts around a final answer ("**42**", "`XIV`", "$7$").
_WRAPPERS = "*`$\"' \t"
_TRAILING_PUNCTUATION = ".,;:!?"


def _boxed_contents(text: str) -> list[str]:
    """Contents of every closed ``\\boxed{...}`` in order of appearance, braces balanced."""
    contents = []
    for match in _BOXED.finditer(text):
        depth, start = 1, match.end()
        for i in range(start, len(text)):
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
                if depth == 0:
                    contents.append(text[start:i])
                    break
        # An unclosed \boxed{ (truncated generation) contributes nothing.
    return contents


def _clean_value(value: str) -> str:
    value = _SENTENCE_BREAK.split(value.strip(), maxsplit=1)[0]
    value = value.strip().strip(_WRAPPERS)
    value = value.rstrip(_TRAILING_PUNCTUATION).strip(_WRAPPERS)
    return value


def extract_answer(text: str) -> str | None:
    """Extract the final answer from a model output.

    Args:
        text: The generated text (the completion, not the prompt).

    Returns:
        The extracted answer, stripped; ``None`` for empty or whitespace-only text.
    """
    if not text or not text.strip():
        return None
    for content in reversed(_boxed_contents(text)):
        if content.strip():
            return content.strip()
    for match in reversed(list(_FINAL_ANSWER.finditer(text))):
        rest = text[match.end() :]
        if rest.startswith(("\n", "\r\n")):
            rest = rest.lstrip("\r\n")
        value = _clean_value(rest.split("\n", 1)[0])
        if value:
            return value
    numbers = _NUMBER.findall(text)
    if numbers:
        return numbers[-1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1]


def _parse_number(text: str) -> float | None:
    """The value of a plain number (thousands separators allowed), or None."""
    if not _NUMBER_FULL.fullmatch(text):
        return None
    try:
        value = float(text.replace(",", ""))
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _is_binary(text: str) -> bool:
    return len(text) >= 2 and set(text) <= {"0", "1"}


def is_correct(prediction: str | None, answer: str) -> bool:
    """Whether a prediction matches the canonical answer.

    Args:
        prediction: The extracted answer, or ``None`` when nothing was extracted.
        answer: The canonical answer.

    Returns:
        ``True`` if they match: exactly for binary-string answers (only ``0``/``1``, length at
        least 2, so ``"0101"`` never matches ``"101"``), within relative tolerance 1e-2 when
        both are numbers, otherwise case-insensitively with whitespace runs collapsed.
    """
    if prediction is None:
        return False
    prediction, answer = prediction.strip(), answer.strip()
    if _is_binary(answer):
        # Bit strings are not numbers: leading zeros and length matter.
        return prediction == answer
    predicted_value, answer_value = _parse_number(prediction), _parse_number(answer)
    if predicted_value is not None and answer_value is not None:
        abs_tol = 1e-9 if answer_value == 0 else 0.0
        return math.isclose(predicted_value, answer_value, rel_tol=1e-2, abs_tol=abs_tol)
    return " ".join(prediction.split()).casefold() == " ".join(answer.split()).casefold()


def grade(text: str, answer: str) -> bool:
    """Grade one model output against the canonical answer.

    Args:
        text: The generated text.
        answer: The canonical answer.

    Returns:
        ``is_correct(extract_answer(text), answer)``.
    """
    return is_correct(extract_answer(text), answer)


def accuracy(texts: Sequence[str], answers: Sequence[str]) -> float:
    """Share of outputs graded correct.

    Args:
        texts: Generated texts.
        answers: Canonical answers, aligned with ``texts``.

    Returns:
        The fraction of correct outputs, in [0, 1].

    Raises:
        ValueError: If the lengths differ or there are no items (a score on zero items is
            meaningless).
    """
    if len(texts) != len(answers):
        raise ValueError(f"texts and answers differ in length: {len(texts)} != {len(answers)}")
    if not texts:
        raise ValueError("texts is empty: accuracy on zero items is undefined")
    correct = sum(grade(text, answer) for text, answer in zip(texts, answers, strict=True))
    return correct / len(texts)
