"""Bring your own loop: drive a stored study from Python, candidate by candidate.

``study create`` owns the loop: it proposes, trains through a back end, submits and decides. A
team with a loop of its own (an agent that edits recipes, a cluster launcher, a notebook) drives
the same study through :class:`Study` instead, and trains and submits itself::

    study = Study.create("studies/goodhart-sim.yaml", storage="sqlite:///mine.db")
    while not study.finished:
        for c in study.ask(4):                       # searchlab's proposals (and enqueued ones)
            study.tell(c.number, dev=train_and_score(c.recipe))
        for s in study.plan_submissions().submissions:  # where the external budget goes now
            study.tell_external(s.number, external=submit(s.number))

Every step is the engine's own (:class:`searchlab.engine.Engine`): the same proposals, the same
submission policy, the same validity test and mode switches, the same audit entries and round
records, so ``status``, ``report``, ``resume`` and the dashboard read a driven study like any
other. What differs is who trains and who submits:

- ``ask(n)`` hands out up to ``n`` waiting candidates of the open round (proposing the round
  when it has none yet). A round holds ``rounds.candidates`` candidates; the next round is
  proposed once this one's candidates are told and its planned submissions answered, because
  the acquisition conditions on them. ``ask`` returns fewer (or none) while the round waits;
  :meth:`Study.next_step` says for what.
- ``tell(number, dev=...)`` stores a candidate's per-domain dev scores (checked as a back end's
  are: every domain, finite, within [0, 1]); ``tell_failed`` stores why it could not be trained.
- ``plan_submissions()`` runs the submission policy once the round's candidates are all told:
  the chosen candidates are stored as ``planned`` and counted against the budget at once, so two
  drivers never spend it twice. ``tell_external(number, external=...)`` answers one; a candidate
  that was not planned may be told too, while budget is left (recorded as the caller's choice).
- ``enqueue(recipe, source=...)`` adds a candidate from outside (an agent's idea, a baseline),
  checked against the space and audited with its source; it takes a slot of the round being
  filled, and searchlab proposes the rest around it.

Several processes may drive one study (on PostgreSQL, say): each call holds the study lease
(:class:`searchlab.store.StudyLease`) for its duration and reads the stored state afresh, so
calls are serialised, a candidate is handed to one caller only, and a submission is planned and
answered once. A call waits up to ``wait_s`` seconds for another call (or ``study resume``) to
release the lease, then fails naming the holder.

A limit, stated: a candidate handed out and never told keeps its round open. Tell it failed
(``tell_failed``), or let ``study resume`` finish the study with the back end (it re-proposes
such candidates and sends planned submissions itself).
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from searchlab.errors import CandidateFinishedError, SearchlabError, StudyHeldError
from searchlab.store import (
    AuditKind,
    Candidate,
    CandidateState,
    Phase,
    SubmissionState,
)

if TYPE_CHECKING:
    from searchlab.backends import Backend
    from searchlab.config import StudyConfig
    from searchlab.engine import Engine
    from searchlab.store import StudyLease, StudyRecord

__all__ = ["Asked", "LoopError", "Plan", "PlannedSubmission", "Study"]

SEARCHLAB = "searchlab"  # the source of the engine's own proposals


class LoopError(SearchlabError):
    """A call the study's state refuses: an unknown candidate, a score told twice, bad scores."""


@dataclass(frozen=True)
class Asked:
    """A candidate handed to the caller to train.

    Attributes:
        number: The candidate (its Optuna trial number).
        round: Its round.
        recipe: The recipe to train.
        source: ``searchlab`` for the engine's proposals, else the source it was enqueued with.
    """

    number: int
    round: int
    recipe: dict[str, Any]
    source: str


@dataclass(frozen=True)
class PlannedSubmission:
    """A candidate the submission policy spends one external submission on.

    Attributes:
        number: The candidate.
        round: The round that planned it.
        submission: Its index in the study's budget (0-based).
        reason: The policy's reason (``warm-up spread``, ``dev-record probe``, ...).
        policy_score: The score it was ranked by (None for a caller's own choice).
        recipe: Its recipe.
        artefact: What was told with its dev scores (``recipe``, ``candidate`` and the
            caller's ``artefact``), so any driver can submit it.
    """

    number: int
    round: int
    submission: int
    reason: str
    policy_score: float | None
    recipe: dict[str, Any]
    artefact: dict[str, Any]


@dataclass(frozen=True)
class Plan:
    """What the open round needs from the caller's submissions.

    Attributes:
        round: The open round (None once the study is finished).
        submissions: The planned submissions not yet answered, in budget order.
        waiting_for: Candidates of the round not yet told (planning waits for them).
        budget_left: External submissions left after the planned ones.
    """

    round: int | None
    submissions: list[PlannedSubmission]
    waiting_for: list[int]
    budget_left: int


class Study:
    """A stored study driven by the caller's loop (see the module docstring).

    Args:
        record: The stored study.
        config: Its configuration (:func:`searchlab.config.stored_config`).
        wait_s: How long a call waits for the study lease held by another call or process.
        publish: Publish the dashboard's figures at the end of each round, as ``study create``
            does.
        backend: The study's back end, for what only it knows: a simulation's truth (true
            external and regret in the recommendation). The loop trains and submits itself:
            no method of the back end that trains or submits is called.
    """

    def __init__(
        self,
        record: StudyRecord,
        config: StudyConfig,
        *,
        wait_s: float = 120.0,
        publish: bool = True,
        backend: Backend | None = None,
    ) -> None:
        self.record = record
        self.config = config
        self.wait_s = wait_s
        self._publish = publish
        self._backend = backend
        self._lease: StudyLease | None = None
        self._engine_obj: Engine | None = None

    # -- opening --------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        source: str | Path | Mapping[str, Any] | StudyConfig,
        *,
        storage: str | None = None,
        name: str | None = None,
        seed: int | None = None,
        **kwargs: Any,
    ) -> Study:
        """Stores a new study (nothing is proposed until the first :meth:`ask`).

        Args:
            source: A study file's path, its contents as a mapping, or a validated config.
            storage: An Optuna storage URL (default: ``$SEARCHLAB_STORAGE``, else SQLite
                ``searchlab.db``).
            name: Replaces the study's name.
            seed: Replaces its seed.
            **kwargs: :class:`Study`'s keyword arguments.

        Raises:
            StudyFileError: If the config is invalid (one line naming the field).
            StudyStateError: If the storage already holds a study of that name.
        """
        from searchlab.config import StudyConfig, load_study_file, validate_study
        from searchlab.store import Storage, storage_url

        if isinstance(source, StudyConfig):
            config = source
        elif isinstance(source, Mapping):
            config = validate_study(dict(source), source="the study given")
        else:
            config = load_study_file(source)
        if name is not None or seed is not None:
            config = config.with_overrides(name=name, seed=seed)
        store = Storage(storage_url(storage), create=True)
        with store.lease(config.name):
            record = store.create(config)
        return cls(record, config, **kwargs)

    @classmethod
    def open(cls, name: str, *, storage: str | None = None, **kwargs: Any) -> Study:
        """Opens a stored study (created here, by ``study create`` or ``study init``)."""
        from searchlab.config import stored_config
        from searchlab.store import Storage, storage_url

        record = Storage(storage_url(storage)).load(name)
        return cls(record, stored_config(record.config_data), **kwargs)

    # -- the caller's side ----------------------------------------------------------------

    def ask(self, n: int = 1) -> list[Asked]:
        """Hands out up to ``n`` candidates to train, oldest first; fewer while the round waits.

        Raises:
            LoopError: If ``n`` is below 1.
        """
        if n < 1:
            raise LoopError(f"ask: the count must be at least 1, got {n}")
        with self._step() as engine:
            r = self._advance(engine)
            if r is None:
                return []
            state = self.record.round_state(r)
            in_round = [c for c in self.record.candidates() if c.round == r]
            stalled = not any(
                c.state in (CandidateState.WAITING, CandidateState.RUNNING, CandidateState.COMPLETE)
                for c in in_round
            )
            if not Phase.PROPOSED.reached(state):
                engine._propose(r)
            elif stalled and not Phase.EVALUATED.reached(state):
                # Every candidate of the round failed: proposed again, with other draws.
                failed = sum(1 for c in in_round if c.state == CandidateState.FAIL)
                engine._propose(r, attempt=max(1, failed // self.config.rounds.candidates))
            distributions = engine.space.distributions()
            out = []
            for _ in range(n):
                trial = self.record.start_next(distributions, round=r)
                if trial is None:
                    break
                c = engine._candidate(trial.number)
                out.append(Asked(c.number, c.round, c.recipe, _source(c)))
            return out

    def tell(
        self,
        number: int,
        *,
        dev: Mapping[str, Any],
        items: Mapping[str, int] | None = None,
        artefact: Mapping[str, Any] | None = None,
    ) -> None:
        """Stores an asked candidate's per-domain dev scores.

        Args:
            number: The candidate.
            dev: Per domain, the dev accuracy in [0, 1] (or ``(accuracy, items)``).
            items: Per domain, how many dev items the accuracy is over (optional).
            artefact: JSON-serialisable facts about the trained model (a checkpoint path, say),
                kept with the candidate.

        Raises:
            LoopError: For an unknown candidate, one not asked or already told, or bad scores
                (a missing or unknown domain, NaN, outside [0, 1]); nothing is stored then.
        """
        from searchlab.backends import check_scores

        with self._step() as engine:
            c = self._asked(number)
            _known_domains(dev, self.config.domain_names, f"candidate {number}: dev")
            given = dict(dev)
            if items is not None:
                _known_domains(items, self.config.domain_names, f"candidate {number}: items")
                given = {d: (v, items[d]) if d in items else v for d, v in given.items()}
            scores = _checked(check_scores, given, self.config.domain_names, "dev", number)
            # searchlab's keys last: the caller's artefact cannot replace the recipe.
            kept = {**dict(artefact or {}), "recipe": c.recipe, "candidate": number}
            try:
                self.record.finish(
                    number,
                    dev={d: s for d, (s, _) in scores.items()},
                    dev_n={d: k for d, (_, k) in scores.items()},
                    artefact=kept,
                    domains=self.config.domain_names,
                )
            except CandidateFinishedError:
                raise LoopError(f"candidate {number} was told already") from None
            self._advance(engine)

    def tell_failed(self, number: int, reason: str) -> None:
        """Stores that an asked candidate could not be trained or scored, with why."""
        with self._step() as engine:
            c = self._asked(number)
            reason = str(reason)[:2000] or "failed (no reason given)"
            try:
                self.record.fail(number, reason)
            except CandidateFinishedError:
                raise LoopError(f"candidate {number} was told already") from None
            self.record.audit(
                AuditKind.CANDIDATE_FAILED, round=c.round, candidate=number, reason=reason
            )
            self._advance(engine)

    def plan_submissions(self) -> Plan:
        """The open round's planned submissions, planning them once its candidates are told.

        Planning is the engine's submission policy (warm-up spread, dev-record probe, UCB
        ranking, confirmation in the last round); each choice is stored and counted against the
        budget before it is returned. Called again, it returns the same unanswered ones.
        """
        with self._step() as engine:
            r = self._advance(engine)
            if r is None:
                return Plan(None, [], [], self._budget_left())
            state = self.record.round_state(r)
            waiting = [
                c.number
                for c in self.record.candidates()
                if c.round == r and c.state in (CandidateState.WAITING, CandidateState.RUNNING)
            ]
            if Phase.EVALUATED.reached(state) and not Phase.PLANNED.reached(state):
                engine._plan(r, engine._fit())
                self._advance(engine)  # a round with nothing planned is done at once
            return Plan(r, self._planned(r), waiting, self._budget_left())

    def tell_external(
        self,
        number: int,
        *,
        external: Mapping[str, float] | None = None,
        error: str | None = None,
    ) -> None:
        """Stores one submission's per-domain external scores (or that it failed, with why).

        A planned submission is answered; a completed candidate that was not planned is
        submitted as the caller's choice, while the budget lasts. Each new pair enters the
        validity test at once, which may switch a domain's mode.

        Raises:
            LoopError: For an unknown candidate, one without dev scores, one that has an
                external score (or a failed submission) already, a spent budget, or bad scores;
                nothing is stored then.
        """
        from searchlab.backends import check_scores

        if (external is None) == (error is None):
            raise LoopError(f"candidate {number}: give the external scores or the error, not both")
        with self._step() as engine:
            if self.record.finished:
                raise LoopError(
                    f"study {self.record.name!r} is finished: its recommendation stands"
                )
            c = self._known(number)
            sub = self.record.submissions().get(number)
            if sub is not None and sub.get("state") != SubmissionState.PLANNED:
                raise LoopError(
                    f"candidate {number} has an external submission already "
                    f"({sub.get('state')}); an external score is accepted once"
                )
            if c.state != CandidateState.COMPLETE:
                raise LoopError(f"candidate {number} has no dev scores yet (it is {c.state})")
            scores = None
            if external is not None:
                _known_domains(external, self.config.domain_names, f"candidate {number}: external")
                raw = _checked(check_scores, external, self.config.domain_names, "external", number)
                scores = {d: s for d, (s, _) in raw.items()}
            if sub is None:
                if self._budget_left() <= 0:
                    raise LoopError(
                        f"candidate {number}: the external budget is spent "
                        f"({self.config.external.total} submissions)"
                    )
                r = self._advance(engine)
                r = self.config.rounds.count - 1 if r is None else r
                sub = engine._open_submission(
                    r, number, "chosen by the caller", None, engine._fit()
                )
            engine._answer(number, sub, scores=scores, error=error)
            self._advance(engine)

    def enqueue(self, recipe: Mapping[str, Any], *, source: str) -> int:
        """Adds a candidate from outside to the round being filled; returns its number.

        Raises:
            RecipeError: If the recipe is not in the study's space (naming the key and bound).
            LoopError: If the source is empty or the study is finished.
        """
        source = str(source).strip()
        if not source or source == SEARCHLAB or len(source) > 200 or "\n" in source:
            raise LoopError(
                f"enqueue: the source must be a short one-line name other than {SEARCHLAB!r} "
                f"(got {source[:40]!r})"
            )
        with self._step() as engine:
            checked = engine.space.check(recipe)
            r = self._advance(engine)
            if r is None:
                raise LoopError(f"study {self.record.name!r} is finished: nothing to enqueue into")
            if Phase.EVALUATED.reached(self.record.round_state(r)):
                r += 1  # the open round takes no more candidates: the next one gets it
                if r >= self.config.rounds.count:
                    raise LoopError(
                        f"study {self.record.name!r}: the last round is closed; nothing is "
                        "proposed after it"
                    )
            modes = dict(zip(engine.domains, engine.modes, strict=True))
            number = self.record.enqueue(
                checked, round=r, proposal={"method": "enqueued", "source": source, "modes": modes}
            )
            self.record.audit(
                AuditKind.CANDIDATE_ENQUEUED,
                round=r,
                candidate=number,
                source=source,
                recipe=checked,
            )
            return number

    def import_runs(self, path: str | Path) -> list[int]:
        """Warm-starts the study with past runs from a run log (before its first round).

        See :mod:`searchlab.importing` for the columns. Every row is checked before anything is
        stored; each run becomes a completed candidate, each scored run a submission charged to
        the budget and a pair of the validity test.

        Returns:
            The new candidates' numbers, in row order.

        Raises:
            LogError: Naming the row and the column; or if the study has started.
        """
        from searchlab.importing import import_runs, read_runs

        with self._step() as engine:
            runs = read_runs(path, self.config, engine.space)
            return import_runs(engine, runs, source=Path(path).name)

    # -- reading --------------------------------------------------------------------------

    @property
    def finished(self) -> bool:
        """Whether every round is done and the final recommendation stored."""
        self.record.refresh()
        return self.record.finished

    def status(self) -> dict[str, Any]:
        """The ``study status --json`` object: modes with their evidence, alarms, budget,
        recommendation."""
        from searchlab.readmodel import status

        self.record.refresh()
        return status(self.record)

    def modes(self) -> dict[str, dict[str, Any]]:
        """Per domain, its mode and the evidence of its last validity check."""
        return self.status()["domains"]

    def recommendation(self) -> dict[str, Any] | None:
        """The latest recommendation (stored at the end of each round), None before."""
        return self.status()["recommendation"]

    def next_step(self) -> str:
        """In words, what the study waits for."""
        self.record.refresh()
        for r in range(self.config.rounds.count):
            state = self.record.round_state(r)
            if Phase.DONE.reached(state):
                continue
            if not Phase.PROPOSED.reached(state):
                return f"round {r}: ask for candidates"
            open_ = [
                c.number
                for c in self.record.candidates()
                if c.round == r and c.state in (CandidateState.WAITING, CandidateState.RUNNING)
            ]
            waiting = [
                c.number
                for c in self.record.candidates()
                if c.round == r and c.state == CandidateState.WAITING
            ]
            if waiting:
                return f"round {r}: ask for candidates ({len(waiting)} waiting)"
            if open_:
                return f"round {r}: tell the scores of candidates {_list(open_)}"
            done = any(
                c.round == r and c.state == CandidateState.COMPLETE
                for c in self.record.candidates()
            )
            if not done and not Phase.EVALUATED.reached(state):
                return f"round {r}: every candidate failed; ask for new ones"
            if not Phase.PLANNED.reached(state):
                return f"round {r}: plan its submissions"
            planned = [
                n for n, s in self._submissions_of(r) if s["state"] == SubmissionState.PLANNED
            ]
            return f"round {r}: tell the external scores of candidates {_list(planned)}"
        return "finished"

    # -- the engine's steps, one at a time ------------------------------------------------

    @contextmanager
    def _step(self) -> Iterator[Engine]:
        """Holds the study lease for one call, with the engine restored from storage."""

        lease: StudyLease = self.record.lease()
        deadline = time.monotonic() + self.wait_s
        while True:
            try:
                lease.acquire()
                break
            except StudyHeldError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.05 + random.random() * 0.2)
        with lease:
            self._lease = lease
            try:
                self.record.refresh()  # another process may have written since the last call
                engine = self._engine()
                engine.tests, engine.monitors = engine._restore_tests(self.record)
                yield engine
            finally:
                self._lease = None

    def _engine(self) -> Engine:
        if self._engine_obj is None:
            from searchlab.engine import Engine

            subscribers = []
            if self._publish:
                from searchlab.dashboard import round_publisher

                subscribers.append(round_publisher)
            self._engine_obj = Engine(
                record=self.record,
                config=self.config,
                backend=_TruthOnly(self._backend) if self._backend is not None else None,
                guard=lambda: self._lease.check() if self._lease is not None else None,
                after_round=subscribers,
            )
        return self._engine_obj

    def _advance(self, engine: Engine) -> int | None:
        """Moves the study on as far as what was told allows; returns the open round, None
        once the study is finished (its final recommendation stored)."""
        for r in range(self.config.rounds.count):
            state = self.record.round_state(r)
            if Phase.DONE.reached(state):
                continue
            if not Phase.PROPOSED.reached(state):
                return r
            if not Phase.EVALUATED.reached(state):
                in_round = [c for c in self.record.candidates() if c.round == r]
                if any(
                    c.state in (CandidateState.WAITING, CandidateState.RUNNING) for c in in_round
                ) or not any(c.state == CandidateState.COMPLETE for c in in_round):
                    return r
                engine._close_evaluation(r)
            if not Phase.PLANNED.reached(self.record.round_state(r)):
                return r
            if any(s["state"] == SubmissionState.PLANNED for _, s in self._submissions_of(r)):
                return r
            self.record.set_phase(r, Phase.SUBMITTED)
            engine._finish_round(r)
        if not self.record.finished:
            engine._finish_study()
        return None

    def _known(self, number: int) -> Candidate:
        found = [c for c in self.record.candidates() if c.number == number]
        if not found:
            raise LoopError(f"study {self.record.name!r} has no candidate {number}")
        return found[0]

    def _asked(self, number: int) -> Candidate:
        """The candidate, which must be asked (RUNNING) and not yet told."""
        c = self._known(number)
        if c.state == CandidateState.WAITING:
            raise LoopError(f"candidate {number} was not asked yet (ask for it first)")
        if c.state != CandidateState.RUNNING:
            raise LoopError(f"candidate {number} was told already (it is {c.state})")
        return c

    def _submissions_of(self, r: int) -> list[tuple[int, dict[str, Any]]]:
        subs = self.record.submissions().items()
        return sorted(
            ((n, s) for n, s in subs if s["round"] == r), key=lambda i: i[1]["submission"]
        )

    def _planned(self, r: int) -> list[PlannedSubmission]:
        done = {c.number: c for c in self.record.candidates()}
        return [
            PlannedSubmission(
                n,
                r,
                s["submission"],
                s["reason"],
                s.get("policy_score"),
                done[n].recipe,
                dict(done[n].artefact or {}),
            )
            for n, s in self._submissions_of(r)
            if s["state"] == SubmissionState.PLANNED
        ]

    def _budget_left(self) -> int:
        return self.config.external.total - self.record.budget_used()


class _TruthOnly:
    """A back end's truth (``true_external``, ``optimum``) and nothing else: the engine then
    cannot train or submit through it behind the caller's back."""

    def __init__(self, backend: Any) -> None:
        for name in ("true_external", "optimum"):
            if hasattr(backend, name):
                setattr(self, name, getattr(backend, name))


def _source(c: Candidate) -> str:
    return str(c.proposal.get("source", SEARCHLAB))


def _list(numbers: list[int]) -> str:
    return ", ".join(str(n) for n in numbers)


def _known_domains(given: Mapping[str, Any], domains: list[str], what: str) -> None:
    if not isinstance(given, Mapping):
        raise LoopError(
            f"{what}: expected an object of per-domain scores, got {type(given).__name__}"
        )
    unknown = [str(d) for d in given if d not in domains]
    if unknown:
        raise LoopError(
            f"{what}: unknown domain {unknown[0]!r} (the study's domains: {', '.join(domains)})"
        )


def _checked(check: Any, raw: Any, domains: list[str], what: str, number: int) -> Any:
    """``check(raw, ...)`` with its message as a :class:`LoopError`."""
    from searchlab.errors import BackendError

    try:
        return check(raw, domains, what=what, candidate=number)
    except BackendError as exc:
        raise LoopError(str(exc)) from None
