"""Per-domain accuracy of completions, graded by the challenge's rules, with the samples kept.

Generation (transformers here, or vLLM in its own process) returns one completion per item; this
module grades them with :mod:`searchlab_evaluation.grader` and keeps every sample (prompt,
reference, completion, extracted answer, verdict), so an accuracy can be re-computed
independently from what was saved.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from searchlab_evaluation.grader import extract_answer, is_correct


@dataclass(frozen=True)
class Item:
    """One evaluation item: a prompt and its reference answer."""

    domain: str
    prompt: str
    answer: str


def items_hash(items: Sequence[Item]) -> str:
    """A content hash of the items, for cache keys."""
    import hashlib
    import json

    blob = json.dumps([[i.domain, i.prompt, i.answer] for i in items])
    return hashlib.sha256(blob.encode()).hexdigest()


def grade_samples(items: Sequence[Item], completions: Sequence[str]) -> list[dict[str, object]]:
    """One sample record per item, in order."""
    if len(items) != len(completions):
        raise ValueError(f"{len(items)} items but {len(completions)} completions")
    samples = []
    for item, text in zip(items, completions, strict=True):
        extracted = extract_answer(text)
        samples.append(
            {
                "domain": item.domain,
                "prompt": item.prompt,
                "answer": item.answer,
                "completion": text,
                "extracted": extracted,
                "correct": is_correct(extracted, item.answer),
            }
        )
    return samples


def per_domain_accuracy(
    samples: Sequence[Mapping[str, object]], *, domains: Sequence[str] | None = None
) -> dict[str, tuple[float, int]]:
    """``(accuracy, n)`` per domain of graded samples.

    Args:
        samples: Records from :func:`grade_samples` (or a subset of them).
        domains: Report these domains (in this order); all present when None.

    Raises:
        ValueError: When a requested domain has no samples.
    """
    counts: dict[str, list[int]] = {}
    for s in samples:
        c = counts.setdefault(str(s["domain"]), [0, 0])
        c[0] += bool(s["correct"])
        c[1] += 1
    wanted = list(domains) if domains is not None else list(counts)
    missing = [d for d in wanted if d not in counts]
    if missing:
        raise ValueError(f"no evaluation samples for domain(s) {missing}")
    return {d: (counts[d][0] / counts[d][1], counts[d][1]) for d in wanted}
