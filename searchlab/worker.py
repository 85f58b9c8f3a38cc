"""A worker: takes the study's proposed candidates one at a time, trains, evaluates, stores.

Any number of workers, on any machines that reach the storage, serve one coordinator
(``searchlab coordinator NAME`` or ``study create --external-workers``). There is no queue of
searchlab's own: the coordinator enqueues each candidate as a WAITING Optuna trial, and a
worker claims one by moving it to RUNNING under a row lock (:meth:`StudyRecord.start_next`), so
no two workers ever run the same candidate at once.

While it trains, a worker writes the candidate's heartbeat (:meth:`StudyRecord.heartbeat`, Unix
time) every ``heartbeat_s`` seconds. A worker that dies stops beating; after ``lease_s`` the
coordinator fails the candidate with the reason and proposes its recipe again. If the worker was
only slow, not dead, its late result is refused by storage (the trial is finished) and discarded.
Worker clocks should agree with the coordinator's to well within the lease (NTP).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from typing import Any

from searchlab.errors import CandidateFinishedError, SearchlabError

log = logging.getLogger("searchlab.worker")


class _Heartbeat:
    """Writes the heartbeat of one RUNNING candidate from a background thread."""

    def __init__(self, record: Any, number: int, every_s: float, worker: str) -> None:
        self.record = record
        self.number = number
        self.every_s = every_s
        self.worker = worker
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{number}", daemon=True)

    def __enter__(self) -> _Heartbeat:
        self.beat()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def beat(self) -> None:
        try:
            self.record.heartbeat(self.number)
        except CandidateFinishedError:
            self.lost = True  # the coordinator gave it away; the final store will say so
            self._stop.set()
        except SearchlabError as exc:  # a storage hiccup: the next beat may get through
            log.warning("heartbeat of candidate %d not written: %s", self.number, exc)

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self.beat()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join()


def run_worker(
    url: str,
    name: str,
    *,
    lease_s: float = 60.0,
    heartbeat_s: float = 5.0,
    idle_exit_s: float | None = None,
    max_candidates: int | None = None,
    poll_s: float = 0.5,
    worker_id: str | None = None,
    trust: bool | None = None,
) -> dict[str, int]:
    """Serves one study until it is finished (or idle for ``idle_exit_s``).

    Args:
        url: The storage URL.
        name: The study name.
        lease_s: The coordinator's lease; only checked against ``heartbeat_s`` here.
        heartbeat_s: Seconds between heartbeats while a candidate runs.
        idle_exit_s: Stop after this many seconds without a candidate to take (None: wait
            until the study is finished).
        max_candidates: Stop after this many candidates (None: no limit).
        poll_s: Seconds between looks for work when there is none.
        worker_id: How this worker names itself in logs (default host:pid).
        trust: Whether a ``module:Class`` back end may be imported (``--trust-backend``); None
            reads ``SEARCHLAB_TRUST_BACKEND`` (see :func:`searchlab.backends.load_backend`).

    Returns:
        Counts: ``done`` (stored COMPLETE), ``failed`` (stored FAIL), ``discarded`` (taken
        away after the lease ran out).

    Raises:
        SearchlabError: If the study cannot be loaded, its back end cannot be constructed, or
            ``heartbeat_s`` is not well below ``lease_s``.
    """
    from searchlab.backends import backend_for
    from searchlab.config import stored_config
    from searchlab.space import SearchSpace
    from searchlab.store import Storage

    if not 0 < heartbeat_s < lease_s / 2:
        raise SearchlabError(
            f"the heartbeat ({heartbeat_s} s) must be positive and under half the lease "
            f"({lease_s} s)"
        )
    me = worker_id or f"{socket.gethostname()}:{os.getpid()}"
    record = Storage(url).load(name)
    config = stored_config(record.config_data)
    backend = backend_for(config, trust=trust)
    distributions = SearchSpace(config.space).distributions()
    counts = {"done": 0, "failed": 0, "discarded": 0}
    idle_since = time.monotonic()
    while max_candidates is None or sum(counts.values()) < max_candidates:
        trial = record.start_next(distributions)
        if trial is None:
            record.refresh()
            if record.finished:
                log.info("study %s is finished", name)
                break
            if idle_exit_s is not None and time.monotonic() - idle_since > idle_exit_s:
                log.info("no work for %.0f s: stopping", idle_exit_s)
                break
            time.sleep(poll_s)
            continue
        counts[_serve(record, backend, config, trial, me, heartbeat_s)] += 1
        idle_since = time.monotonic()
    return counts


def _serve(record: Any, backend: Any, config: Any, trial: Any, me: str, heartbeat_s: float) -> str:
    """Runs one claimed candidate with its heartbeat; how it ended: ``done``, ``failed`` or
    ``discarded`` (given away after its lease ran out). An interrupt hands it back at once."""
    from searchlab.execution import run_candidate

    number = trial.number
    log.info("%s: candidate %d started", me, number)
    heartbeat = _Heartbeat(record, number, heartbeat_s, me)
    try:
        with heartbeat:
            record.set_worker(number, me)
            outcome = run_candidate(record, backend, config, trial, before_store=heartbeat.stop)
    except CandidateFinishedError:
        log.warning("candidate %d was given away after its lease expired; result discarded", number)
        return "discarded"
    except KeyboardInterrupt:
        # Hand it back at once rather than after the lease: the coordinator re-proposes it.
        with contextlib.suppress(SearchlabError):
            record.release(number, f"worker {me} was interrupted (SIGINT)")
        raise
    log.info(
        "%s: candidate %d %s in %.1f s",
        me,
        number,
        "done" if outcome.ok else f"failed: {outcome.reason}",
        outcome.seconds,
    )
    return "done" if outcome.ok else "failed"
