"""Past runs imported into a study before its first round (``searchlab study import``).

Months of runs a team made before searchlab (with leaderboard submissions among them) are data
the models should start from. :func:`read_runs` reads them from a run log
(:mod:`searchlab.runlog`: CSV, JSON lines, parquet), one row per run:

- the recipe: one column per key of the study's space (``mixture.<domain>`` for a mixture),
  each checked against the space as an enqueued recipe is (bounds, choices, a mixture summing
  to 1);
- ``dev.<domain>`` for every domain of the study: a score in [0, 1];
- ``external.<domain>``: every domain's external score, or none (not submitted);
- ``submissions`` (optional): how many external submissions the run used, charged to the
  study's budget; default 1 where external scores are given, else 0. A run submitted with no
  score kept (``submissions`` > 0, no ``external.``) is charged and has no pair;
- ``candidate`` (optional): the run's id in the caller's records, kept with it.

Any other column, a missing one, or a bad cell is one :class:`~searchlab.runlog.LogError` naming
the row and the column, raised before anything is stored. :func:`import_runs` then stores each
run as a COMPLETE candidate of round -1 (before the warm-up), each scored run as a done
submission whose validity-test dev is fixed now (the dev-only GP over every imported recipe, as
for a pair that enters in a round), and one ``candidates_imported`` audit entry.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from searchlab.config import CategoricalParam, IntParam, choice_key
from searchlab.errors import RecipeError
from searchlab.runlog import LogError, is_blank, read_rows, score
from searchlab.store import AuditKind, SubmissionState

if TYPE_CHECKING:
    from searchlab.config import StudyConfig
    from searchlab.engine import Engine
    from searchlab.space import SearchSpace

__all__ = ["ImportedRun", "import_runs", "read_runs"]

IMPORTED_ROUND = -1  # imported runs come before round 0


@dataclass(frozen=True)
class ImportedRun:
    """One past run, checked.

    Attributes:
        row: Its row in the file (1-based).
        recipe: The recipe, checked against the space.
        dev: Per domain, its dev score.
        external: Per domain, its external score; None when it has none.
        submissions: Submissions it is charged.
        label: The ``candidate`` column, if any.
    """

    row: int
    recipe: dict[str, Any]
    dev: dict[str, float]
    external: dict[str, float] | None
    submissions: int
    label: str | None


def read_runs(path: str | Path, config: StudyConfig, space: SearchSpace) -> list[ImportedRun]:
    """Reads and checks every run of the file (see the module docstring).

    Raises:
        LogError: Naming the file, the row and the column; an empty file; runs that charge
            more submissions than the study's budget.
    """
    path = Path(path)
    rows = read_rows(path)
    if not rows:
        raise LogError(f"{path}: no runs in the file")
    domains = config.domain_names
    known = {*space.keys, "submissions", "candidate"}
    known |= {f"dev.{d}" for d in domains} | {f"external.{d}" for d in domains}
    for i, row in enumerate(rows, start=1):  # a CSV header names a column in every row
        unknown = [str(k) for k, v in row.items() if k not in known and not is_blank(v)]
        if unknown:
            raise LogError(f"{path}: unknown column {unknown[0]!r} (row {i})")
    runs = []
    for i, row in enumerate(rows, start=1):
        where = f"{path}: row {i}"
        text = path.suffix.lower() == ".csv"
        recipe = {k: _cell(row.get(k), k, space, text, where) for k in space.keys}
        try:
            recipe = space.check(recipe)
        except RecipeError as exc:
            raise LogError(f"{where}: {exc}") from None
        dev = {d: score(row.get(f"dev.{d}"), f"{where}, dev.{d}", required=True) for d in domains}
        ext = {
            d: score(row.get(f"external.{d}"), f"{where}, external.{d}", required=False)
            for d in domains
        }
        given = [d for d, v in ext.items() if not math.isnan(v)]
        if given and len(given) != len(domains):
            missing = next(d for d in domains if d not in given)
            raise LogError(f"{where}, external.{missing}: missing (give every domain or none)")
        count = _count(row.get("submissions"), f"{where}, submissions", default=int(bool(given)))
        if given and count < 1:
            raise LogError(f"{where}, submissions: {count} with external scores given")
        label = None if is_blank(row.get("candidate")) else str(row.get("candidate"))[:200]
        runs.append(ImportedRun(i, recipe, dev, ext if given else None, count, label))
    charged = sum(r.submissions for r in runs)
    if charged > config.external.total:
        raise LogError(
            f"{path}: the runs charge {charged} submissions, the study's budget is "
            f"{config.external.total} (external.total)"
        )
    return runs


def _cell(value: Any, key: str, space: SearchSpace, text: bool, where: str) -> Any:
    """A recipe cell as its knob's type: CSV cells are text, parsed here."""
    if is_blank(value):
        raise LogError(f"{where}, {key}: missing")
    if not text:
        return value
    param = space.param(key)
    if isinstance(param, CategoricalParam):  # the choice that prints as the cell does
        same = [c for c in param.choices if choice_key(c) == choice_key(value)]
        return same[0] if same else value
    try:
        number = float(value)
    except (ValueError, OverflowError):
        raise LogError(f"{where}, {key}: not a number ({str(value)[:40]!r})") from None
    return int(number) if isinstance(param, IntParam) and number.is_integer() else number


def _count(value: Any, where: str, *, default: int) -> int:
    if is_blank(value):
        return default
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        raise LogError(f"{where}: not a number ({str(value)[:40]!r})") from None
    if isinstance(value, bool) or not number.is_integer() or number < 0:
        raise LogError(f"{where}: {value!r} is not a whole number of at least 0")
    return int(number)


def import_runs(engine: Engine, runs: list[ImportedRun], *, source: str) -> list[int]:
    """Stores the runs in the engine's study (before its first round); returns their numbers.

    Raises:
        LogError: If the study's first round was proposed already (import warm-starts a study;
            it does not rewrite one that ran).
    """
    record = engine.record
    if record.round_state(0) is not None or record.finished or record.candidates():
        raise LogError(
            f"study {record.name!r} has candidates already: runs are imported once, into a "
            "study that has none (study init, then study import)"
        )
    distributions = engine.space.distributions()
    numbers = [
        record.add_complete(
            run.recipe,
            distributions=distributions,
            dev=run.dev,
            dev_n={d: None for d in run.dev},
            domains=engine.domains,
            round=IMPORTED_ROUND,
            proposal={"method": "imported", "source": source, "row": run.row, "label": run.label},
        )
        for run in runs
    ]
    charged = [(n, r) for n, r in zip(numbers, runs, strict=True) if r.submissions > 0]
    if charged:
        models = engine._fit()
        test_dev = engine._test_dev(models)
        for index, (number, run) in enumerate(charged):
            row = models.numbers.index(number)
            entry: dict[str, Any] = {
                "round": IMPORTED_ROUND,
                "submission": index,
                "reason": "imported",
                "charge": run.submissions,
                "test_dev": {
                    d: float(t[row]) for d, t in zip(engine.domains, test_dev, strict=True)
                },
            }
            if run.external is None:
                entry |= {"state": SubmissionState.FAILED, "error": "imported: no score kept"}
            else:
                entry |= {"state": SubmissionState.DONE, "scores": run.external}
            record.put_submission(number, entry)
    record.audit(
        AuditKind.CANDIDATES_IMPORTED,
        round=None,
        source=source,
        candidates=numbers,
        paired=[n for n, r in charged if r.external is not None],
        charged=sum(r.submissions for r in runs),
    )
    return numbers
