"""The round loop: propose, train and evaluate, submit, test validity, switch modes, audit.

One round:

    propose k          surrogates + acquisition in the current modes (quasi-random in warm-up)
    train, evaluate    each candidate through the back end -> per-domain dev
    submit             the submission policy spends this round's external budget
    validity           after each new (dev, external) pair, per domain, the hinge e-value test
    modes              a domain whose test fires switches to decoupled, with the evidence
    recommend          the best candidate by modelled external

Each step writes its outcome to storage before the next starts, and a round records its phase
(``proposed`` -> ``evaluated`` -> ``submitted`` -> ``done``), so ``resume`` continues at the first
unfinished step: no finished candidate is redone, no submission is sent twice.
"""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np

from searchlab.acquisition import Batch, ShareFloor, modelled_objective, propose_batch
from searchlab.backends import Backend, check_external_scores
from searchlab.batched import fit_domains
from searchlab.config import StudyConfig
from searchlab.errors import BackendError, CandidateFinishedError, SearchlabError
from searchlab.interrupt import SignalLatch, received, sigint_latch
from searchlab.objective import (
    BASELINE,
    ObjectiveType,
    ResolvedFloor,
    floor_shortfall,
    front_mask,
    modelled_key,
    resolve_floors,
)
from searchlab.policy import (
    SHARE_PROBE,
    ShareProbe,
    SubmissionChoice,
    SubmissionRound,
    choose_submissions,
    implausible_domains,
    recommend,
    record_probe,
    share_probes,
)
from searchlab.readmodel import alarms
from searchlab.space import SearchSpace
from searchlab.store import (
    AuditKind,
    Candidate,
    CandidateState,
    Mode,
    Phase,
    StudyRecord,
    SubmissionState,
)
from searchlab.surrogate import DEV, DomainSurrogate
from searchlab.validity import DomainMonitor, ValidityTest

Progress = Callable[[str, dict[str, Any]], None]


@dataclass
class _Models:
    """The per-domain surrogates and what they say about the completed candidates."""

    numbers: list[int] = field(default_factory=list)  # completed candidates, in order
    x: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))  # n x d
    predictions: list[dict[str, np.ndarray]] = field(default_factory=list)  # per domain
    # Per domain, a dev-only GP's mean at the candidates (the validity test's dev); lazily.
    test_dev: list[np.ndarray] | None = None


class Engine:
    """Runs (or resumes) one stored study to the end.

    Args:
        record: The stored study.
        config: Its validated configuration.
        backend: The back end that trains, evaluates and submits; None when the caller's own
            loop does both and tells the results (:mod:`searchlab.loop`).
        progress: Called with an event name and its numbers, for live display.
        external_workers: Whether candidates are trained by ``searchlab worker`` processes
            (this process then only coordinates: it proposes, waits for the round's
            candidates, submits, tests validity and recommends).
        lease_s: With external workers: a RUNNING candidate whose last heartbeat (or start,
            if it has none) is older than this is taken away from its worker and re-proposed.
        poll_s: With external workers: seconds between looks at the round's candidates.
        guard: Called at every safe point; raises to stop the run (the CLI passes the study
            lease's check, which raises once another process took the study over).
        after_round: Called with the record and the round number when a round is done (after
            its audit entry); each must not raise for what should not stop the study.
    """

    def __init__(
        self,
        *,
        record: StudyRecord,
        config: StudyConfig,
        backend: Backend | None,
        progress: Progress | None = None,
        external_workers: bool = False,
        lease_s: float = 60.0,
        poll_s: float = 0.5,
        guard: Callable[[], None] | None = None,
        after_round: Sequence[Callable[[StudyRecord, int], None]] = (),
    ) -> None:
        self.record = record
        self.after_round = tuple(after_round)
        self.guard = guard or (lambda: None)
        self.external_workers = external_workers
        self.lease_s = lease_s
        self.poll_s = poll_s
        self.config = config
        self.backend = backend
        self.progress = progress or (lambda event, data: None)
        # Raises KeyboardInterrupt at a safe point if SIGINT or SIGTERM came (set by run()).
        self._check_interrupt: Callable[[], None] = self.guard
        self._latch = SignalLatch()  # replaced by run()'s; deferred() marks critical sections
        self.space = SearchSpace(config.space)
        self.domains = config.domain_names
        self.weights = [config.weights[d] for d in self.domains]
        self.surrogates = [
            DomainSurrogate(
                dim=self.space.dim,
                simplex_groups=self.space.simplex_groups(),
                resolution=config.external.resolution,
                seed=config.seed * 100 + i,
                form=config.policy.surrogate,
            )
            for i, _ in enumerate(self.domains)
        ]
        self.settings = config.detector_settings()
        self.tests, self.monitors = self._restore_tests(record)
        self.timings: dict[str, float] = {"fit": 0.0, "propose": 0.0, "backend": 0.0, "wait": 0.0}
        self._models: _Models | None = None
        self._models_key: tuple[Any, ...] | None = None
        # Dev-only GPs, one per domain: the dev the validity test regresses on must not be a
        # function of the external scores it tests (the two-task mean is conditioned on them).
        self.dev_models = [
            DomainSurrogate(
                dim=self.space.dim,
                simplex_groups=self.space.simplex_groups(),
                seed=config.seed * 100 + 50 + i,
            )
            for i, _ in enumerate(self.domains)
        ]

    def _restore_tests(
        self, record: StudyRecord
    ) -> tuple[dict[str, ValidityTest], dict[str, DomainMonitor]]:
        """Each domain's test (its knots, once fixed) and monitor, as the record left them."""
        tests = {d: ValidityTest(settings=self.settings) for d in self.domains}
        knots = record.warmup_dev
        if knots:
            for d in self.domains:
                tests[d].fix_knots(np.asarray(knots[d], dtype=float))
        monitors = {
            d: DomainMonitor.from_dict(stored)
            if (stored := record.monitor_state(d))
            else DomainMonitor(domain=d)
            for d in self.domains
        }
        return tests, monitors

    # -- state ------------------------------------------------------------------------------

    @property
    def modes(self) -> list[Mode]:
        return [self.monitors[d].mode for d in self.domains]

    def externals(self) -> dict[int, dict[str, Any]]:
        """Submissions by candidate number (in every state)."""
        return self.record.submissions()

    def budget_used(self) -> int:
        return self.record.budget_used()

    # -- the loop ---------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        """Runs every unfinished round, then stores and returns the recommendation.

        A finished study is left as it is: its stored recommendation is returned.
        """
        started = time.perf_counter()
        if self.record.finished:
            result = self.record.recommendation
            self.progress("study_done", {**result, "seconds": 0.0})
            return result
        with sigint_latch() as latch:
            self._latch = latch

            def check() -> None:
                latch()
                self.guard()

            self._check_interrupt = check
            check()
            self._recover()
            for r in range(self.config.rounds.count):
                state = self.record.round_state(r)
                if Phase.DONE.reached(state):
                    continue
                self.progress("round_start", {"round": r, "rounds": self.config.rounds.count})
                if not Phase.PROPOSED.reached(state):
                    self._propose(r)
                check()
                if not Phase.EVALUATED.reached(self.record.round_state(r)):
                    self._evaluate(r)
                check()
                if not Phase.SUBMITTED.reached(self.record.round_state(r)):
                    self._submit(r)
                check()
                summary = self._finish_round(r)
                self.progress("round_done", summary)
            check()
            result = self._finish_study()
        self.progress("study_done", {**result, "seconds": time.perf_counter() - started})
        return result

    def _finish_study(self) -> dict[str, Any]:
        """The final recommendation, its audit entry and the finished mark, together."""
        with self._latch.deferred():
            result = self._recommend(final=True)
            self.record.mark_finished()
        return result

    def _recover(self) -> None:
        """Repairs what an interrupted process left: running candidates, unanswered submissions,
        replacements cut short.

        With external workers a RUNNING candidate may be alive in a worker: it is left to the
        lease check instead.
        """
        self._finish_replacements()
        for c in self.record.candidates():
            if c.state == CandidateState.RUNNING and not self.external_workers:
                self._replace(c, "interrupted: the process running it stopped")
        for number, sub in sorted(self.externals().items()):
            if sub.get("state") != SubmissionState.PENDING:
                continue
            artefact = self._candidate(number).artefact or {}
            recover = getattr(self.backend, "recover_external", None)
            scores = None
            if recover is not None:
                try:
                    raw = recover(artefact, submission=sub["submission"])
                    if raw is not None:
                        scores = check_external_scores(raw, self.domains, candidate=number)
                except Exception as exc:  # recorded; the submission is never re-sent
                    sub["recover_error"] = f"{type(exc).__name__}: {exc}"
            if scores is not None:
                self.record.put_submission(
                    number, {**sub, "state": SubmissionState.DONE, "scores": scores}
                )
                self.record.audit(
                    AuditKind.SUBMISSION_RECOVERED,
                    round=sub["round"],
                    candidate=number,
                    submission=sub["submission"],
                    scores=scores,
                )
            else:
                self.record.put_submission(number, {**sub, "state": SubmissionState.LOST})
                self.record.audit(
                    AuditKind.SUBMISSION_LOST,
                    round=sub["round"],
                    candidate=number,
                    submission=sub["submission"],
                    note="sent before a crash, answer not recoverable; counted, never re-sent",
                )

    def _candidate(self, number: int) -> Candidate:
        return next(c for c in self.record.candidates() if c.number == number)

    def _replace(self, c: Candidate, reason: str) -> None:
        """Fails an unfinished candidate with its reason and proposes its recipe again.

        Three writes (the failure, the new proposal, the audit entry) in a critical section: a
        signal waits for its end. A process killed in between leaves the failure marked
        ``reproposed``, and :meth:`_finish_replacements` completes the rest on resume.

        Raises:
            CandidateFinishedError: If another process finished the candidate first.
        """
        with self._latch.deferred():
            self.record.fail(c.number, reason, repropose=True)
            self.record.enqueue(
                c.recipe, round=c.round, proposal={**c.proposal, "replaces": c.number}
            )
            self.record.audit(
                AuditKind.CANDIDATE_REPLACED, round=c.round, candidate=c.number, reason=reason
            )

    def _finish_replacements(self) -> None:
        """Completes what a stopped process left of a replacement or a failure.

        A candidate failed to be proposed again (``reproposed``) gets its new proposal if it
        has none (unless its round is past evaluation) and its ``candidate_replaced`` entry; any
        other failed candidate without an audit entry gets its ``candidate_failed`` one.
        """
        candidates = self.record.candidates()
        replaced = {c.proposal.get("replaces") for c in candidates}
        audited = {
            e.get("candidate")
            for e in self.record.audit_log()
            if e["kind"] in (AuditKind.CANDIDATE_REPLACED, AuditKind.CANDIDATE_FAILED)
        }
        for c in candidates:
            if c.state != CandidateState.FAIL or (c.number in audited and c.number in replaced):
                continue
            reason = c.error or "failed"
            with self._latch.deferred():
                if not c.reproposed:
                    if c.number not in audited:
                        self.record.audit(
                            AuditKind.CANDIDATE_FAILED,
                            round=c.round,
                            candidate=c.number,
                            reason=reason,
                        )
                    continue
                if c.number not in replaced and not Phase.EVALUATED.reached(
                    self.record.round_state(c.round)
                ):
                    self.record.enqueue(
                        c.recipe, round=c.round, proposal={**c.proposal, "replaces": c.number}
                    )
                if c.number not in audited:
                    self.record.audit(
                        AuditKind.CANDIDATE_REPLACED,
                        round=c.round,
                        candidate=c.number,
                        reason=reason,
                        note="completed on resume: the process replacing it stopped",
                    )

    # -- propose ----------------------------------------------------------------------------

    def _propose(self, r: int, *, attempt: int = 0) -> None:
        """Proposes round ``r``'s missing candidates (all, or a top-up after a crash).

        ``attempt`` > 0 re-proposes a round whose candidates all failed (a caller's loop told
        them so): the draws then use another seed, so the same recipes are not handed out again.
        """
        k = self.config.rounds.candidates
        existing = [c for c in self.record.candidates() if c.round == r]
        need = k - len([c for c in existing if c.state != CandidateState.FAIL])
        modes = dict(zip(self.domains, self.modes, strict=True))
        baseline = self.config.objective.baseline
        base = self._baseline()
        lost = base is None or base.state == CandidateState.FAIL  # never enqueued, or failed
        if need > 0 and r == 0 and baseline is not None and lost:
            # The reference of below_baseline floors: trained first, submitted in this round.
            self.record.enqueue(baseline, round=r, proposal={"method": BASELINE, "modes": modes})
            self.record.audit(AuditKind.PROPOSAL, round=r, method=BASELINE, count=1)
            need -= 1
        if need > 0 and r < self.config.policy.warmup_rounds:
            # Quasi-random warm-up; a top-up after a crash skips the points already enqueued.
            seed = self.config.seed * 1000 + r + 1_000_000 * attempt
            k -= int(r == 0 and baseline is not None)  # the baseline takes one of the places
            recipes = self.space.quasi_random(k, seed=seed)[k - need :]
            for recipe in recipes:
                self.record.enqueue(
                    recipe, round=r, proposal={"method": "sobol", "seed": seed, "modes": modes}
                )
            self.record.audit(
                AuditKind.PROPOSAL, round=r, method="sobol", count=len(recipes), seed=seed
            )
        elif need > 0:
            models = self._fit()
            # Candidates out for training (a caller's loop may hold some) are pending points.
            pending = [
                self.space.encode(c.recipe)
                for c in existing
                if c.state in (CandidateState.WAITING, CandidateState.RUNNING)
            ]
            probes = self._share_probes(r, models, need)
            seed = self.config.seed * 1000 + r + 1_000_000 * attempt
            propose = partial(
                propose_batch,
                surrogates=self.surrogates,
                weights=self.weights,
                modes=self.modes,
                dev_penalty=self.config.policy.dev_penalty,
                x_baseline=models.x,
                discrete_dims=self.space.discrete_dims(),
                objective=self.config.objective.type,
                domains=self.domains,
                floors=self._floors(),
            )
            t0 = time.perf_counter()
            batch = propose(
                x_pending=np.asarray(pending) if pending else None, q=need - len(probes), seed=seed
            )
            self.timings["propose"] += time.perf_counter() - t0
            method = (
                "qLogNParEGO" if self.config.objective.type == ObjectiveType.PARETO else "qLogNEI"
            )
            self._enqueue_batch(r, batch, {"method": method, "modes": modes})
            self.record.audit(
                AuditKind.PROPOSAL,
                round=r,
                method=method,
                count=len(batch.x),
                modes=modes,
                dev_penalty=self.config.policy.dev_penalty,
                log_acquisition=batch.acquisition,
                predicted_objective=batch.predicted_objective,
            )
            pending += list(batch.x)
            for i, (probe, floor) in enumerate(probes):
                t0 = time.perf_counter()
                one = propose(
                    x_pending=np.asarray(pending), q=1, seed=seed + 1 + i, share_floor=floor
                )
                self.timings["propose"] += time.perf_counter() - t0
                extra = {"domain": probe.domain, "min_share": probe.min_share}
                self._enqueue_batch(r, one, {"method": SHARE_PROBE, "modes": modes, **extra})
                self.record.audit(
                    AuditKind.PROPOSAL,
                    round=r,
                    method=SHARE_PROBE,
                    count=1,
                    modes=modes,
                    **extra,
                    log_acquisition=one.acquisition,
                    predicted_objective=one.predicted_objective,
                )
                pending += list(one.x)
        self.record.set_phase(r, Phase.PROPOSED)

    def _enqueue_batch(self, r: int, batch: Batch, proposal: dict[str, Any]) -> None:
        for i, x in enumerate(batch.x):
            self.record.enqueue(
                self.space.decode(x),
                round=r,
                proposal={
                    **proposal,
                    "log_acquisition": batch.acquisition[i],
                    "predicted_objective": batch.predicted_objective[i],
                },
            )

    def _share_probes(
        self, r: int, models: _Models, need: int
    ) -> list[tuple[ShareProbe, ShareFloor]]:
        """This round's share probes (:func:`searchlab.policy.share_probes`), each with the
        constraint it is proposed under: each decoupled domain's least share is its dev-record
        holder's (the highest modelled dev) share."""
        if not self.config.policy.share_probes or Mode.DECOUPLED not in self.modes:
            return []
        where = {d: at for d in self.domains if (at := self.space.share_coordinates(d)) is not None}
        shares: list[float | None] = []
        for i_d, d in enumerate(self.domains):
            if d not in where:
                shares.append(None)
                continue
            c, group = where[d]
            row = models.x[int(np.argmax(models.predictions[i_d]["dev_mean"]))]
            shares.append(float(row[c] / max(row[group].sum(), 1e-12)))
        probes = share_probes(
            round=r,
            domains=self.domains,
            modes=self.modes,
            record_shares=shares,
            slots=min(need, self.config.external.per_round) - 1,
        )
        # share_probes names only domains with a share (in `where`).
        return [
            (p, ShareFloor(where[p.domain][0], tuple(where[p.domain][1]), p.min_share))
            for p in probes
        ]

    # -- train and evaluate -----------------------------------------------------------------

    def _evaluate(self, r: int) -> None:
        if self.external_workers:
            self._await_workers(r)
        else:
            self._run_here(r)
        self._close_evaluation(r)

    def _close_evaluation(self, r: int) -> None:
        """Marks round ``r`` evaluated once none of its candidates is waiting or running.

        Raises:
            BackendError: If every candidate of the round failed (nothing to learn from).
        """
        this_round = [c for c in self.record.candidates() if c.round == r]
        if this_round and not any(c.state == CandidateState.COMPLETE for c in this_round):
            first = next(c for c in this_round if c.error)
            raise BackendError(
                f"backend {self.config.backend.name!r} failed on every candidate of round {r}: "
                f"candidate {first.number}: {first.error}"
            )
        self.record.set_phase(r, Phase.EVALUATED)

    def _run_here(self, r: int) -> None:
        """Trains and evaluates every waiting candidate in this process."""
        from searchlab.execution import run_candidate

        distributions = self.space.distributions()
        while True:
            self._check_interrupt()
            trial = self.record.start_next(distributions)
            if trial is None:
                break
            number = trial.number
            self.progress("candidate_start", {"round": r, "candidate": number})
            try:
                outcome = run_candidate(self.record, self.backend, self.config, trial)
            except KeyboardInterrupt:
                # A further signal now only sets the latch (SignalLatch.grace_s), and the
                # replacement is a critical section: this clean-up runs to its end.
                name = signal.Signals(received() or signal.SIGINT).name
                with contextlib.suppress(CandidateFinishedError):  # it finished just before
                    self._replace(self._candidate(number), f"interrupted by the user ({name})")
                raise
            self.timings["backend"] += outcome.seconds
            if not outcome.ok:
                self.record.audit(
                    AuditKind.CANDIDATE_FAILED, round=r, candidate=number, reason=outcome.reason
                )
                self.progress("candidate_failed", {"candidate": number, "reason": outcome.reason})
                continue
            self.progress(
                "candidate_done", {"round": r, "candidate": number, "mean_dev": outcome.mean_dev}
            )

    def _await_workers(self, r: int) -> None:
        """Waits until workers have finished every candidate of round ``r``.

        A RUNNING candidate whose lease ran out (no heartbeat for ``lease_s``) or that its worker
        released is failed with the reason and re-proposed; a candidate a worker stored FAIL gets
        its ``candidate_failed`` audit entry here, since only the coordinator writes the audit.
        """
        t0 = time.perf_counter()
        audited = {
            e["candidate"]
            for e in self.record.audit_log()
            if e["kind"] in (AuditKind.CANDIDATE_FAILED, AuditKind.CANDIDATE_REPLACED)
        }
        seen: set[int] = set()
        while True:
            self._check_interrupt()  # a signal, or the study lease lost while waiting
            now = time.time()
            busy = False
            for c in self.record.candidates():
                if c.round != r:
                    continue
                if c.state == CandidateState.COMPLETE and c.number not in seen:
                    seen.add(c.number)
                    self.progress("candidate_done", {"round": r, "candidate": c.number})
                elif c.state == CandidateState.FAIL and c.number not in audited:
                    audited.add(c.number)
                    reason = c.error or "failed"
                    self.record.audit(
                        AuditKind.CANDIDATE_FAILED, round=r, candidate=c.number, reason=reason
                    )
                    self.progress("candidate_failed", {"candidate": c.number, "reason": reason})
                elif c.state in (CandidateState.WAITING, CandidateState.RUNNING):
                    busy = True
                reason = c.lease_lost(now, self.lease_s)
                if reason is None:
                    continue
                try:
                    self._replace(c, reason)
                except CandidateFinishedError:
                    continue  # its worker finished it a moment ago: nothing to replace
                audited.add(c.number)
            if not busy:
                break
            time.sleep(self.poll_s)
        self.timings["wait"] += time.perf_counter() - t0

    # -- models -----------------------------------------------------------------------------

    def _fit(self) -> _Models:
        """Fits every domain's surrogate on the completed candidates and the external scores."""
        done = [c for c in self.record.candidates() if c.state == CandidateState.COMPLETE]
        ext = {n: s for n, s in self.externals().items() if s.get("state") == SubmissionState.DONE}
        key = (tuple(c.number for c in done), tuple(sorted(ext)))
        if self._models is not None and self._models_key == key:
            return self._models  # nothing new since the last fit
        x = np.array([self.space.encode(c.recipe) for c in done])
        index = {c.number: i for i, c in enumerate(done)}
        ext_numbers = [n for n in sorted(ext, key=lambda n: ext[n]["submission"]) if n in index]
        t0 = time.perf_counter()
        fit_domains(
            self.surrogates,
            x,
            [np.array([c.dev[d] for c in done]) for d in self.domains],
            x[[index[n] for n in ext_numbers]] if ext_numbers else np.zeros((0, x.shape[1])),
            [np.array([ext[n]["scores"][d] for n in ext_numbers]) for d in self.domains],
        )
        predictions = []
        for s, d in zip(self.surrogates, self.domains, strict=True):
            predictions.append(s.predict(x))
            if s.fit_status not in ("converged", "stopped"):
                # Recorded, not fatal: the model keeps the hyperparameters it has.
                self.record.audit(
                    AuditKind.FIT_WARNING,
                    round=max(c.round for c in done),
                    domain=d,
                    status=s.fit_status,
                )
        self.timings["fit"] += time.perf_counter() - t0
        self._models = _Models(numbers=[c.number for c in done], x=x, predictions=predictions)
        self._models_key = key
        return self._models

    def _test_dev(self, models: _Models) -> list[np.ndarray]:
        """Per domain, the dev-only GP's posterior mean at ``models.numbers`` (fitted once per
        set of completed candidates; no external score enters it)."""
        if models.test_dev is None:
            dev = {
                c.number: c.dev
                for c in self.record.candidates()
                if c.state == CandidateState.COMPLETE
            }
            t0 = time.perf_counter()
            out = []
            for s, d in zip(self.dev_models, self.domains, strict=True):
                empty = np.zeros((0, models.x.shape[1]))
                s.fit(models.x, np.array([dev[n][d] for n in models.numbers]), empty, empty[:, 0])
                out.append(s.predict(models.x)["dev_mean"])
            self.timings["fit"] += time.perf_counter() - t0
            models.test_dev = out
        return models.test_dev

    # -- submissions and validity -----------------------------------------------------------

    def _submit(self, r: int) -> None:
        """Plans round ``r``'s submissions (unless planned), then sends each planned one."""
        models = self._fit()
        if not Phase.PLANNED.reached(self.record.round_state(r)):
            self._plan(r, models)
        for number, sub in sorted(self.externals().items(), key=lambda i: i[1]["submission"]):
            if sub["round"] == r and sub.get("state") == SubmissionState.PLANNED:
                self._check_interrupt()
                self._send(number, sub, models)
        self.record.set_phase(r, Phase.SUBMITTED)

    def _plan(self, r: int, models: _Models) -> list[int]:
        """Chooses round ``r``'s submissions and stores each, counted, as PLANNED.

        Fixes the knots first at the end of the warm-up. Returns the chosen candidates.
        """
        if r == self.config.policy.warmup_rounds - 1 and not self.record.warmup_dev:
            self._fix_knots(models)
        externals = self.externals()
        left = self.config.external.total - self.budget_used()
        in_round = sum(1 for s in externals.values() if s["round"] == r)
        # Imported runs (round -1) have no artefact a back end could submit: never planned.
        imported = {c.number for c in self.record.candidates() if c.round < 0}
        open_numbers = [n for n in models.numbers if n not in externals and n not in imported]
        rows = {n: models.numbers.index(n) for n in open_numbers}
        choices = choose_submissions(
            SubmissionRound(
                round=r,
                rounds=self.config.rounds.count,
                warmup_rounds=self.config.policy.warmup_rounds,
                budget=max(0, min(self.config.external.per_round - in_round, left)),
                open=open_numbers,
                predictions=[
                    {key: v[list(rows.values())] for key, v in p.items()}
                    for p in models.predictions
                ],
                weights=self.weights,
                modes=self.modes,
                ucb_beta=self.config.policy.ucb_beta,
                probe_ready=all(self.tests[d].scale for d in self.domains),
                probe=lambda numbers: self._record_probe(
                    models, numbers, [rows[n] for n in numbers], externals
                ),
                modelled_external=lambda numbers: self._modelled_external(
                    models, [rows[n] for n in numbers]
                )[0],
                baseline=base.number if (base := self._baseline()) is not None else None,
                share_probes={
                    c.number: c.proposal["domain"]
                    for c in self.record.candidates()
                    if c.round == r and c.number in rows and c.proposal.get("method") == SHARE_PROBE
                },
            )
        )
        for choice in choices:
            self._check_interrupt()
            self._open_submission(r, choice.candidate, choice.reason, choice.score, models)
        self.record.set_phase(r, Phase.PLANNED)
        return [choice.candidate for choice in choices]

    def _baseline(self) -> Candidate | None:
        """The baseline candidate (``objective.baseline``), once enqueued: the one not failed
        (a replacement, or one enqueued again), else the failed one."""
        if self.config.objective.baseline is None:
            return None
        found = [c for c in self.record.candidates() if c.proposal.get("method") == BASELINE]
        alive = [c for c in found if c.state != CandidateState.FAIL]
        return (alive or found or [None])[0]

    def _floors(self) -> list[ResolvedFloor]:
        """The study's floors with the thresholds known now (the baseline's scores)."""
        if not self.config.objective.floors:
            return []
        base = self._baseline()
        done = base is not None and base.state == CandidateState.COMPLETE
        answer = self.externals().get(base.number) if base is not None else None
        return resolve_floors(
            self.config.objective.floors,
            baseline=base.number if base is not None else None,
            baseline_dev=base.dev if done and base is not None else None,
            baseline_external=answer["scores"]
            if answer is not None and answer.get("state") == SubmissionState.DONE
            else None,
        )

    def _record_probe(
        self,
        models: _Models,
        open_numbers: list[int],
        rows: list[int],
        externals: dict[int, dict[str, Any]],
    ) -> SubmissionChoice | None:
        paired = [models.numbers.index(n) for n in externals if n in models.numbers]
        if not paired:
            return None
        test_dev = self._test_dev(models)
        return record_probe(
            open_numbers,
            [t[rows] for t in test_dev],
            [float(np.max(t[paired])) for t in test_dev],
            [float(self.tests[d].scale or 1.0) for d in self.domains],
            self.domains,
        )

    def _open_submission(
        self, r: int, number: int, reason: str, score: float, models: _Models
    ) -> dict[str, Any]:
        """Stores (and counts) a PLANNED submission of a completed candidate; returns it."""
        row = models.numbers.index(number)
        planned = {
            "round": r,
            "submission": self.budget_used(),
            "state": SubmissionState.PLANNED,
            "reason": reason,
            "policy_score": score,
            # The pair's dev for the validity test, fixed as it enters (dev-only model).
            "test_dev": {
                d: float(t[row]) for d, t in zip(self.domains, self._test_dev(models), strict=True)
            },
        }
        self.record.put_submission(number, planned)
        return planned

    def _send(self, number: int, planned: dict[str, Any], models: _Models | None) -> None:
        """Sends a PLANNED submission through the back end and takes its answer."""
        if self.backend is None:
            raise SearchlabError(
                f"candidate {number}: its planned submission needs a back end to send it, and "
                "this engine has none (tell its scores with tell_external)"
            )
        intent = {**planned, "state": SubmissionState.PENDING}
        # The intent is stored before the back end is called: a crash in between leaves a
        # pending submission that resume never sends again.
        self.record.put_submission(number, intent)
        artefact = self._candidate(number).artefact or {}
        try:
            raw = self.backend.submit_external(artefact, submission=intent["submission"])
            scores = check_external_scores(raw, self.domains, candidate=number)
        except Exception as exc:
            error = str(exc) if isinstance(exc, BackendError) else f"{type(exc).__name__}: {exc}"
            self._answer(number, intent, error=error, models=models)
            return
        self._answer(number, intent, scores=scores, models=models)

    def _answer(
        self,
        number: int,
        sent: dict[str, Any],
        *,
        scores: dict[str, float] | None = None,
        error: str | None = None,
        models: _Models | None = None,
    ) -> None:
        """Stores a submission's answer (``scores``, or the ``error`` it failed with), its
        audit entry and, for scores, the validity test on the new pair."""
        r, submission = sent["round"], sent["submission"]
        # The answer, its audit entry and the validity test on it belong together: a signal
        # waits for the end of this section.
        with self._latch.deferred():
            if scores is None:
                self.record.put_submission(
                    number, {**sent, "state": SubmissionState.FAILED, "error": error}
                )
                self.record.audit(
                    AuditKind.SUBMISSION_FAILED, round=r, candidate=number, error=error
                )
                return
            self.record.put_submission(
                number, {**sent, "state": SubmissionState.DONE, "scores": scores}
            )
            self.record.audit(
                AuditKind.SUBMISSION,
                round=r,
                candidate=number,
                submission=submission,
                reason=sent["reason"],
                policy_score=sent.get("policy_score"),
                scores=scores,
                budget={
                    "used": submission + 1,
                    "left": self.config.external.total - submission - 1,
                },
            )
            self.progress("submission", {"round": r, "candidate": number, "scores": scores})
            self._check_validity(r, number, models)

    def _fix_knots(self, models: _Models) -> None:
        """Fixes each domain's knot grid from the warm-up candidates' dev-only de-noised dev."""
        warm = {d: t.tolist() for d, t in zip(self.domains, self._test_dev(models), strict=True)}
        for d in self.domains:
            self.tests[d].fix_knots(np.asarray(warm[d]))
        self.record.put_warmup_dev(warm)
        self.record.audit(
            AuditKind.KNOTS_FIXED,
            round=self.config.policy.warmup_rounds - 1,
            knots={d: list(self.tests[d].knots or ()) for d in self.domains},
        )

    def _check_validity(self, r: int, number: int, models: _Models | None = None) -> None:
        """Runs every domain's test on its (de-noised dev, external) pairs so far.

        ``models`` is the fit the round's submissions were chosen with; without it, this
        process's last fit (a caller's loop answering what it planned), else a fit made here
        when one is needed (a study stored before pairs kept their dev, a switch's record).
        Fitting only then keeps a loop that plans and answers in one process on the engine's
        own sequence of fits (each fit starts from the last one's hyperparameters).
        """
        models = models if models is not None else self._models
        if any(self.tests[d].knots is None for d in self.domains):
            return
        done = {n: s for n, s in self.externals().items() if s.get("state") == SubmissionState.DONE}
        complete = {
            c.number for c in self.record.candidates() if c.state == CandidateState.COMPLETE
        }
        order = sorted((n for n in done if n in complete), key=lambda n: done[n]["submission"])
        if models is None and any("test_dev" not in done[n] for n in order):
            models = self._fit()
        checks: dict[str, Any] = {}
        for i_d, d in enumerate(self.domains):
            monitor = self.monitors[d]
            before = monitor.mode
            # Each pair's dev as fixed when it entered; a study stored before that was kept
            # falls back to the current two-task mean (what it used then).
            dev = np.array(
                [
                    done[n]["test_dev"][d]
                    if "test_dev" in done[n]
                    else models.predictions[i_d]["dev_mean"][models.numbers.index(n)]
                    for n in order
                ]
            )
            ext = np.array([done[n]["scores"][d] for n in order])
            # The dev-only baseline (policy.switch false): the test is run and recorded, the
            # mode never changes.
            result, event, ignored = monitor.observe(
                self.tests[d], dev, ext, switch=self.config.policy.switch
            )
            # The de-noised dev the test saw, so `study analyze` can replay it exactly; "mode"
            # is the mode the check switched to (also when the switch was refused).
            checks[d] = {"mode": ignored or monitor.mode, **result.to_dict(), "dev": dev.tolist()}
            if ignored is not None:
                self.record.audit(
                    AuditKind.ALARM_IGNORED,
                    round=r,
                    domain=d,
                    candidate=number,
                    evidence=result.to_dict(),
                    note="policy.switch is false",
                )
            self.record.put_monitor_state(d, monitor.to_dict())
            if event is not None:
                if models is None:
                    models = self._fit()  # the task correlation the record gives as context
                self.record.audit(
                    AuditKind.MODE_SWITCH,
                    round=r,
                    domain=d,
                    candidate=number,
                    from_mode=before,
                    to_mode=monitor.mode,
                    evidence=result.to_dict(),
                    task_correlation=self.surrogates[self.domains.index(d)].task_correlation(),
                )
                self.progress("mode_switch", {"domain": d, "candidate": number, "to": monitor.mode})
        # One record per check: every domain's statistic against its threshold.
        self.record.audit(AuditKind.VALIDITY_CHECK, round=r, candidate=number, domains=checks)

    # -- end of round -----------------------------------------------------------------------

    def _finish_round(self, r: int) -> dict[str, Any]:
        result = self._recommend(final=False)
        summary = {
            "round": r,
            "candidates": sum(
                1 for c in self.record.candidates() if c.state == CandidateState.COMPLETE
            ),
            "best_dev": result.get("best_dev"),
            "modelled_external": result["recommendation"]["modelled_external"],
            "modes": dict(zip(self.domains, self.modes, strict=True)),
            "alarms": len(alarms(self.record.audit_log())),
            "budget_left": self.config.external.total - self.budget_used(),
        }
        with self._latch.deferred():  # a round marked done always has its audit entry
            self.record.set_phase(r, Phase.DONE)
            self.record.audit(AuditKind.ROUND_DONE, **summary)
        for subscriber in self.after_round:  # the dashboard's publisher, say (wired by the CLI)
            subscriber(self.record, r)
        return summary

    def _recommend(self, *, final: bool) -> dict[str, Any]:
        models = self._fit()
        done = {c.number: c for c in self.record.candidates() if c.state == CandidateState.COMPLETE}
        mean, sd, basis = self._modelled_external(models)
        ext = {n: e for n, e in self.externals().items() if e.get("state") == SubmissionState.DONE}
        paired = [n for n in ext if n in done]
        flags = implausible_domains(
            [p["ext_mean"] for p in models.predictions],
            [np.array([ext[n]["scores"][d] for n in paired]) for d in self.domains],
            self.domains,
        )
        observed = {
            n: sum(w * ext[n]["scores"][d] for d, w in zip(self.domains, self.weights, strict=True))
            for n in paired
        }
        floors = self._floors()
        by_domain = dict(zip(self.domains, models.predictions, strict=True))
        shortfall = (
            floor_shortfall(floors, by_domain, confidence=self.config.objective.confidence)
            if floors
            else None
        )
        number, value, why = recommend(
            models.numbers,
            mean,
            implausible=flags,
            observed_external=observed,
            shortfall=shortfall,
        )
        if basis == "modelled external" or shortfall is not None:
            basis = why
        out_of_range = {str(n): f for n, f in zip(models.numbers, flags, strict=True) if f}
        mean_dev = {
            n: sum(w * done[n].dev[d] for d, w in zip(self.domains, self.weights, strict=True))
            for n in done
        }
        best_dev = max(mean_dev, key=mean_dev.__getitem__)
        rec = {
            "candidate": number,
            "recipe": done[number].recipe,
            "modelled_external": value,
            "modelled_external_sd": float(sd[models.numbers.index(number)]),
            "basis": basis,
            # Candidates whose modelled external left [0, 1] or the observed range, by domain.
            "model_out_of_range": out_of_range,
        }
        best = {"candidate": best_dev, "mean_dev": mean_dev[best_dev]}
        truth = self._truth
        if truth is not None:
            rec.update(truth(done[number]))
            best.update(truth(done[best_dev]))
        result = {"recommendation": rec, "best_dev_candidate": best, "best_dev": mean_dev[best_dev]}
        if shortfall is not None:
            rec["meets_floors"] = bool(shortfall[models.numbers.index(number)] <= 0)
            result["floors"] = [f.as_dict() for f in floors]
        if self.config.objective.type == ObjectiveType.PARETO:
            result["front"] = self._front(models, number, shortfall, truth, done)
        self.record.put_recommendation(result)
        if final:
            self.record.audit(
                AuditKind.RECOMMENDATION, round=self.config.rounds.count - 1, **result
            )
        return result

    def _front(
        self,
        models: _Models,
        recommended: int,
        shortfall: np.ndarray | None,
        truth: Callable[[Candidate], dict[str, float]] | None,
        done: dict[int, Candidate],
    ) -> list[dict[str, Any]]:
        """The completed candidates no other beats in every domain's modelled external (dev
        where a domain has no external model yet), with their scores (searchlab.objective)."""
        columns = [p[f"{modelled_key(p)}_mean"] for p in models.predictions]
        values = np.stack(columns, axis=1)  # n x K
        true_external = getattr(self.backend, "true_external", None) if truth else None
        on_front = front_mask(values)
        # The recommendation is listed too, on the front or not (a floor can keep a member out).
        on_front_or_recommended = on_front.copy()
        on_front_or_recommended[models.numbers.index(recommended)] = True
        front = []
        for i in np.flatnonzero(on_front_or_recommended):
            n = models.numbers[int(i)]
            row: dict[str, Any] = {
                "candidate": n,
                "on_front": bool(on_front[i]),
                "modelled_external": dict(zip(self.domains, values[i].tolist(), strict=True)),
                "meets_floors": bool(shortfall is None or shortfall[i] <= 0),
            }
            if true_external is not None:
                c = done[n]
                row["true_external"] = {
                    d: float(v)
                    for d, v in true_external(
                        c.artefact or {"recipe": c.recipe, "candidate": n}
                    ).items()
                }
            front.append(row)
        return front

    def _modelled_external(
        self, models: _Models, rows: list[int] | None = None
    ) -> tuple[np.ndarray, np.ndarray, str]:
        """Weighted posterior mean and sd of external at the fitted candidates (``rows`` of
        them, or all), and the basis; from the fit's predictions, nothing predicted again.

        Falls back to modelled dev while no domain has an external model yet.
        """
        predictions = [
            p if rows is None else {k: v[rows] for k, v in p.items()} for p in models.predictions
        ]
        mean, sd = modelled_objective(predictions, self.weights)
        if np.isnan(mean).all():
            mean, sd = modelled_objective(predictions, self.weights, task=DEV)
            return mean, sd, "modelled dev (no external score observed yet)"
        return mean, sd, "modelled external"

    @property
    def _truth(self) -> Callable[[Candidate], dict[str, float]] | None:
        """True external and regret of a candidate, when the back end knows the truth."""
        true_external = getattr(self.backend, "true_external", None)
        optimum = getattr(self.backend, "optimum", None)
        if true_external is None or optimum is None:
            return None
        best = float(optimum())

        def truth(c: Candidate) -> dict[str, float]:
            per_domain = true_external(c.artefact or {"recipe": c.recipe, "candidate": c.number})
            value = sum(w * per_domain[d] for d, w in zip(self.domains, self.weights, strict=True))
            return {"true_external": float(value), "regret": float(best - value)}

        return truth


__all__ = ["Engine", "SearchlabError"]
