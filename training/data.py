"""Training data of one recipe: exact per-domain mixture counts and a template-share knob.

A recipe's mixture weights are honoured exactly: ``datasets.interleave_datasets`` does not
reproduce them (0.5/0.3/0.2 over sizes 100/50/30 gave 48/30/30, docs/FACTS.md), so the count of each
domain is fixed first by largest remainders and then drawn. Within a domain the knob
``template_share`` decides how many examples are phrased like the dev split: that raises dev
without necessarily raising external, which is the proxy trap the benchmark shows.

Two sources:

- **puzzles** (the default): the generators of :mod:`searchlab_evaluation.puzzles`;
- **files**: a JSON-lines (or CSV/Parquet) file per domain with columns ``prompt`` and
  ``completion``, optionally a boolean ``template`` column that the knob draws on and an
  ``answer`` column (GRPO's reference, when completions hold reasoning). A file
  whose columns are missing is an error naming the file and the columns.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from searchlab.errors import BackendError
from searchlab_evaluation.puzzles import make_split


@dataclass(frozen=True)
class Example:
    """One supervised example.

    ``answer`` is the reference answer GRPO rewards against: the puzzle's answer, a file's
    ``answer`` column, or else the completion itself.
    """

    domain: str
    prompt: str
    completion: str
    template: bool
    answer: str


def mixture_counts(weights: Mapping[str, float], total: int) -> dict[str, int]:
    """Splits ``total`` examples over domains in proportion to ``weights``, exactly.

    Largest remainders: every count is the floor of its share or one more, and they sum to
    ``total``. Ties go to the domain listed first.

    Raises:
        BackendError: For negative or non-finite weights, or weights summing to zero.
    """
    bad = {d: w for d, w in weights.items() if not (w >= 0 and w < float("inf"))}
    if bad:
        raise BackendError(f"mixture weights must be finite and >= 0, got {bad}")
    mass = sum(weights.values())
    if mass <= 0:
        raise BackendError(f"mixture weights sum to {mass}: at least one must be positive")
    exact = {d: total * w / mass for d, w in weights.items()}
    counts = {d: int(x) for d, x in exact.items()}
    order = sorted(weights, key=lambda d: -(exact[d] - counts[d]))
    for d in order[: total - sum(counts.values())]:
        counts[d] += 1
    return counts


class PuzzleSource:
    """Training examples drawn from the procedural puzzles."""

    def draw(self, domain: str, n_generic: int, n_template: int, *, seed: int) -> list[Example]:
        generic = make_split(domain, "train_generic", n_generic, seed=seed)
        template = make_split(domain, "train_template", n_template, seed=seed)
        return [
            Example(domain, p.prompt, " " + p.answer, p.split == "train_template", p.answer)
            for p in (*generic, *template)
        ]


REQUIRED_COLUMNS = ("prompt", "completion")


class FileSource:
    """Training examples read from one file per domain.

    Args:
        files: Domain to file path (``.jsonl``/``.json``, ``.csv`` or ``.parquet``).
    """

    def __init__(self, files: Mapping[str, str | Path]) -> None:
        self._rows: dict[str, list[dict[str, Any]]] = {}
        for domain, path in files.items():
            self._rows[domain] = read_rows(Path(path), REQUIRED_COLUMNS, what=f"train[{domain}]")

    def draw(self, domain: str, n_generic: int, n_template: int, *, seed: int) -> list[Example]:
        if domain not in self._rows:
            raise BackendError(f"no training file for domain {domain!r}")
        rows = self._rows[domain]
        template = [r for r in rows if bool(r.get("template", False))]
        generic = [r for r in rows if not bool(r.get("template", False))]
        if n_template and not template:
            raise BackendError(
                f"train[{domain}]: the recipe asks for template examples but the file has no rows "
                "with template = true"
            )
        rng = random.Random(f"{domain}|{seed}")
        chosen = [rng.choice(generic or template) for _ in range(n_generic)]
        chosen += [rng.choice(template) for _ in range(n_template)]
        return [
            Example(
                domain,
                str(r["prompt"]),
                str(r["completion"]),
                bool(r.get("template", False)),
                str(r.get("answer") or r["completion"]).strip(),
            )
            for r in chosen
        ]


def read_rows(path: Path, columns: Sequence[str], *, what: str) -> list[dict[str, Any]]:
    """Reads a data file with ``datasets`` and checks its columns, naming the file on error."""
    if not path.is_file():
        raise BackendError(f"{what}: data file {str(path)!r} does not exist")
    kind = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}.get(
        path.suffix.lower()
    )
    if kind is None:
        raise BackendError(f"{what}: {str(path)!r}: expected .jsonl, .json, .csv or .parquet")
    import datasets

    try:
        table = datasets.load_dataset(kind, data_files=str(path), split="train")
    except Exception as exc:
        raise BackendError(
            f"{what}: cannot read {str(path)!r}: {type(exc).__name__}: {exc}"
        ) from None
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise BackendError(
            f"{what}: {str(path)!r} lacks column(s) {missing} (it has {table.column_names})"
        )
    if len(table) == 0:
        raise BackendError(f"{what}: {str(path)!r} has no rows")
    return list(table)


def build_examples(
    source: PuzzleSource | FileSource,
    weights: Mapping[str, float],
    template_share: Mapping[str, float],
    total: int,
    *,
    seed: int,
) -> tuple[list[Example], str]:
    """The shuffled training examples of one recipe, and their content hash.

    Args:
        source: Where examples come from.
        weights: Mixture weight per domain.
        template_share: Share of each domain's examples phrased like dev (0 where absent).
        total: Number of examples.
        seed: The candidate's training seed.

    Returns:
        The examples and a SHA-256 of them (the artefact records it, so a result can be traced
        to its exact data).
    """
    examples: list[Example] = []
    for domain, count in mixture_counts(weights, total).items():
        share = float(template_share.get(domain, 0.0))
        if not 0.0 <= share <= 1.0:
            raise BackendError(f"template_share for {domain!r} is {share}, outside [0, 1]")
        n_template = round(count * share)
        examples += source.draw(domain, count - n_template, n_template, seed=seed)
    random.Random(seed).shuffle(examples)
    digest = hashlib.sha256()
    for e in examples:
        digest.update(json.dumps([e.domain, e.prompt, e.completion]).encode())
    return examples, digest.hexdigest()
