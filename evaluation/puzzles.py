"""Seeded procedural puzzles in the six families of the NVIDIA Nemotron Reasoning Challenge.

The puzzles are deliberately easy and short (prompts of a few dozen to ~160 characters, answers
of 1-12 characters) so that a tiny byte-level language model trained on a CPU for minutes can
learn them partly. What matters is the split structure, which reproduces the challenge's trap:

- **Content.** Every puzzle is an *instance* (e.g. the cipher word ``"dogs"``) with a canonical
  key. A stable hash (``hashlib``) puts each key in exactly one bucket: ``train`` (~75 %),
  ``dev`` or ``external`` (~12.5 % each). ``train_generic`` and ``train_template`` draw from the
  train bucket, ``dev`` and ``external`` from their own, by rejection sampling, so no instance is
  shared between training data, the dev proxy and the external target. Small instance spaces
  (Roman numerals 1-39, gravity's 64 pairs, ...) are enumerated and split by hash *rank*, which
  guarantees every bucket several keys; within a split they are sampled with replacement.
- **Surface form.** ``dev`` and ``train_template`` share one fixed, distinctive phrasing per
  family ("template A", ``template == "dev"``). ``train_generic`` combines intros, instruction
  wordings, separators and answer cues into hundreds of phrasings (``"generic:<index>"``).
  ``external`` has its own hand-written phrasings (``"external:<i>"``), similar in spirit to the
  generic ones but produced by neither. Training on template-A data can therefore raise dev
  accuracy without raising external accuracy.

Everything is deterministic given ``(family, split, n, seed)``. Bump :data:`TASK_VERSION` when
any generator, bucket rule or phrasing changes: it keys evaluation caches.
"""

from __future__ import annotations

import hashlib
import random
import string
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import cache

TASK_VERSION: str = "puzzles-v2"

FAMILIES: tuple[str, ...] = (
    "bit_manipulation",
    "cipher",
    "roman_numerals",
    "unit_conversion",
    "gravity",
    "equations",
)
SPLITS: tuple[str, ...] = ("train_generic", "train_template", "dev", "external")

# Which instance bucket each split draws from: both training splits share one.
_SPLIT_BUCKET: dict[str, str] = {
    "train_generic": "train",
    "train_template": "train",
    "dev": "dev",
    "external": "external",
}
# Bucket shares. Hashed keys fall in [0, 1): below _TRAIN_SHARE is train, then dev, then external.
_TRAIN_SHARE = 0.75
_DEV_SHARE = 0.125
# Enumerated spaces give dev and external at least this many keys each (Roman numerals: 39 keys).
_MIN_HELD_OUT_KEYS = 3
# Rejection sampling accepts >= ~5 % of draws; this bound only catches a broken bucket rule.
_MAX_DRAWS = 100_000

Key = tuple[str | int, ...]


@dataclass(frozen=True)
class Puzzle:
    """One generated puzzle.

    Attributes:
        family: One of :data:`FAMILIES`.
        split: One of :data:`SPLITS`.
        prompt: The question text; never ends with whitespace (the completion is ``" " + answer``).
        answer: The canonical answer string the grader compares against.
        template: Which phrasing produced it: ``"dev"``, ``"generic:<index>"`` or
            ``"external:<i>"``.
    """

    family: str
    split: str
    prompt: str
    answer: str
    template: str


@dataclass(frozen=True)
class _Instance:
    """The content of a puzzle before it is phrased."""

    kind: str
    key: Key
    fields: dict[str, str]
    answer: str


@dataclass(frozen=True)
class _Family:
    """A family: how to draw instances, and its phrasings per kind (sub-type) of instance.

    Every kind has the same number of generic instructions and of external phrasings, so that a
    template index means the same slot whatever the kind.
    """

    name: str
    kinds: tuple[str, ...]
    draw: Callable[[random.Random, str], _Instance]
    # kind -> every key of that kind, for spaces small enough to split by rank; kinds left out
    # (huge spaces) are bucketed by thresholding the hash.
    spaces: dict[str, Callable[[], Iterable[Key]]]
    dev: dict[str, str]
    generic: dict[str, tuple[str, ...]]
    external: dict[str, tuple[str, ...]]


# --------------------------------------------------------------------------------------------
# Shared pieces of the generic phrasings.

_GENERIC_INTROS: tuple[str, ...] = (
    "",
    "Puzzle:",
    "Here is a task.",
    "Solve this.",
    "Question:",
    "Try this one.",
    "Quick exercise:",
    "Task:",
)
_GENERIC_SEPARATORS: tuple[str, ...] = (" ", "\n")
_GENERIC_CUES: tuple[str, ...] = (
    "Answer:",
    "Result:",
    "The answer is",
    "->",
    "Output:",
    "A:",
    "Solution:",
    "Final answer:",
)

# --------------------------------------------------------------------------------------------
# bit_manipulation

_BIT_OPS: dict[str, tuple[str, str]] = {
    # op -> (code used by template A, noun used by the other phrasings)
    "invert": ("NOT", "bitwise NOT"),
    "reverse": ("REV", "bit reversal"),
    "rotl": ("ROL1", "left rotation by 1"),
}


def _bit_result(op: str, bits: str) -> str:
    if op == "invert":
        return "".join("1" if b == "0" else "0" for b in bits)
    if op == "reverse":
        return bits[::-1]
    return bits[1:] + bits[0]


def _bit_phrase(op: str, bits: str) -> str:
    if op == "invert":
        return f"invert every bit of {bits}"
    if op == "reverse":
        return f"reverse the bit order of {bits}"
    return f"rotate {bits} left by one position"


def _bit_instance(op: str, bits: str) -> _Instance:
    code, noun = _BIT_OPS[op]
    phrase = _bit_phrase(op, bits)
    fields = {
        "bits": bits,
        "op_code": code,
        "op_noun": noun,
        "op_phrase": phrase,
        "Op_phrase": phrase[0].upper() + phrase[1:],
    }
    return _Instance("main", ("bit_manipulation", op, bits), fields, _bit_result(op, bits))


def _draw_bits(rng: random.Random, kind: str) -> _Instance:
    op = rng.choice(tuple(_BIT_OPS))
    bits = "".join(rng.choice("01") for _ in range(6))
    return _bit_instance(op, bits)


def _space_bits() -> Iterable[Key]:
    for op in _BIT_OPS:
        for value in range(64):
            yield ("bit_manipulation", op, format(value, "06b"))


# --------------------------------------------------------------------------------------------
# cipher


def _caesar(word: str, shift: int = 3) -> str:
    return "".join(chr((ord(c) - ord("a") + shift) % 26 + ord("a")) for c in word)


def _draw_cipher(rng: random.Random, kind: str) -> _Instance:
    word = "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.choice((4, 5))))
    fields = {"letters": " ".join(word), "word": word}
    return _Instance("main", ("cipher", word), fields, " ".join(_caesar(word)))


# --------------------------------------------------------------------------------------------
# roman_numerals

_ROMAN_VALUES: tuple[tuple[int, str], ...] = (
    (1000, "M"),
    (900, "CM"),
    (500, "D"),
    (400, "CD"),
    (100, "C"),
    (90, "XC"),
    (50, "L"),
    (40, "XL"),
    (10, "X"),
    (9, "IX"),
    (5, "V"),
    (4, "IV"),
    (1, "I"),
)


# Wide enough that dev and external hold about 25 numerals each (a dev split of 5 distinct
# numerals made accuracy move in steps of 0.2).
ROMAN_MAX = 199
GRAVITY_MASS_MAX = 29


def _to_roman(n: int) -> str:
    out = []
    for value, symbol in _ROMAN_VALUES:
        count, n = divmod(n, value)
        out.append(symbol * count)
    return "".join(out)


def _draw_roman(rng: random.Random, kind: str) -> _Instance:
    n = rng.randint(1, ROMAN_MAX)
    return _Instance("main", ("roman_numerals", n), {"n": str(n)}, _to_roman(n))


def _space_roman() -> Iterable[Key]:
    return (("roman_numerals", n) for n in range(1, ROMAN_MAX + 1))


# --------------------------------------------------------------------------------------------
# unit_conversion

# (source unit, target unit, source name, target name, factor)
_CONVERSIONS: tuple[tuple[str, str, str, str, int], ...] = (
    ("km", "m", "kilometres", "metres", 1000),
    ("m", "cm", "metres", "centimetres", 100),
    ("m", "mm", "metres", "millimetres", 1000),
    ("cm", "mm", "centimetres", "millimetres", 10),
    ("dm", "cm", "decimetres", "centimetres", 10),
    ("kg", "g", "kilograms", "grams", 1000),
    ("g", "mg", "grams", "milligrams", 1000),
    ("L", "mL", "litres", "millilitres", 1000),
)


def _unit_instance(conversion: int, value: int) -> _Instance:
    src, dst, src_name, dst_name, factor = _CONVERSIONS[conversion]
    fields = {
        "value": str(value),
        "src": src,
        "dst": dst,
        "src_name": src_name,
        "dst_name": dst_name,
    }
    key: Key = ("unit_conversion", f"{src}->{dst}", value)
    return _Instance("main", key, fields, str(value * factor))


def _draw_units(rng: random.Random, kind: str) -> _Instance:
    return _unit_instance(rng.randrange(len(_CONVERSIONS)), rng.randint(1, 99))


def _space_units() -> Iterable[Key]:
    for src, dst, *_ in _CONVERSIONS:
        for value in range(1, 100):
            yield ("unit_conversion", f"{src}->{dst}", value)


# --------------------------------------------------------------------------------------------
# gravity


def _draw_gravity(rng: random.Random, kind: str) -> _Instance:
    g, m = rng.randint(2, 9), rng.randint(2, GRAVITY_MASS_MAX)
    return _Instance("main", ("gravity", g, m), {"g": str(g), "m": str(m)}, str(m * g))


def _space_gravity() -> Iterable[Key]:
    return (("gravity", g, m) for g in range(2, 10) for m in range(2, GRAVITY_MASS_MAX + 1))


# --------------------------------------------------------------------------------------------
# equations: "linear" (x + a = b) and "letters" (two letters mapped to digits, their sum)


def _draw_equations(rng: random.Random, kind: str) -> _Instance:
    if kind == "linear":
        a, x = rng.randint(1, 20), rng.randint(0, 20)
        fields = {"a": str(a), "b": str(x + a)}
        return _Instance(kind, ("equations", kind, a, x), fields, str(x))
    l1, l2 = rng.sample(string.ascii_uppercase, 2)
    d1, d2 = rng.randint(1, 9), rng.randint(1, 9)
    fields = {"l1": l1, "d1": str(d1), "l2": l2, "d2": str(d2)}
    return _Instance(kind, ("equations", kind, l1, d1, l2, d2), fields, str(d1 + d2))


def _space_linear() -> Iterable[Key]:
    return (("equations", "linear", a, x) for a in range(1, 21) for x in range(0, 21))


# --------------------------------------------------------------------------------------------
# The family table: content and phrasings.

_FAMILY_TABLE: dict[str, _Family] = {
    "bit_manipulation": _Family(
        name="bit_manipulation",
        kinds=("main",),
        draw=_draw_bits,
        spaces={"main": _space_bits},
        dev={"main": "Q7 bitops task | op={op_code} | input={bits} | give the 6-bit output =>"},
        generic={
            "main": (
                "{Op_phrase}.",
                "Apply {op_noun} to the 6-bit string {bits}.",
                "What do you get if you {op_phrase}?",
                "Compute the {op_noun} of {bits}.",
                "Bits: {bits}. Operation: {op_noun}. Give the new 6-bit string.",
                "Please {op_phrase} and write the 6 bits.",
            )
        },
        external={
            "main": (
                "Start from the bit pattern {bits}. After {op_noun}, which 6-bit pattern results?",
                "The binary string {bits} undergoes {op_noun}. Write the outcome:",
                "Perform {op_noun} on {bits}. The 6 bits become",
                "Consider a register holding bits. If we {op_phrase}, we get",
                "Bit exercise - the {op_noun} of {bits} equals",
                "We {op_phrase}. What 6-bit string comes out? Reply:",
                "Input bits {bits}; operation {op_noun}. Output bits:",
                "Let s = {bits}. Apply {op_noun} to s. New s:",
            )
        },
    ),
    "cipher": _Family(
        name="cipher",
        kinds=("main",),
        draw=_draw_cipher,
        spaces={},
        dev={
            "main": "Q7 cipher task | rule=shift+3 | plain={letters} | give the cipher letters =>"
        },
        generic={
            "main": (
                "Shift each letter of {letters} forward by 3 in the alphabet.",
                "Apply a Caesar cipher with shift 3 to: {letters}.",
                "Encrypt {letters} with a Caesar shift of +3.",
                "Move every letter in {letters} three places later in the alphabet.",
                "Caesar +3 encode the letters {letters}.",
                "Replace each of the letters {letters} by the letter 3 steps after it.",
            )
        },
        external={
            "main": (
                "A secret code moves each letter 3 ahead (a becomes d). Encode {letters}. Code:",
                "Using ROT3, turn {letters} into cipher text:",
                "Plain letters {letters}; key +3. Cipher letters:",
                "Each letter of {letters} is advanced by three. The encoded letters are",
                "Encode with the classic Caesar shift of three: {letters} becomes",
                "Letters: {letters}. Add 3 to every letter's alphabet position. Encoded:",
                "If the Caesar key is 3, what do the letters {letters} turn into? Reply:",
                "Cipher exercise - shift {letters} by +3. Output letters:",
            )
        },
    ),
    "roman_numerals": _Family(
        name="roman_numerals",
        kinds=("main",),
        draw=_draw_roman,
        spaces={"main": _space_roman},
        dev={"main": "Q7 roman task | value={n} | write it as an upper-case Roman numeral =>"},
        generic={
            "main": (
                "Convert the number {n} to Roman numerals.",
                "Write the integer {n} as a Roman numeral.",
                "What is {n} written in Roman numerals?",
                "Express {n} using Roman numerals in upper case.",
                "Give the Roman numeral that stands for {n}.",
                "Turn the whole number {n} into a Roman numeral.",
            )
        },
        external={
            "main": (
                "How would the ancient Romans have written the number {n}? Numeral:",
                "Roman numeral exercise - the value {n} is written as",
                "Take the number {n} and give its Roman form:",
                "In Roman notation, the integer {n} becomes",
                "Encode the integer {n} in the Roman number system. Reply:",
                "Please render {n} as Roman numerals in capitals. Numeral:",
                "The decimal number {n} equals which Roman numeral? It is",
            )
        },
    ),
    "unit_conversion": _Family(
        name="unit_conversion",
        kinds=("main",),
        draw=_draw_units,
        spaces={"main": _space_units},
        dev={"main": "Q7 units task | convert {value} {src} to {dst} | give the integer result =>"},
        generic={
            "main": (
                "Convert {value} {src} to {dst}. Give a whole number.",
                "How many {dst_name} are in {value} {src_name}?",
                "Express {value} {src_name} in {dst_name}.",
                "{value} {src} is how many {dst}? Use the metric prefixes.",
                "Change {value} {src} into {dst}, giving a whole number.",
                "Unit conversion: {value} {src} = ? {dst}",
            )
        },
        external={
            "main": (
                "A quantity of {value} {src_name}, measured in {dst_name}, is",
                "Rewrite {value} {src} using {dst} as the unit. Value:",
                "If something measures {value} {src}, what is that in {dst}? Reply:",
                "{value} {src_name} equals how many {dst_name}? Number:",
                "Turn {value} {src} into {dst}. Amount in {dst}:",
                "Measurement: {value} {src}. Target unit: {dst}. Converted value:",
                "Scale {value} {src_name} to {dst_name}; the count is",
            )
        },
    ),
    "gravity": _Family(
        name="gravity",
        kinds=("main",),
        draw=_draw_gravity,
        spaces={"main": _space_gravity},
        dev={"main": "Q7 gravity task | g={g} m/s^2 | mass={m} kg | give the weight in newtons =>"},
        generic={
            "main": (
                "On a planet with gravity {g} m/s^2, what is the weight in newtons of a {m} kg"
                " object?",
                "A {m} kg mass sits on a world where g = {g} m/s^2. Find its weight in N.",
                "Gravity is {g} m/s^2 and the mass is {m} kg. Compute the weight in newtons.",
                "Find the weight (N) of {m} kg when g = {g} m/s^2.",
                "With g = {g} m/s^2, how many newtons does a {m} kg rock weigh?",
                "Weight = mass x gravity. Mass {m} kg, gravity {g} m/s^2. Weight in N?",
            )
        },
        external={
            "main": (
                "An explorer lands where gravity is {g} m/s^2 and lifts a {m} kg crate. The"
                " crate's weight in newtons:",
                "Surface gravity {g} m/s^2; object mass {m} kg. Force of gravity on it (N):",
                "How hard, in newtons, does a planet with g={g} m/s^2 pull on {m} kg? Reply:",
                "Take m = {m} kg and g = {g} m/s^2. Then W = m*g in newtons equals",
                "A probe of mass {m} kg rests on a moon with {g} m/s^2 gravity. Its weight in N is",
                "Planet gravity: {g} m/s^2. Mass: {m} kg. Newtons of weight:",
                "Weigh a {m} kg block where g is {g} m/s^2. Weight (newtons) =",
            )
        },
    ),
    "equations": _Family(
        name="equations",
        kinds=("linear", "letters"),
        draw=_draw_equations,
        spaces={"linear": _space_linear},
        dev={
            "linear": "Q7 algebra task | solve x + {a} = {b} | give the integer x =>",
            "letters": "Q7 algebra task | let {l1}={d1}, {l2}={d2} | give the sum {l1}+{l2} =>",
        },
        generic={
            "linear": (
                "Solve for x in the equation x + {a} = {b}.",
                "Find the integer x if x + {a} = {b}.",
                "What is x when x + {a} = {b}?",
                "Given x + {a} = {b}, compute x.",
                "x + {a} = {b}. What value of x makes this true?",
                "Determine the unknown x in the equation x + {a} = {b}.",
            ),
            "letters": (
                "Let {l1} = {d1} and {l2} = {d2}. What is {l1} + {l2}?",
                "If {l1} = {d1} and {l2} = {d2}, find {l1} + {l2}.",
                "The letter {l1} stands for {d1} and {l2} stands for {d2}. Compute {l1} + {l2}.",
                "Given {l1} = {d1}, {l2} = {d2}, evaluate {l1} + {l2}.",
                "Each letter is a digit: {l1} is {d1}, {l2} is {d2}. What is {l1} + {l2}?",
                "Suppose {l1} = {d1} and {l2} = {d2}. Work out {l1} + {l2}.",
            ),
        },
        external={
            "linear": (
                "An unknown number x plus {a} gives {b}. The number x is",
                "Equation: x + {a} = {b}. The unknown x equals",
                "Isolate x in x + {a} = {b}. Reply:",
                "Adding {a} to a number x yields {b}. So x =",
                "Which x satisfies x + {a} = {b}? Value:",
                "We know that x + {a} = {b}. Then x must be",
                "Algebra check - x + {a} = {b}; x is",
            ),
            "letters": (
                "In a letter code {l1} means {d1} and {l2} means {d2}. The sum {l1} + {l2} is",
                "Code: {l1}={d1}, {l2}={d2}. Sum of {l1} and {l2}:",
                "Assign {d1} to {l1} and {d2} to {l2}. Add them. Reply:",
                "Digits hidden behind letters: {l1} -> {d1}, {l2} -> {d2}. So {l1} + {l2} =",
                "Using {l1} = {d1} and {l2} = {d2}, the value of {l1} + {l2} is",
                "With {l1} worth {d1} and {l2} worth {d2}, what does {l1} + {l2} total? Value:",
                "Letter sum - {l1} is {d1}, {l2} is {d2}; {l1} + {l2} equals",
            ),
        },
    ),
}


# --------------------------------------------------------------------------------------------
# Buckets


def _unit_hash(key: Key) -> float:
    """A stable number in [0, 1) for a key (hashlib: Python's hash() is salted per process)."""
    digest = hashlib.sha256("|".join(map(str, key)).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


@cache
def _ranked_buckets(family: str, kind: str) -> dict[Key, str]:
    """Bucket of every key of an enumerable space, split by hash rank.

    Ranking (rather than thresholding the hash) fixes the bucket sizes exactly, so even the 39
    Roman numerals give dev and external several keys each.
    """
    keys = sorted(_FAMILY_TABLE[family].spaces[kind](), key=_unit_hash)
    held_out = max(_MIN_HELD_OUT_KEYS, round(len(keys) * _DEV_SHARE))
    buckets = {}
    for rank, key in enumerate(keys):
        if rank < held_out:
            buckets[key] = "dev"
        elif rank < 2 * held_out:
            buckets[key] = "external"
        else:
            buckets[key] = "train"
    return buckets


def _bucket(family: str, kind: str, key: Key) -> str:
    """The bucket (``train``, ``dev`` or ``external``) an instance key belongs to."""
    if kind in _FAMILY_TABLE[family].spaces:
        return _ranked_buckets(family, kind)[key]
    u = _unit_hash(key)
    if u < _TRAIN_SHARE:
        return "train"
    return "dev" if u < _TRAIN_SHARE + _DEV_SHARE else "external"


# --------------------------------------------------------------------------------------------
# Phrasings


def generic_template_count(family: str) -> int:
    """Number of distinct generic phrasings (``"generic:<index>"``) of a family.

    Args:
        family: One of :data:`FAMILIES`.

    Returns:
        How many indices the generic combinator has for this family.

    Raises:
        ValueError: If ``family`` is unknown.
    """
    spec = _family(family)
    instructions = len(spec.generic[spec.kinds[0]])
    return len(_GENERIC_INTROS) * instructions * len(_GENERIC_SEPARATORS) * len(_GENERIC_CUES)


def _generic_shell(spec: _Family, kind: str, index: int) -> str:
    # Mixed radix: the index names one (intro, instruction, separator, cue) combination.
    index, i_cue = divmod(index, len(_GENERIC_CUES))
    index, i_sep = divmod(index, len(_GENERIC_SEPARATORS))
    i_intro, i_instruction = divmod(index, len(spec.generic[kind]))
    intro, sep = _GENERIC_INTROS[i_intro], _GENERIC_SEPARATORS[i_sep]
    head = intro + sep if intro else ""
    return head + spec.generic[kind][i_instruction] + sep + _GENERIC_CUES[i_cue]


def template_shells(family: str, template: str) -> tuple[str, ...]:
    """The phrasing shell(s) of a template: format strings with ``{field}`` placeholders.

    A family with several kinds of instance (``equations``) has one shell per kind, in the order
    of its kinds; the others have one.

    Args:
        family: One of :data:`FAMILIES`.
        template: ``"dev"``, ``"generic:<index>"`` or ``"external:<i>"``.

    Returns:
        One format string per kind of instance.

    Raises:
        ValueError: If ``family`` or ``template`` is unknown.
    """
    spec = _family(family)
    if template == "dev":
        return tuple(spec.dev[kind] for kind in spec.kinds)
    style, _, number = template.partition(":")
    if not number.isdigit():
        raise ValueError(f"unknown template {template!r}")
    index = int(number)
    if style == "generic" and index < generic_template_count(family):
        return tuple(_generic_shell(spec, kind, index) for kind in spec.kinds)
    if style == "external" and index < len(spec.external[spec.kinds[0]]):
        return tuple(spec.external[kind][index] for kind in spec.kinds)
    raise ValueError(f"unknown template {template!r} for family {family!r}")


def _phrase(spec: _Family, split: str, instance: _Instance, rng: random.Random) -> tuple[str, str]:
    """Pick a template for the split and render the instance; returns (prompt, template)."""
    if split in ("dev", "train_template"):
        return spec.dev[instance.kind].format(**instance.fields), "dev"
    if split == "train_generic":
        index = rng.randrange(generic_template_count(spec.name))
        shell, template = _generic_shell(spec, instance.kind, index), f"generic:{index}"
    else:
        index = rng.randrange(len(spec.external[instance.kind]))
        shell, template = spec.external[instance.kind][index], f"external:{index}"
    return shell.format(**instance.fields), template


# --------------------------------------------------------------------------------------------
# Public API


def _family(family: str) -> _Family:
    if family not in _FAMILY_TABLE:
        raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")
    return _FAMILY_TABLE[family]


def _seeded_rng(family: str, split: str, seed: int) -> random.Random:
    digest = hashlib.sha256(f"{family}|{split}|{seed}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def make_split(family: str, split: str, n: int, *, seed: int) -> list[Puzzle]:
    """Generate ``n`` puzzles of one family for one split.

    Args:
        family: One of :data:`FAMILIES`.
        split: One of :data:`SPLITS`.
        n: How many puzzles (0 is allowed).
        seed: Seed; the output is a pure function of ``(family, split, n, seed)``.

    Returns:
        ``n`` puzzles whose instances all lie in the split's bucket. Small instance spaces are
        sampled with replacement, so instances may repeat within a split.

    Raises:
        ValueError: If ``family`` or ``split`` is unknown, or ``n`` is negative.
    """
    spec = _family(family)
    if split not in _SPLIT_BUCKET:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n!r}")
    wanted = _SPLIT_BUCKET[split]
    rng = _seeded_rng(family, split, seed)
    puzzles = []
    for _ in range(n):
        # The kind is chosen before rejection so each kind keeps its share in every split.
        kind = spec.kinds[0] if len(spec.kinds) == 1 else rng.choice(spec.kinds)
        for _ in range(_MAX_DRAWS):
            instance = spec.draw(rng, kind)
            if _bucket(family, kind, instance.key) == wanted:
                break
        else:  # pragma: no cover - every bucket of every kind is non-empty by construction
            raise RuntimeError(f"no {wanted} instance of {family}/{kind} found")
        prompt, template = _phrase(spec, split, instance, rng)
        puzzles.append(Puzzle(family, split, prompt, instance.answer, template))
    return puzzles


def make_all(
    split: str, n: int, *, seed: int, families: Sequence[str] = FAMILIES
) -> dict[str, list[Puzzle]]:
    """Generate ``n`` puzzles per family for one split.

    Args:
        split: One of :data:`SPLITS`.
        n: How many puzzles per family.
        seed: Seed shared by the families (each family still gets its own stream).
        families: Which families, in the order of the returned dict.

    Returns:
        A dict family -> its puzzles.

    Raises:
        ValueError: If a family or the split is unknown, or ``n`` is negative.
    """
    return {family: make_split(family, split, n, seed=seed) for family in families}
