"""One stored study, read once: what status, tables, export, reports and the dashboard show.

:func:`read` builds a :class:`StudyView` from a :class:`~searchlab.store.StudyRecord`: the
validated config and the validity test's settings (one mapping, :func:`stored_config` and
``StudyConfig.detector_settings``), the candidates, the submissions in submission order, the
audit log, the rounds, the modes and the recommendation. Everything derived from them (the pair
index of a candidate, the mode switches, the alarms, the status object, the tidy tables) is
computed here and nowhere else, so two views of one study cannot disagree.

Only reads storage: nothing here writes to a study.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np

from searchlab.config import StudyConfig, stored_config
from searchlab.store import (
    AuditKind,
    Candidate,
    CandidateState,
    Mode,
    Phase,
    StudyRecord,
    SubmissionState,
    charged,
)

if TYPE_CHECKING:
    import pandas as pd

    from searchlab.validity import DetectorSettings

__all__ = ["StudyView", "alarms", "finite", "read", "status"]


def finite(value: Any) -> Any:
    """``value`` with every non-finite float (also NumPy's) replaced by None, recursively: the
    JSON outputs have no NaN."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    if isinstance(value, np.generic):
        return finite(value.item())
    return value


def alarms(log: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every switch to decoupled mode in an audit log: which domain, after which submission."""
    return [
        {"domain": e["domain"], "candidate": e["candidate"], "round": e["round"]}
        for e in log
        if e["kind"] == AuditKind.MODE_SWITCH and e.get("to_mode") == Mode.DECOUPLED
    ]


@dataclass(frozen=True)
class StudyView:
    """A stored study as read at one moment (see the module docstring).

    Attributes:
        name: The study.
        config: Its validated config.
        candidates: Every candidate, in proposal order.
        submissions: Every external submission (any state) in submission order, each with its
            ``candidate``.
        log: The audit log, in order.
        rounds: The stored round states, in round order.
        modes: Each domain's current mode.
        recommendation: The latest stored recommendation (empty before the first round ended).
        finished: Whether the study ran to its end.
        warmup_dev: Per domain, the warm-up dev the knots were fixed from (None before).
    """

    name: str
    config: StudyConfig
    candidates: list[Candidate]
    submissions: list[dict[str, Any]]
    log: list[dict[str, Any]]
    rounds: list[dict[str, Any]]
    modes: dict[str, Mode]
    recommendation: dict[str, Any]
    finished: bool
    warmup_dev: dict[str, list[float]] | None

    # -- the config ----------------------------------------------------------------------------

    @property
    def domains(self) -> list[str]:
        return self.config.domain_names

    @property
    def weights(self) -> dict[str, float]:
        return self.config.weights

    @cached_property
    def settings(self) -> DetectorSettings:
        """The validity test's settings the study runs with."""
        return self.config.detector_settings()

    @property
    def rounds_total(self) -> int:
        return self.config.rounds.count

    @property
    def rounds_done(self) -> int:
        return sum(1 for s in self.rounds if s.get("phase") == Phase.DONE)

    @property
    def budget_used(self) -> int:
        """Submissions charged to the budget (imported runs' counts included)."""
        return charged(self.submissions)

    @property
    def budget_total(self) -> int:
        return self.config.external.total

    @property
    def alpha(self) -> float:
        return self.config.policy.alpha

    # -- pairs and decisions -------------------------------------------------------------------

    @cached_property
    def complete(self) -> dict[int, Candidate]:
        """Completed candidates by number."""
        return {c.number: c for c in self.candidates if c.state == CandidateState.COMPLETE}

    @cached_property
    def pairs(self) -> list[dict[str, Any]]:
        """The answered submissions of completed candidates, in submission order: the
        (dev, external) pairs the validity test received."""
        return [
            s
            for s in self.submissions
            if s.get("state") == SubmissionState.DONE and s["candidate"] in self.complete
        ]

    @cached_property
    def pair_order(self) -> list[int]:
        """The candidates of :attr:`pairs`, in order."""
        return [s["candidate"] for s in self.pairs]

    def pair(self, candidate: Any) -> int | None:
        """The 1-based index of ``candidate``'s pair (None if it has none)."""
        try:
            return self._pair_index[candidate] + 1
        except (KeyError, TypeError):
            return None

    @cached_property
    def _pair_index(self) -> dict[int, int]:
        return {n: i for i, n in enumerate(self.pair_order)}

    @cached_property
    def events(self) -> list[dict[str, Any]]:
        """Mode switches, and alarms ``policy.switch: false`` ignored, in audit order: ``domain``,
        ``candidate``, ``pair``, ``round``, ``to_mode``, ``statistic``, ``threshold``,
        ``ignored``."""
        out = []
        for e in self.log:
            kind = e.get("kind")
            if kind not in (AuditKind.MODE_SWITCH, AuditKind.ALARM_IGNORED):
                continue
            evidence = e.get("evidence") or {}
            out.append(
                {
                    "domain": e.get("domain"),
                    "candidate": e.get("candidate"),
                    "pair": self.pair(e.get("candidate")),
                    "round": e.get("round"),
                    # An ignored alarm would have switched the domain to decoupled.
                    "to_mode": e.get("to_mode", Mode.DECOUPLED),
                    "statistic": evidence.get("statistic"),
                    "threshold": evidence.get("threshold"),
                    "ignored": kind == AuditKind.ALARM_IGNORED,
                }
            )
        return out

    def events_by_domain(self) -> dict[str, list[dict[str, Any]]]:
        """:attr:`events` grouped by domain (only domains that have one)."""
        out: dict[str, list[dict[str, Any]]] = {}
        for e in self.events:
            out.setdefault(e["domain"], []).append(e)
        return out

    @property
    def switches(self) -> list[dict[str, Any]]:
        """The mode switches the study made (:attr:`events` less ignored alarms)."""
        return [e for e in self.events if not e["ignored"]]

    def last_check(self) -> dict[str, dict[str, Any]]:
        """Per domain, the evidence of the latest validity check (empty before the first)."""
        return next(
            (e["domains"] for e in reversed(self.log) if e["kind"] == AuditKind.VALIDITY_CHECK),
            {},
        )

    # -- outputs -------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """The study's state as one JSON-safe object (the ``status --json`` contract)."""
        last_check = self.last_check()
        domains: dict[str, Any] = {}
        for d in self.domains:
            check = last_check.get(d, {})
            domains[d] = {
                "mode": self.modes[d],
                "statistic": check.get("statistic"),
                "threshold": check.get("threshold", self.settings.threshold),
                "pairs": check.get("n_pairs", 0),
                # The evidence of the last check: rates above (with its pointwise interval) and
                # below the dominant knot, their ratio against kappa (absent in older studies).
                "rate_above": check.get("slope_high"),
                "rate_above_ci95": check.get("slope_high_ci95"),
                "rate_below": check.get("slope_low"),
                "rate_ratio": check.get("rate_ratio"),
                "tracking": check.get("tracking"),
                "knot": check.get("knot"),
            }
        used = self.budget_used
        out: dict[str, Any] = {
            "name": self.name,
            "finished": self.finished,
            "rounds_done": self.rounds_done,
            "rounds_total": self.rounds_total,
            "candidates": len(self.complete),
            "failed_candidates": sum(1 for c in self.candidates if c.state == CandidateState.FAIL),
            "external_budget": {
                "used": used,
                "left": self.budget_total - used,
                "total": self.budget_total,
            },
            "domains": domains,
            "alarms": alarms(self.log),
            "recommendation": self.recommendation.get("recommendation"),
            "best_dev_candidate": self.recommendation.get("best_dev_candidate"),
            "objective": {
                "type": str(self.config.objective.type),
                "floors": self.floors,
                "front": self.front,
            },
        }
        return finite(out)

    @property
    def floors(self) -> list[dict[str, Any]]:
        """The floors with the thresholds of the latest recommendation (searchlab.objective)."""
        return list(self.recommendation.get("floors", []))

    @property
    def front(self) -> list[dict[str, Any]]:
        """A Pareto study's front at the latest recommendation: per member, ``candidate``,
        ``modelled_external`` per domain, ``meets_floors`` (and ``true_external`` where the back
        end knows the truth). Empty in a weighted study."""
        return list(self.recommendation.get("front", []))

    @cached_property
    def tables(self) -> dict[str, pd.DataFrame]:
        """The study as tidy tables (pandas DataFrames).

        ``candidates``: one row per candidate (trial): ``number``, ``round``, ``state``,
        ``error``, ``proposal_method``, ``recipe.<param>``, ``dev.<domain>`` (COMPLETE only),
        ``mean_dev`` (weighted by the objective weights), ``submission`` (its index when it was
        submitted), ``external_state``, ``external.<domain>`` (where measured) and
        ``mode.<domain>`` (the domain's mode when the candidate was proposed).
        ``decisions``: the audit log, one row per decision, nested fields flattened to dotted
        columns (``evidence.statistic``), lists as JSON text.
        ``submissions``: one row per external submission: ``submission``, ``candidate``,
        ``round``, ``state``, ``reason``, ``error`` and ``external.<domain>``.
        ``checks``: one row per domain at each validity check: ``seq`` (of the audit record),
        ``round``, ``candidate`` (whose external score triggered it), ``pair`` (pairs so far),
        ``domain``, ``mode`` (after the check), ``statistic``, ``threshold``, ``fired``,
        ``n_pairs`` (pairs the test used), ``slope_high``, ``slope_low``, ``knot``.
        ``pareto``: one row per member of a Pareto study's front (:attr:`front`): ``candidate``,
        ``recommended``, ``meets_floors``, ``on_front``, ``modelled_external.<domain>`` and,
        where known, ``true_external.<domain>``; no rows in a weighted study.
        """
        out = {
            "candidates": _frame(self._candidate_rows(), ["number", "round", "state"]),
            "decisions": self._decisions(),
            "submissions": _frame(
                [self._submission_row(s) for s in self.submissions],
                ["submission", "candidate", "round", "state"],
            ),
            "checks": _frame(
                self._check_rows(),
                ["seq", "round", "candidate", "pair", "domain", "mode", "statistic"],
            ),
            "pareto": _frame(
                [self._front_row(m) for m in self.front],
                ["candidate", "recommended", "meets_floors"],
            ),
        }
        # Integer columns with gaps stay integers (nullable), not floats: 3, not 3.0.
        return {k: v.convert_dtypes() for k, v in out.items()}

    def _front_row(self, member: dict[str, Any]) -> dict[str, Any]:
        rec = self.recommendation.get("recommendation") or {}
        row = {
            "candidate": member["candidate"],
            "recommended": member["candidate"] == rec.get("candidate"),
            "meets_floors": member.get("meets_floors", True),
            "on_front": member.get("on_front", True),
        }
        for key in ("modelled_external", "true_external"):
            for d, v in (member.get(key) or {}).items():
                row[f"{key}.{d}"] = v
        return row

    def _external_cells(self, scores: dict[str, Any] | None) -> dict[str, float]:
        scores = scores or {}
        return {
            f"external.{d}": math.nan if scores.get(d) is None else float(scores[d])
            for d in self.domains
        }

    def _candidate_rows(self) -> list[dict[str, Any]]:
        by_candidate = {s["candidate"]: s for s in self.submissions}
        weights = self.weights
        rows = []
        for c in self.candidates:
            row: dict[str, Any] = {
                "number": c.number,
                "round": c.round,
                "state": str(c.state),
                "error": c.error,
                "proposal_method": c.proposal.get("method"),
            }
            row.update({f"recipe.{k}": _cell(v) for k, v in c.recipe.items()})
            for d in self.domains:
                row[f"dev.{d}"] = c.dev.get(d, math.nan)
            row["mean_dev"] = (
                sum(weights[d] * c.dev[d] for d in self.domains) if c.dev else math.nan
            )
            sub = by_candidate.get(c.number, {})
            row["submission"] = sub.get("submission")
            row["external_state"] = sub.get("state")
            row.update(self._external_cells(sub.get("scores")))
            modes = c.proposal.get("modes") or {}
            for d in self.domains:
                row[f"mode.{d}"] = modes.get(d)
            rows.append(row)
        return rows

    def _decisions(self) -> pd.DataFrame:
        import pandas as pd

        decisions = pd.DataFrame([_flatten(e) for e in self.log])
        if decisions.empty:
            return pd.DataFrame(columns=["seq", "kind", "round"])
        first = [c for c in ("seq", "kind", "round", "candidate", "domain") if c in decisions]
        return decisions[first + [c for c in decisions.columns if c not in first]]

    def _submission_row(self, s: dict[str, Any]) -> dict[str, Any]:
        return {
            "submission": s.get("submission"),
            "candidate": s["candidate"],
            "round": s.get("round"),
            "state": s.get("state"),
            "reason": s.get("reason"),
            "error": s.get("error"),
            **self._external_cells(s.get("scores")),
        }

    def _check_rows(self) -> list[dict[str, Any]]:
        rows = []
        pair = 0
        for e in self.log:
            if e.get("kind") != AuditKind.VALIDITY_CHECK:
                continue
            cand = e.get("candidate")
            pair = self.pair(cand) or pair + 1
            for d, v in (e.get("domains") or {}).items():
                rows.append(
                    {
                        "seq": e.get("seq"),
                        "round": e.get("round"),
                        "candidate": cand,
                        "pair": pair,
                        "domain": d,
                        **{
                            key: v.get(key)
                            for key in (
                                "mode",
                                "statistic",
                                "threshold",
                                "fired",
                                "n_pairs",
                                "slope_high",
                                "slope_low",
                                "knot",
                            )
                        },
                    }
                )
        return rows


def read(record: StudyRecord) -> StudyView:
    """Reads a stored study once (a fresh read of its attributes)."""
    record.refresh()
    config = stored_config(record.config_data)
    subs = [{"candidate": n, **v} for n, v in record.submissions().items()]
    subs.sort(key=lambda s: (s.get("submission", math.inf), s["candidate"]))
    return StudyView(
        name=record.name,
        config=config,
        candidates=record.candidates(),
        submissions=subs,
        log=record.audit_log(),
        rounds=record.round_states(),
        modes={d: record.mode(d) for d in config.domain_names},
        recommendation=record.recommendation,
        finished=record.finished,
        warmup_dev=record.warmup_dev,
    )


def status(record: StudyRecord) -> dict[str, Any]:
    """:meth:`StudyView.status` of a stored study."""
    return read(record).status()


def _frame(rows: list[dict[str, Any]], empty_columns: list[str]) -> pd.DataFrame:
    import pandas as pd

    return pd.DataFrame(rows) if rows else pd.DataFrame(columns=empty_columns)


def _cell(value: Any) -> Any:
    """A value fit for a flat table cell: scalars stay, lists and dicts become JSON text."""
    if isinstance(value, list | tuple | dict):
        return json.dumps(value, default=str)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _flatten(entry: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts become dotted columns; lists become JSON text."""
    out: dict[str, Any] = {}
    for key, value in entry.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(_flatten(value, f"{name}."))
        else:
            out[name] = _cell(value)
    return out
