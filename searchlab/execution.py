"""Train, evaluate and store one candidate: shared by the in-process engine and the workers.

The candidate is a RUNNING Optuna trial (taken with :meth:`StudyRecord.start_next`). Its outcome
is written to storage here (COMPLETE with per-domain dev, or FAIL with the reason); what to do
about it (audit entries, progress display) is the caller's business, because only the
coordinator writes the audit trail.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from searchlab.backends import Backend, check_dev_scores
from searchlab.errors import BackendError

if TYPE_CHECKING:
    import optuna

    from searchlab.config import StudyConfig
    from searchlab.store import StudyRecord


@dataclass(frozen=True)
class Outcome:
    """What happened to one candidate.

    Attributes:
        number: The candidate (trial) number.
        ok: True when it was stored COMPLETE, False when stored FAIL.
        reason: Why it failed (None when ok).
        mean_dev: The weighted mean dev score (None when it failed).
        seconds: Time spent in the back end.
    """

    number: int
    ok: bool
    reason: str | None = None
    mean_dev: float | None = None
    seconds: float = 0.0


def candidate_seed(config: StudyConfig, number: int) -> int:
    """The training seed of candidate ``number`` (the same in every process)."""
    return config.seed * 100_003 + number


def _train_and_evaluate(
    backend: Backend, recipe: dict[str, Any], number: int, seed: int, timeout_s: float | None
) -> tuple[dict[str, Any], Any]:
    """Calls the back end, giving up after ``timeout_s`` seconds when one is set.

    A Python thread cannot be killed: a back end that hangs is abandoned (its daemon thread
    keeps running until the process ends) and the candidate fails with the reason. Workers are
    separate processes, so on a cluster a hung worker can also be killed and its lease expires.
    """
    if timeout_s is None:
        artefact = backend.train(recipe, candidate=number, seed=seed)
        return artefact, backend.evaluate(artefact)
    box: dict[str, Any] = {}

    def call() -> None:
        try:
            artefact = backend.train(recipe, candidate=number, seed=seed)
            box["result"] = (artefact, backend.evaluate(artefact))
        except BaseException as exc:  # handed to the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=call, name=f"searchlab-candidate-{number}", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise BackendError(
            f"candidate {number}: the back end did not return within {timeout_s:g} s "
            "(backend.timeout_s); the call was abandoned"
        )
    if "error" in box:
        raise box["error"]
    return box["result"]


def run_candidate(
    record: StudyRecord,
    backend: Backend,
    config: StudyConfig,
    trial: optuna.Trial,
    *,
    before_store: Callable[[], None] | None = None,
) -> Outcome:
    """Trains and evaluates a started candidate and stores its outcome.

    A back-end error fails the candidate with its reason; ``KeyboardInterrupt`` leaves it
    RUNNING and propagates (the caller decides whether it is replaced).

    Args:
        record: The stored study.
        backend: The study's back end.
        config: The study's configuration.
        trial: The RUNNING trial, its params set to the recipe.
        before_store: Called after the back end returns and before anything is stored (a
            worker stops its heartbeat there).

    Raises:
        CandidateFinishedError: If another process finished the trial first (a coordinator
            that took it away after its lease expired).
    """
    number = trial.number
    recipe = dict(trial.params)
    domains = config.domain_names
    t0 = time.perf_counter()
    try:
        artefact, raw = _train_and_evaluate(
            backend, recipe, number, candidate_seed(config, number), config.backend.timeout_s
        )
        scores = check_dev_scores(raw, domains, candidate=number)
    except Exception as exc:
        seconds = time.perf_counter() - t0
        reason = (
            str(exc)
            if isinstance(exc, BackendError)
            else f"back end raised {type(exc).__name__}: {exc}"
        )
        if before_store is not None:
            before_store()
        record.fail(number, reason)
        return Outcome(number=number, ok=False, reason=reason, seconds=seconds)
    seconds = time.perf_counter() - t0
    if before_store is not None:
        before_store()
    record.finish(
        number,
        dev={d: s for d, (s, _) in scores.items()},
        dev_n={d: n for d, (_, n) in scores.items()},
        artefact=artefact,
        domains=domains,
    )
    mean_dev = sum(config.weights[d] * scores[d][0] for d in domains)
    return Outcome(number=number, ok=True, mean_dev=mean_dev, seconds=seconds)
