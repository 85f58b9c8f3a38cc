"""Tests of the procedural puzzles: determinism, correct answers, disjoint splits, phrasings."""

from __future__ import annotations

import re
import string
from collections.abc import Iterator
from functools import cache

import pytest

import searchlab_evaluation.puzzles as puzzles
from searchlab_evaluation.puzzles import (
    FAMILIES,
    SPLITS,
    TASK_VERSION,
    Puzzle,
    generic_template_count,
    make_all,
    make_split,
    template_shells,
)

_FORMATTER = string.Formatter()


def _shell_regex(shell: str) -> re.Pattern[str]:
    """A regex matching renderings of a shell; a repeated placeholder must repeat its value."""
    parts, seen = [], set()
    for literal, name, _, _ in _FORMATTER.parse(shell):
        parts.append(re.escape(literal))
        if name is None:
            continue
        parts.append(f"(?P={name})" if name in seen else f"(?P<{name}>.+?)")
        seen.add(name)
    return re.compile("".join(parts), re.DOTALL)


@cache
def _regexes(family: str, template: str) -> tuple[re.Pattern[str], ...]:
    return tuple(_shell_regex(shell) for shell in template_shells(family, template))


def _fields(puzzle: Puzzle) -> dict[str, str]:
    """The placeholder values of a puzzle, read back from its prompt and its template."""
    for regex in _regexes(puzzle.family, puzzle.template):
        match = regex.fullmatch(puzzle.prompt)
        if match:
            return match.groupdict()
    raise AssertionError(f"{puzzle.prompt!r} does not match its template {puzzle.template!r}")


# Independent reference solutions --------------------------------------------------------------

# Roman numerals digit by digit (a different method from the generator's greedy table).
_ROMAN_DIGITS = (
    ("", "I", "II", "III", "IV", "V", "VI", "VII", "VIII", "IX"),
    ("", "X", "XX", "XXX", "XL", "L", "LX", "LXX", "LXXX", "XC"),
    ("", "C", "CC", "CCC", "CD", "D", "DC", "DCC", "DCCC", "CM"),
)
# unit -> (dimension, power of ten relative to the base unit)
_UNITS = {
    "km": ("length", 3),
    "m": ("length", 0),
    "dm": ("length", -1),
    "cm": ("length", -2),
    "mm": ("length", -3),
    "kg": ("mass", 3),
    "g": ("mass", 0),
    "mg": ("mass", -3),
    "L": ("volume", 0),
    "mL": ("volume", -3),
}
_UNIT_NAMES = {
    "kilometres": "km",
    "metres": "m",
    "decimetres": "dm",
    "centimetres": "cm",
    "millimetres": "mm",
    "kilograms": "kg",
    "grams": "g",
    "milligrams": "mg",
    "litres": "L",
    "millilitres": "mL",
}


def _roman(n: int) -> str:
    assert 0 < n < 1000
    hundreds, tens, ones = n // 100, n // 10 % 10, n % 10
    return _ROMAN_DIGITS[2][hundreds] + _ROMAN_DIGITS[1][tens] + _ROMAN_DIGITS[0][ones]


def _bit_op(fields: dict[str, str]) -> str:
    text = " ".join(
        fields[k] for k in ("op_code", "op_noun", "op_phrase", "Op_phrase") if k in fields
    )
    found = {
        op
        for op, words in (
            ("invert", ("NOT", "invert")),
            ("reverse", ("REV", "revers")),
            ("rotl", ("ROL1", "rotat")),
        )
        if any(word.lower() in text.lower() for word in words)
    }
    assert len(found) == 1, text
    return found.pop()


def _solve(puzzle: Puzzle) -> tuple[tuple[object, ...], str]:
    """(canonical instance key, reference answer) of a puzzle, computed from its prompt alone."""
    f = _fields(puzzle)
    family = puzzle.family
    if family == "bit_manipulation":
        op = _bit_op(f)
        bits = set(re.findall(r"[01]{6}", " ".join(f.values())))
        assert len(bits) == 1, f
        b = bits.pop()
        if op == "invert":
            result = b.translate(str.maketrans("01", "10"))
        elif op == "reverse":
            result = b[::-1]
        else:
            result = b[1:] + b[:1]
        return (op, b), result
    if family == "cipher":
        letters = f["letters"].split(" ")
        assert 4 <= len(letters) <= 5 and all(len(c) == 1 and c.islower() for c in letters)
        shifted = [
            string.ascii_lowercase[(string.ascii_lowercase.index(c) + 3) % 26] for c in letters
        ]
        return ("".join(letters),), " ".join(shifted)
    if family == "roman_numerals":
        n = int(f["n"])
        assert 1 <= n <= puzzles.ROMAN_MAX
        return (n,), _roman(n)
    if family == "unit_conversion":
        value = int(f["value"])
        src = f.get("src") or _UNIT_NAMES[f["src_name"]]
        dst = f.get("dst") or _UNIT_NAMES[f["dst_name"]]
        (dim_src, p_src), (dim_dst, p_dst) = _UNITS[src], _UNITS[dst]
        assert dim_src == dim_dst and p_src - p_dst in (1, 2, 3)
        assert 1 <= value <= 99
        return (src, dst, value), str(value * 10 ** (p_src - p_dst))
    if family == "gravity":
        g, m = int(f["g"]), int(f["m"])
        assert 2 <= g <= 9 and 2 <= m <= puzzles.GRAVITY_MASS_MAX
        return (g, m), str(g * m)
    assert family == "equations"
    if "a" in f:
        a, b = int(f["a"]), int(f["b"])
        assert 1 <= a <= 20 and 0 <= b - a <= 20
        return ("linear", a, b), str(b - a)
    d1, d2 = int(f["d1"]), int(f["d2"])
    assert f["l1"] != f["l2"] and f["l1"].isupper() and f["l2"].isupper()
    assert 1 <= d1 <= 9 and 1 <= d2 <= 9
    return ("letters", f["l1"], d1, f["l2"], d2), str(d1 + d2)


def _all_puzzles(n: int, seed: int = 0) -> Iterator[Puzzle]:
    for split in SPLITS:
        for family_puzzles in make_all(split, n, seed=seed).values():
            yield from family_puzzles


# Tests ----------------------------------------------------------------------------------------


def test_constants() -> None:
    assert TASK_VERSION.startswith("puzzles-v")
    assert len(FAMILIES) == 6 and len(set(FAMILIES)) == 6
    assert SPLITS == ("train_generic", "train_template", "dev", "external")


@pytest.mark.parametrize("split", SPLITS)
def test_deterministic(split: str) -> None:
    first = make_all(split, 50, seed=3)
    assert first == make_all(split, 50, seed=3)
    assert first != make_all(split, 50, seed=4)
    for family in FAMILIES:
        assert first[family] == make_split(family, split, 50, seed=3)
        # A longer run extends a shorter one: n does not change the stream.
        assert make_split(family, split, 80, seed=3)[:50] == first[family]


def test_make_all_families_and_zero() -> None:
    out = make_all("dev", 5, seed=0, families=("gravity", "cipher"))
    assert list(out) == ["gravity", "cipher"]
    assert all(len(v) == 5 and all(p.family == k for p in v) for k, v in out.items())
    assert make_split("cipher", "dev", 0, seed=0) == []


def test_answers_are_correct_and_fields_sane() -> None:
    for puzzle in _all_puzzles(300, seed=1):
        _, expected = _solve(puzzle)
        assert puzzle.answer == expected, puzzle
        assert puzzle.family in FAMILIES and puzzle.split in SPLITS


def test_shapes() -> None:
    for puzzle in _all_puzzles(300, seed=2):
        assert puzzle.prompt == puzzle.prompt.rstrip(), puzzle
        assert puzzle.prompt == puzzle.prompt.lstrip(), puzzle
        assert 20 <= len(puzzle.prompt) <= 170, puzzle
        assert 1 <= len(puzzle.answer) <= 12 and puzzle.answer == puzzle.answer.strip(), puzzle


@pytest.mark.parametrize("family", FAMILIES)
def test_instance_buckets_are_disjoint(family: str) -> None:
    keys: dict[str, set[tuple[object, ...]]] = {"train": set(), "dev": set(), "external": set()}
    bucket = {
        "train_generic": "train",
        "train_template": "train",
        "dev": "dev",
        "external": "external",
    }
    for split in SPLITS:
        for puzzle in make_split(family, split, 500, seed=5):
            keys[bucket[split]].add(_solve(puzzle)[0])
    assert not keys["train"] & keys["dev"]
    assert not keys["train"] & keys["external"]
    assert not keys["dev"] & keys["external"]
    # Every bucket has several instances, even for the 39 Roman numerals.
    assert all(len(v) >= 3 for v in keys.values()), {k: len(v) for k, v in keys.items()}


def test_equations_mix_both_kinds() -> None:
    for split in SPLITS:
        puzzles = make_split("equations", split, 1000, seed=0)
        linear = sum("a" in _fields(p) for p in puzzles)
        assert 400 <= linear <= 600, (split, linear)


@pytest.mark.parametrize("family", FAMILIES)
def test_dev_and_train_template_share_phrasing(family: str) -> None:
    dev_regexes = _regexes(family, "dev")
    for split in ("dev", "train_template"):
        for puzzle in make_split(family, split, 200, seed=6):
            assert puzzle.template == "dev"
            assert any(r.fullmatch(puzzle.prompt) for r in dev_regexes), puzzle


@pytest.mark.parametrize("family", FAMILIES)
def test_external_phrasings_are_their_own(family: str) -> None:
    dev_regexes = _regexes(family, "dev")
    dev_shells = set(template_shells(family, "dev"))
    generic_shells = {
        shell
        for index in range(generic_template_count(family))
        for shell in template_shells(family, f"generic:{index}")
    }
    templates = set()
    for puzzle in make_split(family, "external", 500, seed=7):
        assert re.fullmatch(r"external:\d+", puzzle.template)
        templates.add(puzzle.template)
        assert not any(r.fullmatch(puzzle.prompt) for r in dev_regexes), puzzle
        shells = set(template_shells(family, puzzle.template))
        assert not shells & dev_shells
        assert not shells & generic_shells
    assert 6 <= len(templates) <= 10


@pytest.mark.parametrize("family", FAMILIES)
def test_train_generic_is_varied(family: str) -> None:
    puzzles = make_split(family, "train_generic", 2000, seed=8)
    templates = {p.template for p in puzzles}
    assert all(re.fullmatch(r"generic:\d+", t) for t in templates)
    assert len(templates) >= 100
    dev_regexes = _regexes(family, "dev")
    assert not any(r.fullmatch(p.prompt) for p in puzzles for r in dev_regexes)
    # The combinator's shells are all distinct.
    count = generic_template_count(family)
    assert count >= 200
    shells = [template_shells(family, f"generic:{i}") for i in range(count)]
    assert len(set(shells)) == count


@pytest.mark.parametrize(
    ("kwargs", "word"),
    [
        ({"family": "chess", "split": "dev", "n": 1}, "family"),
        ({"family": "cipher", "split": "test", "n": 1}, "split"),
        ({"family": "cipher", "split": "dev", "n": -1}, "n"),
    ],
)
def test_bad_arguments(kwargs: dict[str, object], word: str) -> None:
    with pytest.raises(ValueError, match=rf"\b{word}\b"):
        make_split(**kwargs, seed=0)  # type: ignore[arg-type]


def test_bad_arguments_make_all_and_templates() -> None:
    with pytest.raises(ValueError, match="split"):
        make_all("test", 1, seed=0)
    with pytest.raises(ValueError, match="family"):
        make_all("dev", 1, seed=0, families=("cipher", "chess"))
    with pytest.raises(ValueError, match="template"):
        template_shells("cipher", "generic:100000")
    with pytest.raises(ValueError, match="template"):
        template_shells("cipher", "external:x")
