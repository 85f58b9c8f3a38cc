"""Helpers of the lm-eval task ``searchlab_dev`` (imports nothing from searchlab).

The scoring rule is the one of ``benchmarks/eval_check.py``'s computation A: the first line of
the stripped completion, stripped, equal to the reference answer.
"""

from __future__ import annotations

import json
import os
from typing import Any


def load_dev(**_: Any) -> dict[str, Any]:
    """The dev items of ``$SEARCHLAB_LMEVAL_DATA`` (JSONL: domain, prompt, answer) as ``test``."""
    import datasets

    path = os.environ.get("SEARCHLAB_LMEVAL_DATA")
    if not path:
        raise RuntimeError("SEARCHLAB_LMEVAL_DATA must name the JSONL file of dev items")
    with open(path, encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    return {"test": datasets.Dataset.from_list(rows)}


def doc_to_text(doc: dict[str, Any]) -> str:
    """The prompt exactly as the evaluator passes it."""
    return doc["prompt"]


def doc_to_target(doc: dict[str, Any]) -> str:
    return doc["answer"]


def first_line_match(completion: str, answer: str) -> bool:
    """The first line of the stripped completion, stripped, equals the stripped answer."""
    stripped = completion.strip()
    first = stripped.splitlines()[0].strip() if stripped else ""
    return first == answer.strip()


def process_results(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    return {"exact_match": float(first_line_match(results[0], doc["answer"]))}
