"""Study storage on Optuna: candidates are trials, everything else is a study attribute.

Layout of one searchlab study in Optuna storage (SQLite by default, any RDB URL Optuna takes):

- The Optuna study of the same name, one objective per domain (``dev:<domain>``, maximised), so
  optuna-dashboard plots per-domain dev against the candidate number.
- A candidate is a trial; its params are the recipe. It is enqueued (WAITING) when proposed,
  RUNNING while trained, COMPLETE with per-domain dev as values, or FAIL with the reason in the
  user attribute ``searchlab.error``. Nothing is fabricated to fill a value: a NaN score fails the
  candidate with its reason.
- External scores arrive after the trial is finished, and Optuna cannot change a finished trial
  (``UpdateFinishedTrialError``). They are study user attributes ``searchlab.external.<n>``
  written in two steps: the intent (``pending``, counted against the budget) before the back end is
  called, the scores after (``done``), or the back end's error (``failed``). A crash in between
  leaves ``pending``: resume asks the back end to recover the answer (``done``) or records it as
  ``lost``; it is never re-sent. Every state counts against the budget: each was an attempt.
- Decisions are study user attributes ``searchlab.audit.<seq>``, one JSON object each.

Every value is JSON: nothing is pickled, so reading a study never executes its contents.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from searchlab.errors import CandidateFinishedError, StorageError, StudyStateError

if TYPE_CHECKING:
    import optuna

    from searchlab.config import StudyConfig

SCHEMA_VERSION = 1
PREFIX = "searchlab."
DEFAULT_STORAGE = "sqlite:///searchlab.db"


def redact(url: str) -> str:
    """A storage URL with its password replaced by ``***``."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("@")[-1] if "@" in url else url


@contextmanager
def _storage_errors(url: str, action: str) -> Iterator[None]:
    """Turns database driver errors into one-line :class:`StorageError` messages."""
    try:
        yield
    except (StorageError, StudyStateError):
        raise
    except Exception as exc:
        from sqlalchemy.exc import SQLAlchemyError

        if not isinstance(exc, SQLAlchemyError | OSError | ImportError | ValueError):
            raise
        detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()
        message = detail[0] if detail else type(exc).__name__
        raise StorageError(
            f"storage {redact(url)}: cannot {action}: {message.replace(url, redact(url))}"
        ) from None


def _jsonable(value: Any) -> Any:
    """Replaces non-finite floats by None, recursively: JSON has no NaN."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


@contextmanager
def _unfinished(number: int) -> Iterator[None]:
    """Turns Optuna's complaints about a finished trial into :class:`CandidateFinishedError`."""
    from optuna.exceptions import UpdateFinishedTrialError

    try:
        yield
    except UpdateFinishedTrialError:
        raise CandidateFinishedError(f"candidate {number} is already finished") from None
    except ValueError as exc:
        if not str(exc).startswith("Cannot tell a"):
            raise
        raise CandidateFinishedError(f"candidate {number} is already finished: {exc}") from None


@dataclass(frozen=True)
class Candidate:
    """One candidate as stored: the trial plus what searchlab attached to it."""

    number: int
    round: int
    state: str  # WAITING | RUNNING | COMPLETE | FAIL
    recipe: dict[str, Any]
    dev: dict[str, float]  # per-domain dev accuracy (COMPLETE only)
    dev_n: dict[str, int | None]
    artefact: dict[str, Any] | None
    error: str | None
    proposal: dict[str, Any]


class Storage:
    """An Optuna storage holding searchlab studies.

    Args:
        url: An SQLAlchemy URL Optuna accepts (``sqlite:///searchlab.db``,
            ``postgresql://user:pw@host/db``).
        create: Whether a missing SQLite file may be created (only ``study create`` does).
    """

    def __init__(self, url: str, *, create: bool = False) -> None:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.url = url
        if not create and url.startswith("sqlite:///") and url != "sqlite:///:memory:":
            path = url.removeprefix("sqlite:///")
            if not os.path.exists(path):
                # Reading must not create an empty database where a path was mistyped.
                raise StorageError(f"storage {url}: no such database file {path!r}")
        with _storage_errors(url, "open"):
            self._storage = optuna.storages.RDBStorage(
                url, engine_kwargs=_engine_kwargs(url), skip_compatibility_check=False
            )

    @property
    def optuna_storage(self) -> optuna.storages.BaseStorage:
        return self._storage

    def names(self) -> list[str]:
        """Names of the searchlab studies in this storage."""
        import optuna

        with _storage_errors(self.url, "list studies"):
            summaries = optuna.get_all_study_summaries(self._storage, include_best_trial=False)
        return sorted(s.study_name for s in summaries if f"{PREFIX}config" in s.user_attrs)

    def create(self, config: StudyConfig) -> StudyRecord:
        """Creates a study from a validated config.

        Raises:
            StudyStateError: If a study of that name exists.
        """
        import optuna

        with _storage_errors(self.url, "create the study"):
            try:
                study = optuna.create_study(
                    study_name=config.name,
                    storage=self._storage,
                    directions=["maximize"] * len(config.domains),
                    sampler=optuna.samplers.RandomSampler(),
                )
            except optuna.exceptions.DuplicatedStudyError:
                raise StudyStateError(
                    f"study {config.name!r} already exists in {redact(self.url)}: "
                    "use 'searchlab study resume', or --name to create another"
                ) from None
            with warnings.catch_warnings():  # experimental since Optuna 3.2, stable in use
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                study.set_metric_names([f"dev:{d}" for d in config.domain_names])
            study.set_user_attr(f"{PREFIX}schema", SCHEMA_VERSION)
            study.set_user_attr(f"{PREFIX}config", config.model_dump(mode="json"))
        return StudyRecord(self, study)

    def load(self, name: str) -> StudyRecord:
        """Opens a stored searchlab study.

        Raises:
            StorageError: If there is no such study (the message lists the known ones).
        """
        import optuna

        with _storage_errors(self.url, f"load study {name!r}"):
            try:
                study = optuna.load_study(
                    study_name=name, storage=self._storage, sampler=optuna.samplers.RandomSampler()
                )
            except KeyError:
                known = self.names()
                raise StorageError(
                    f"no study {name!r} in {redact(self.url)}; known: {known or 'none'}"
                ) from None
        record = StudyRecord(self, study)
        schema = record.attrs.get(f"{PREFIX}schema")
        if schema is None:
            raise StorageError(f"study {name!r} in {redact(self.url)} is not a searchlab study")
        if schema != SCHEMA_VERSION:
            raise StorageError(
                f"study {name!r} has schema version {schema}; this searchlab reads version "
                f"{SCHEMA_VERSION}: use the searchlab release that wrote it"
            )
        return record


def _engine_kwargs(url: str) -> dict[str, Any]:
    if url.startswith("sqlite"):
        # Wait for a lock rather than fail at once when a dashboard reads the same file.
        return {"connect_args": {"timeout": 30}}
    # Fail fast on an unreachable server instead of hanging for minutes.
    return {"pool_pre_ping": True, "connect_args": {"connect_timeout": 10}}


class StudyRecord:
    """Read and write access to one stored study.

    Attributes are cached after the first read; writes go through to storage at once and
    update the cache.
    """

    def __init__(self, storage: Storage, study: optuna.Study) -> None:
        self._store = storage
        self.study = study
        self.name = study.study_name
        self._attrs: dict[str, Any] | None = None
        self._audit_seq: int | None = None

    # -- study attributes -------------------------------------------------------------------

    @property
    def attrs(self) -> dict[str, Any]:
        if self._attrs is None:
            with _storage_errors(self._store.url, "read study attributes"):
                self._attrs = dict(self.study.user_attrs)
        return self._attrs

    def refresh(self) -> None:
        """Drops cached attributes so the next read sees other processes' writes."""
        self._attrs = None

    def get(self, key: str, default: Any = None) -> Any:
        return self.attrs.get(PREFIX + key, default)

    def put(self, key: str, value: Any) -> None:
        value = _jsonable(value)
        json.dumps(value)  # fail here, not inside the database driver
        with _storage_errors(self._store.url, f"write {key!r}"):
            self.study.set_user_attr(PREFIX + key, value)
        self.attrs[PREFIX + key] = value

    def items(self, prefix: str) -> dict[str, Any]:
        """Attributes under ``prefix.``, keyed by the rest of their name."""
        full = f"{PREFIX}{prefix}."
        return {k[len(full) :]: v for k, v in self.attrs.items() if k.startswith(full)}

    @property
    def config_data(self) -> dict[str, Any]:
        return self.get("config")

    # -- audit --------------------------------------------------------------------------------

    def audit(self, kind: str, *, round: int | None, **fields: Any) -> None:
        """Appends one decision record: its kind, round, and the numbers behind it."""
        if self._audit_seq is None:
            self._audit_seq = len(self.items("audit"))
        entry = {"seq": self._audit_seq, "kind": kind, "round": round, **fields}
        self.put(f"audit.{self._audit_seq:06d}", entry)
        self._audit_seq += 1

    def audit_log(self) -> list[dict[str, Any]]:
        return [v for _, v in sorted(self.items("audit").items())]

    # -- candidates ---------------------------------------------------------------------------

    def candidates(self) -> list[Candidate]:
        """Every candidate in proposal order."""
        with _storage_errors(self._store.url, "read candidates"):
            trials = self.study.get_trials(deepcopy=False)
        names = [m.removeprefix("dev:") for m in (self.study.metric_names or [])]
        out = []
        for t in trials:
            ua = t.user_attrs
            dev: dict[str, float] = {}
            if t.state.name == "COMPLETE" and t.values is not None:
                dev = {d: float(v) for d, v in zip(names, t.values, strict=True)}
            out.append(
                Candidate(
                    number=t.number,
                    round=int(ua.get(f"{PREFIX}round", -1)),
                    state=t.state.name,
                    recipe=dict(t.params),
                    dev=dev,
                    dev_n=dict(ua.get(f"{PREFIX}dev_n", {})),
                    artefact=ua.get(f"{PREFIX}artefact"),
                    error=ua.get(f"{PREFIX}error"),
                    proposal=dict(ua.get(f"{PREFIX}proposal", {})),
                )
            )
        return out

    def enqueue(
        self, recipe: Mapping[str, Any], *, round: int, proposal: Mapping[str, Any]
    ) -> None:
        """Stores a proposed candidate as a WAITING trial (the proposal survives a crash)."""
        with _storage_errors(self._store.url, "enqueue a candidate"):
            self.study.enqueue_trial(
                dict(recipe),
                user_attrs={
                    f"{PREFIX}round": round,
                    f"{PREFIX}proposal": _jsonable(dict(proposal)),
                },
            )

    def start_next(self, distributions: Mapping[str, Any]) -> optuna.Trial | None:
        """Takes the oldest WAITING candidate and marks it RUNNING; None when there is none.

        Safe with several processes on one storage: on PostgreSQL (and MySQL) Optuna moves a
        trial from WAITING to RUNNING under a row lock (``SELECT ... FOR UPDATE``), and the
        process that finds it no longer WAITING moves on to the next; SQLite has no row locks, so
        there the claim is serialised by a lock file beside the database. Unlike
        ``Study.ask``, this never creates a new trial when another process took the last one.
        """
        import optuna
        from optuna.exceptions import UpdateFinishedTrialError
        from optuna.trial import TrialState

        storage = self.study._storage
        with _storage_errors(self._store.url, "start a candidate"), self._claim_lock():
            for t in storage.get_all_trials(
                self.study._study_id, deepcopy=False, states=(TrialState.WAITING,)
            ):
                try:
                    if not storage.set_trial_state_values(t._trial_id, state=TrialState.RUNNING):
                        continue  # another process took it first
                except UpdateFinishedTrialError:
                    continue
                trial = optuna.Trial(self.study, t._trial_id)
                for name, dist in distributions.items():
                    trial._suggest(name, dist)
                return trial
        return None

    @contextmanager
    def _claim_lock(self) -> Iterator[None]:
        url = self._store.url
        if not url.startswith("sqlite:///") or url == "sqlite:///:memory:":
            yield
            return
        import fcntl

        with open(url.removeprefix("sqlite:///") + ".claim.lock", "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def set_trial_attr(self, number: int, key: str, value: Any) -> None:
        """Writes a user attribute of an unfinished candidate (a heartbeat, say).

        Raises:
            CandidateFinishedError: If the candidate is already finished.
        """
        with (
            _storage_errors(self._store.url, f"write {key!r} of candidate {number}"),
            _unfinished(number),
        ):
            self._set_trial_user_attr(number, key, value)

    def _set_trial_user_attr(self, number: int, key: str, value: Any) -> None:
        """Writes ``searchlab.<key>`` on trial ``number`` (Study has no by-number setter)."""
        storage = self.study._storage
        trial_id = storage.get_trial_id_from_study_id_trial_number(self.study._study_id, number)
        storage.set_trial_user_attr(trial_id, PREFIX + key, _jsonable(value))

    def finish(
        self,
        number: int,
        *,
        dev: Mapping[str, float],
        dev_n: Mapping[str, int | None],
        artefact: Mapping[str, Any],
        domains: list[str],
    ) -> None:
        """Marks a candidate COMPLETE with its per-domain dev scores.

        Raises:
            CandidateFinishedError: If another process finished it first.
        """
        with _storage_errors(self._store.url, f"store candidate {number}"), _unfinished(number):
            self._set_trial_user_attr(number, "dev_n", dict(dev_n))
            self._set_trial_user_attr(number, "artefact", dict(artefact))
            self.study.tell(number, [float(dev[d]) for d in domains])

    def fail(self, number: int, reason: str) -> None:
        """Marks a candidate FAIL with its reason (an unfinished trial only).

        Raises:
            CandidateFinishedError: If another process finished it first.
        """
        from optuna.trial import TrialState

        with (
            _storage_errors(self._store.url, f"mark candidate {number} failed"),
            _unfinished(number),
        ):
            self._set_trial_user_attr(number, "error", reason[:2000])
            self.study.tell(number, state=TrialState.FAIL)
