"""Run logs from outside searchlab: rows of a CSV, JSON-lines or parquet file.

Shared by ``searchlab monitor`` (per-domain scores only) and ``study import`` (recipes, scores
and submission counts). One row is one candidate, in the order the rows appear. Columns:
``dev.<domain>`` (required, a score in [0, 1]), ``external.<domain>`` (empty or absent where not
measured) and, for an import, the recipe's keys and ``submissions``. Every problem is a
:class:`LogError` naming the file, the row (1-based, the header not counted) and the column.
CSV cells are text: a number is parsed where the column needs one.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

from searchlab.errors import SearchlabError

__all__ = ["FORMATS", "LogError", "read_rows", "score"]

FORMATS = (".csv", ".jsonl", ".ndjson", ".parquet")


class LogError(SearchlabError):
    """A run log that cannot be read: no such file, an unknown format, a bad cell."""


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """The rows of ``path`` (``.csv``, ``.jsonl`` / ``.ndjson``, or ``.parquet`` with the
    ``parquet`` extra), each a mapping from column to cell (a blank CSV cell is ``""``, a
    missing parquet value None).

    Raises:
        LogError: No such file, an unreadable one, an unknown format, a line that is not a JSON
            object.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise LogError(f"{path}: unknown format {suffix or '(none)'!r}: use {', '.join(FORMATS)}")
    if not path.is_file():
        raise LogError(f"{path}: no such file")
    if suffix == ".parquet":
        return _parquet_rows(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise LogError(f"{path}: cannot be read: {exc}") from None
    if suffix == ".csv":
        return list(csv.DictReader(text.splitlines()))
    rows = []
    for i, line in enumerate(text.splitlines()):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise LogError(f"{path}: line {i + 1}: not JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise LogError(f"{path}: line {i + 1}: expected a JSON object")
        rows.append(row)
    return rows


def _parquet_rows(path: Path) -> list[dict[str, Any]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise LogError(
            f"{path}: reading parquet needs pyarrow: pip install 'searchlab[parquet]'"
        ) from None
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow's errors have no common base worth naming
        raise LogError(f"{path}: not a parquet file pyarrow reads ({exc})") from None
    rows = table.to_pylist()
    for row in rows:  # NaN where a value is missing, as pandas writes it: "not measured"
        for k, v in row.items():
            if isinstance(v, float) and math.isnan(v):
                row[k] = None
    return rows


def is_blank(value: Any) -> bool:
    """Whether a cell is empty: absent, None, or blank text."""
    return value is None or (isinstance(value, str) and not value.strip())


def score(value: Any, where: str, *, required: bool) -> float:
    """A cell as a score in [0, 1]; NaN for a blank cell that is not required.

    Raises:
        LogError: ``where: missing``, ``not a number``, or ``not a score in [0, 1]`` (NaN too).
    """
    if is_blank(value):
        if required:
            raise LogError(f"{where}: missing")
        return math.nan
    if isinstance(value, bool):
        raise LogError(f"{where}: not a number ({value!r})")
    try:
        x = float(value)
    except (TypeError, ValueError, OverflowError):
        raise LogError(f"{where}: not a number ({str(value)[:40]!r})") from None
    if not 0.0 <= x <= 1.0:  # NaN fails this too
        raise LogError(f"{where}: {x!r} is not a score in [0, 1]")
    return x
