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
  written in steps: the round's choice (``planned``, counted against the budget), the intent
  (``pending``) before the back end is called, the scores after (``done``), or the back end's
  error (``failed``). A caller driving the study (:mod:`searchlab.loop`) sends a ``planned``
  submission itself and tells its scores. A crash after the intent leaves ``pending``: resume
  asks the back end to recover the answer (``done``) or records it as ``lost``; it is never
  re-sent. Every state counts against the budget: each was, or will be, an attempt.
- Decisions are study user attributes ``searchlab.audit.<seq>``, one JSON object each.
- A study is created in one transaction (the Optuna study, its directions, metric names,
  ``searchlab.config`` and ``searchlab.schema``): a ``create`` that fails or is killed leaves no
  study behind. ``searchlab.schema`` without ``searchlab.config`` (an older, interrupted create)
  is an incomplete study: ``load`` says so in one line, ``create`` replaces it.
- One engine per study: a row of the table ``searchlab_lease``, created beside Optuna's tables,
  says which process runs the study (:class:`StudyLease`).
- SQLite allows one writer at a time: an operation that finds the database locked by another
  process is retried with backoff for :data:`LOCK_WAIT_S` seconds, then reported in one line.

Reading never writes: a storage without Optuna's tables is reported as holding no studies, and
Optuna's tables are created only by ``create``.

Every value is JSON: nothing is pickled, so reading a study never executes its contents.
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any, TypeVar

from searchlab.errors import CandidateFinishedError, StorageError, StudyHeldError, StudyStateError

if TYPE_CHECKING:
    import optuna

    from searchlab.config import StudyConfig

SCHEMA_VERSION = 1
PREFIX = "searchlab."
DEFAULT_STORAGE = "sqlite:///searchlab.db"

log = logging.getLogger("searchlab.store")
_T = TypeVar("_T")

# SQLite: how long one statement waits for another process's lock (the driver's busy timeout),
# and how long an operation is retried, with backoff, while the database stays locked.
SQLITE_BUSY_S = 30.0
LOCK_WAIT_S = 300.0

# Optuna's tables that must all be there before a storage is read (see Storage.__init__).
_OPTUNA_CORE_TABLES = frozenset(
    {"studies", "study_directions", "study_user_attributes", "trials", "version_info"}
)


_SECRET_PARAMS = frozenset({"password", "passwd", "pwd", "secret", "token"})
# What may follow the '@' that ends the userinfo: a host (name, IPv4 or [IPv6]), a port, then
# the path or query or the end.
_HOST_AFTER_AT = re.compile(r"(\[[0-9A-Za-z:.%]*\]|[\w.%~-]*)(:\d*)?([/?#]|$)")
_MIN_FRAGMENT = 3  # shorter pieces of a password are not scrubbed from messages (noise)


def _split_secrets(url: str) -> tuple[str, list[str]]:
    """A storage URL with its secrets replaced by ``***``, and the secrets as they may appear.

    The password is everything between the first ':' after the username (which follows the
    scheme's '//') and the *last* '@' before the host: SQLAlchemy splits at the first '@', so
    ``alice:Hunter2@Secret@host`` would show ``Secret`` (and the driver sees it in the host).
    Query parameters named password, passwd, pwd, secret or token (any case) are secrets too.
    """
    from urllib.parse import unquote

    secrets: list[str] = []
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url, secrets
    # The rightmost '@' that a plausible host follows; a '@' later in a query value that looks
    # like a host hides more than needed, never less.
    at = next(
        (
            i
            for i in range(len(rest) - 1, -1, -1)
            if rest[i] == "@" and _HOST_AFTER_AT.match(rest, i + 1)
        ),
        -1,
    )
    head = ""
    if at >= 0:
        user, colon, password = rest[:at].partition(":")
        if "/" not in user and "?" not in user:  # sqlite:////path/a@b.db has no userinfo
            secrets.append(password)
            head, rest = (f"{user}:***@" if colon else f"{user}@"), rest[at + 1 :]
    location, qmark, query = rest.partition("?")
    if qmark:
        params = []
        for param in query.split("&"):
            key, eq, value = param.partition("=")
            if eq and unquote(key).strip().lower() in _SECRET_PARAMS:
                secrets.append(value)
                param = f"{key}=***"
            params.append(param)
        query = "&".join(params)
    # Every form a driver may echo: raw, percent-decoded, and the pieces around each '@'.
    found: list[str] = []
    for secret in secrets:
        for form in (secret, unquote(secret)):
            found += [form, *form.split("@")]
    found = sorted({s for s in found if len(s) >= _MIN_FRAGMENT}, key=len, reverse=True)
    return f"{scheme}://{head}{location}{qmark}{query}", found


def _scrub(text: str, secrets: list[str]) -> str:
    for secret in secrets:  # longest first: a piece never leaves the rest of a longer one
        text = text.replace(secret, "***")
    return text


def redact(url: str) -> str:
    """A storage URL with its password and secret query parameters replaced by ``***``.

    The rest is kept as typed: SQLAlchemy's ``render_as_string(hide_password=True)`` would
    percent-encode it (``a@b.db`` as ``a%40b.db``) and shows what follows the first '@' of a
    password. What SQLAlchemy's ``make_url`` reads as the password or a secret parameter is
    scrubbed too, so no part of either is left in the result.
    """
    shown, secrets = _split_secrets(url)
    try:
        from sqlalchemy.engine import make_url

        parsed = make_url(url)
        extra = [parsed.password or ""]
        extra += [
            v
            for k, v in parsed.query.items()
            if k.strip().lower() in _SECRET_PARAMS and isinstance(v, str)
        ]
        secrets += [s for s in extra if len(s) >= _MIN_FRAGMENT]
    except Exception:  # not a URL SQLAlchemy reads: the hand-made redaction stands
        pass
    return _scrub(shown, sorted(set(secrets), key=len, reverse=True))


@contextmanager
def _storage_errors(url: str, action: str) -> Iterator[None]:
    """Turns database driver errors into one-line :class:`StorageError` messages."""
    try:
        yield
    except (StorageError, StudyStateError):
        raise
    except Exception as exc:
        from optuna.exceptions import StorageInternalError
        from sqlalchemy.exc import SQLAlchemyError

        if isinstance(exc, StorageInternalError) and exc.__cause__ is not None:
            exc = exc.__cause__  # Optuna's wrapper says nothing; the driver's error does
        elif not isinstance(exc, SQLAlchemyError | OSError | ImportError | ValueError):
            raise
        detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()
        message = detail[0] if detail else type(exc).__name__
        # The driver may echo the URL, the password or a piece of it (in a host name, say).
        message = _scrub(message.replace(url, redact(url)), _split_secrets(url)[1])
        raise StorageError(f"storage {redact(url)}: cannot {action}: {message}") from None


def _is_locked(exc: BaseException) -> bool:
    """Whether an error (or what it wraps) is SQLite's "database is locked"."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        text = str(current).lower()
        if "database is locked" in text or "database table is locked" in text:
            return True
        current = getattr(current, "orig", None) or current.__cause__
    return False


def _retrying(url: str, action: str, fn: Callable[[], _T]) -> _T:
    """Calls ``fn`` (one storage operation), retrying while another process locks the database.

    Each Optuna storage call is one transaction, rolled back when it fails, so a locked attempt
    left nothing behind and calling it again is safe. After :data:`LOCK_WAIT_S` seconds the error
    is reported in one line (:class:`StorageError`); what is stored stays stored.
    """
    from searchlab.interrupt import shielded

    started = time.monotonic()
    delay = 0.05
    with _storage_errors(url, action):
        while True:
            try:
                # A signal waits for the call to end: interrupted inside a transaction, SQLite
                # would keep its lock for as long as the traceback holds the connection.
                with shielded():
                    return fn()
            except Exception as exc:
                waited = time.monotonic() - started
                if not _is_locked(exc) or waited >= LOCK_WAIT_S:
                    if _is_locked(exc):
                        raise StorageError(
                            f"storage {redact(url)}: cannot {action}: the database stayed locked "
                            f"by another process for {waited:.0f} s"
                        ) from None
                    raise
                if delay == 0.05:  # one line per operation kept waiting, not per attempt
                    log.warning(
                        "storage %s is locked by another process: still trying to %s",
                        redact(url),
                        action,
                    )
                time.sleep(min(delay, max(0.0, LOCK_WAIT_S - waited)))
                delay = min(delay * 2, 5.0)


def _sqlite_path(url: str) -> str | None:
    """The file of an SQLite URL (``sqlite:///x.db``, ``sqlite:///file:x.db?mode=ro&uri=true``);
    None for another database or an in-memory one."""
    if not url.startswith("sqlite:"):
        return None
    try:
        from sqlalchemy.engine import make_url

        parsed = make_url(url)
    except Exception:
        return None
    path = parsed.database or ""
    if str(parsed.query.get("uri", "")).lower() in ("true", "1") and path.startswith("file:"):
        path = path.removeprefix("file:").split("?")[0]
    return None if path in ("", ":memory:") or "mode=memory" in url else path


def storage_url(storage: str | None) -> str:
    """The storage URL given, else ``$SEARCHLAB_STORAGE``, else :data:`DEFAULT_STORAGE`."""
    return storage or os.environ.get("SEARCHLAB_STORAGE") or DEFAULT_STORAGE


def _float_or_none(value: Any) -> float | None:
    return None if value is None else float(value)


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


class Mode(StrEnum):
    """A domain's acquisition mode: dev stands in for external, or no longer does."""

    PROXY = "proxy"  # maximise modelled external, which the dev data inform
    DECOUPLED = "decoupled"  # modelled external, less a penalty on dev gains


class Phase(StrEnum):
    """The phases of a round, in order: the round record says which one it reached."""

    PROPOSED = "proposed"
    EVALUATED = "evaluated"
    PLANNED = "planned"  # the round's submissions are chosen and stored (state PLANNED)
    SUBMITTED = "submitted"
    DONE = "done"

    def reached(self, state: Mapping[str, Any] | None) -> bool:
        """Whether a stored round state (``{"phase": ...}``, or None) reached this phase."""
        order = list(Phase)
        return state is not None and order.index(Phase(state["phase"])) >= order.index(self)


class CandidateState(StrEnum):
    """A candidate's state: its Optuna trial's."""

    WAITING = "WAITING"
    RUNNING = "RUNNING"
    COMPLETE = "COMPLETE"
    FAIL = "FAIL"
    PRUNED = "PRUNED"  # never written by searchlab; read if another tool wrote it


class SubmissionState(StrEnum):
    """One external submission's state (see the module docstring)."""

    PLANNED = "planned"  # chosen and counted, not yet sent (a caller's loop sends it)
    PENDING = "pending"  # the intent is stored, the back end not yet answered
    DONE = "done"
    FAILED = "failed"  # the back end raised; counted against the budget
    LOST = "lost"  # sent before a crash and not recoverable; counted, never re-sent


class AuditKind(StrEnum):
    """The kinds of decision records (``searchlab.audit.<seq>``)."""

    PROPOSAL = "proposal"
    CANDIDATE_FAILED = "candidate_failed"
    CANDIDATE_ENQUEUED = "candidate_enqueued"  # from outside the engine, with its source
    CANDIDATES_IMPORTED = "candidates_imported"  # past runs, before the first round
    CANDIDATE_REPLACED = "candidate_replaced"
    FIT_WARNING = "fit_warning"
    KNOTS_FIXED = "knots_fixed"
    SUBMISSION = "submission"
    SUBMISSION_FAILED = "submission_failed"
    SUBMISSION_RECOVERED = "submission_recovered"
    SUBMISSION_LOST = "submission_lost"
    VALIDITY_CHECK = "validity_check"
    MODE_SWITCH = "mode_switch"
    ALARM_IGNORED = "alarm_ignored"
    ROUND_DONE = "round_done"
    RECOMMENDATION = "recommendation"
    DASHBOARD_PUBLISH_FAILED = "dashboard_publish_failed"
    LEASE_TAKEOVER = "lease_takeover"
    INCOMPLETE_STUDY_REPLACED = "incomplete_study_replaced"


def charged(submissions: Iterable[Mapping[str, Any]]) -> int:
    """What stored submissions charge to the budget (see :meth:`StudyRecord.budget_used`)."""
    return sum(int(s.get("charge", 1)) for s in submissions)


@dataclass(frozen=True)
class Candidate:
    """One candidate as stored: the trial plus what searchlab attached to it."""

    number: int
    round: int
    state: CandidateState
    recipe: dict[str, Any]
    dev: dict[str, float]  # per-domain dev accuracy (COMPLETE only)
    dev_n: dict[str, int | None]
    artefact: dict[str, Any] | None
    error: str | None
    proposal: dict[str, Any]
    reproposed: bool = False  # failed by the engine to propose its recipe again
    # External workers: Unix time of the last heartbeat, the trial's start, and the reason
    # its worker gave it back (SIGINT), if it did.
    heartbeat: float | None = None
    started_at: float | None = None
    released: str | None = None

    def lease_lost(self, now: float, lease_s: float) -> str | None:
        """Why a RUNNING candidate is to be taken from its worker, or None while it is alive.

        It is when its worker released it, or when neither a heartbeat nor its start is more
        recent than ``lease_s`` seconds before ``now``.
        """
        if self.state != CandidateState.RUNNING:
            return None
        if self.released is not None:
            return self.released
        beat = self.heartbeat if self.heartbeat is not None else self.started_at
        silent = now - beat if beat is not None else 0.0
        return f"worker lost: no heartbeat for {silent:.0f} s" if silent > lease_s else None


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
        self._create = create
        path = _sqlite_path(url)
        if not create and path is not None and not os.path.exists(path):
            # Reading must not create an empty database where a path was mistyped.
            raise StorageError(f"storage {redact(url)}: no such database file {path!r}")
        self._storage: optuna.storages.RDBStorage | None = None
        with _storage_errors(url, "open"):
            if create:
                self._storage = optuna.storages.RDBStorage(
                    url, engine_kwargs=_engine_kwargs(url), skip_compatibility_check=False
                )
            else:
                self._storage = self._open_existing()

    def _open_existing(self) -> optuna.storages.RDBStorage | None:
        """Optuna's storage on a database that already has Optuna's tables; None without them.

        Optuna's constructor creates its tables (twelve of them) in whatever database it is
        given; a command that only reads must not write into another tool's database, so the
        tables are looked for first, with a connection of our own.
        """
        import optuna
        import sqlalchemy

        engine = sqlalchemy.create_engine(self.url, **_engine_kwargs(self.url))
        try:
            tables = set(_retrying(self.url, "open", lambda: _table_names(engine)))
        finally:
            engine.dispose()
        if not tables & _OPTUNA_CORE_TABLES:
            return None
        missing = _OPTUNA_CORE_TABLES - tables
        if missing:
            raise StorageError(
                f"storage {redact(self.url)} is not an Optuna storage: it lacks Optuna's tables "
                f"{sorted(missing)}"
            )
        return optuna.storages.RDBStorage(
            self.url,
            engine_kwargs=_engine_kwargs(self.url),
            skip_compatibility_check=False,
            skip_table_creation=True,
        )

    def _rdb(self) -> optuna.storages.RDBStorage:
        if self._storage is None:
            raise StorageError(
                f"storage {redact(self.url)} holds no searchlab studies (it has no Optuna tables)"
            )
        return self._storage

    @property
    def optuna_storage(self) -> optuna.storages.BaseStorage:
        """Optuna's storage; on a database without Optuna's tables they are created now (the
        dashboard, which can edit, is the only caller)."""
        if self._storage is None:
            import optuna

            with _storage_errors(self.url, "open"):
                self._storage = optuna.storages.RDBStorage(
                    self.url, engine_kwargs=_engine_kwargs(self.url)
                )
        return self._storage

    @property
    def engine(self) -> Any:
        """The SQLAlchemy engine of the storage (the lease table lives beside Optuna's)."""
        return self._rdb().engine

    def names(self) -> list[str]:
        """Names of the searchlab studies in this storage (none without Optuna's tables)."""
        import optuna

        if self._storage is None:
            return []
        storage = self._storage
        summaries = _retrying(
            self.url,
            "list studies",
            lambda: optuna.get_all_study_summaries(storage, include_best_trial=False),
        )
        return sorted(s.study_name for s in summaries if f"{PREFIX}config" in s.user_attrs)

    def lease(self, name: str, **kwargs: Any) -> StudyLease:
        """The lease of study ``name`` (not yet taken): see :class:`StudyLease`."""
        return StudyLease(self, name, **kwargs)

    def create(self, config: StudyConfig) -> StudyRecord:
        """Creates a study from a validated config, in one transaction.

        The Optuna study, its directions and metric names, ``searchlab.config`` and
        ``searchlab.schema`` are one commit, so a create that fails or is killed leaves no study
        behind. An incomplete study of that name left by an older searchlab (schema without
        config, no candidates) is removed first, with a warning.

        Raises:
            StudyStateError: If a study of that name exists.
        """
        import optuna

        replaced = self._remove_incomplete(config.name)
        storage = self._rdb()
        with _storage_errors(self.url, "create the study"):
            try:
                _retrying(self.url, "create the study", lambda: _insert_study(storage, config))
            except optuna.exceptions.DuplicatedStudyError:
                raise StudyStateError(
                    f"study {config.name!r} already exists in {redact(self.url)}: "
                    "use 'searchlab study resume', or --name to create another"
                ) from None
            study = optuna.load_study(
                study_name=config.name, storage=storage, sampler=optuna.samplers.RandomSampler()
            )
        record = StudyRecord(self, study)
        if replaced:
            record.audit(AuditKind.INCOMPLETE_STUDY_REPLACED, round=None, note=replaced)
        return record

    def _remove_incomplete(self, name: str) -> str | None:
        """Deletes study ``name`` if it is an incomplete searchlab study; says why, or None."""
        import optuna

        storage = self._rdb()
        try:
            study_id = _retrying(
                self.url, "read the study", lambda: storage.get_study_id_from_name(name)
            )
        except KeyError:
            return None
        attrs = _retrying(
            self.url, "read the study", lambda: storage.get_study_user_attrs(study_id)
        )
        if f"{PREFIX}schema" not in attrs or f"{PREFIX}config" in attrs:
            return None  # a complete study, or not searchlab's: create refuses it
        trials = _retrying(self.url, "read the study", lambda: storage.get_n_trials(study_id))
        if trials:
            return None
        note = (
            f"removed the incomplete study {name!r} (schema without config, no candidates) "
            "that an interrupted 'study create' left"
        )
        log.warning("%s", note)
        with _storage_errors(self.url, f"remove the incomplete study {name!r}"):
            optuna.delete_study(study_name=name, storage=storage)
        return note

    def load(self, name: str) -> StudyRecord:
        """Opens a stored searchlab study.

        Raises:
            StorageError: If there is no such study (the message lists the known ones), or it
                is not a complete searchlab study of this schema version.
        """
        record = StudyRecord(self, self.load_optuna(name))
        schema = record.attrs.get(f"{PREFIX}schema")
        if schema is None:
            raise StorageError(f"study {name!r} in {redact(self.url)} is not a searchlab study")
        if schema != SCHEMA_VERSION:
            raise StorageError(
                f"study {name!r} has schema version {schema}; this searchlab reads version "
                f"{SCHEMA_VERSION}: use the searchlab release that wrote it"
            )
        if not isinstance(record.attrs.get(f"{PREFIX}config"), dict):
            raise StorageError(
                f"study {name!r} in {redact(self.url)} is incomplete: it has a searchlab schema "
                "but no config (a 'study create' stopped half-way); run 'searchlab study "
                "create' again to replace it"
            )
        return record

    def load_optuna(self, name: str) -> optuna.Study:
        """Opens any Optuna study of the storage (one plain Optuna wrote, say), read-only use.

        Raises:
            StorageError: If the storage holds no Optuna tables or no study of that name.
        """
        import optuna

        if self._storage is None:
            raise StorageError(
                f"no study {name!r} in {redact(self.url)}: it holds no Optuna studies "
                "(no Optuna tables; is it another tool's database?)"
            )
        storage = self._storage

        def load() -> optuna.Study:
            return optuna.load_study(
                study_name=name, storage=storage, sampler=optuna.samplers.RandomSampler()
            )

        with _storage_errors(self.url, f"load study {name!r}"):
            try:
                study = _retrying(self.url, f"load study {name!r}", load)
            except KeyError:
                known = sorted(s.study_name for s in storage.get_all_studies())
                raise StorageError(
                    f"no study {name!r} in {redact(self.url)}; known: {known or 'none'}"
                ) from None
        return study


def _table_names(engine: Any) -> list[str]:
    import sqlalchemy

    return sqlalchemy.inspect(engine).get_table_names()


def _insert_study(storage: optuna.storages.RDBStorage, config: StudyConfig) -> None:
    """Writes a new study and everything searchlab needs of it in one commit.

    Optuna's API writes a study in several transactions (the study, then each attribute), so
    a process killed in between left a study without its config. Optuna's own table models are
    used, as ``RDBStorage.create_new_study`` does, with the attributes added to its session.

    Raises:
        optuna.exceptions.DuplicatedStudyError: If a study of that name exists.
    """
    import optuna
    from optuna.storages._rdb import models
    from optuna.study import StudyDirection
    from optuna.study.study import _SYSTEM_ATTR_METRIC_NAMES
    from sqlalchemy.exc import IntegrityError

    session = storage.scoped_session()
    try:
        study = models.StudyModel(
            study_name=config.name,
            directions=[
                models.StudyDirectionModel(objective=i, direction=StudyDirection.MAXIMIZE)
                for i in range(len(config.domains))
            ],
        )
        session.add(study)
        metric_names = [f"dev:{d}" for d in config.domain_names]
        session.add(
            models.StudySystemAttributeModel(
                study=study, key=_SYSTEM_ATTR_METRIC_NAMES, value_json=json.dumps(metric_names)
            )
        )
        for key, value in (
            ("config", config.model_dump(mode="json")),
            ("schema", SCHEMA_VERSION),  # last in spirit: a study with it is complete
        ):
            session.add(
                models.StudyUserAttributeModel(
                    study=study, key=PREFIX + key, value_json=json.dumps(_jsonable(value))
                )
            )
        session.commit()
    except IntegrityError:
        session.rollback()
        raise optuna.exceptions.DuplicatedStudyError(config.name) from None
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def _engine_kwargs(url: str) -> dict[str, Any]:
    if url.startswith("sqlite"):
        # Wait for a lock rather than fail at once when a dashboard reads the same file.
        return {"connect_args": {"timeout": SQLITE_BUSY_S}}
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
    #
    # The keys under ``searchlab.``: ``config``, ``schema``, ``round.<r:04d>`` (the round's
    # phase), ``external.<candidate>`` (a submission), ``monitor.<domain>`` (a domain's mode
    # and test state), ``validity.warmup_dev`` (the warm-up dev the knots were fixed from),
    # ``recommendation``, ``finished`` and ``audit.<seq:06d>``. Only this class names them.

    @property
    def url(self) -> str:
        """The storage URL (as typed: pass it through :func:`redact` before showing it)."""
        return self._store.url

    @property
    def attrs(self) -> dict[str, Any]:
        """Every study user attribute, as stored (for copying a study whole)."""
        if self._attrs is None:
            self._attrs = _retrying(
                self._store.url, "read study attributes", lambda: dict(self.study.user_attrs)
            )
        return self._attrs

    def refresh(self) -> None:
        """Drops cached attributes so the next read sees other processes' writes."""
        self._attrs = None
        self._audit_seq = None  # counted again from what is stored

    def _get(self, key: str, default: Any = None) -> Any:
        return self.attrs.get(PREFIX + key, default)

    def _put(self, key: str, value: Any) -> None:
        value = _jsonable(value)
        json.dumps(value)  # fail here, not inside the database driver
        _retrying(
            self._store.url, f"write {key!r}", lambda: self.study.set_user_attr(PREFIX + key, value)
        )
        self.attrs[PREFIX + key] = value

    def _items(self, prefix: str) -> dict[str, Any]:
        """Attributes under ``prefix.``, keyed by the rest of their name."""
        full = f"{PREFIX}{prefix}."
        return {k[len(full) :]: v for k, v in self.attrs.items() if k.startswith(full)}

    @contextmanager
    def storage_errors(self, action: str) -> Iterator[None]:
        """Driver errors inside the block become one-line :class:`StorageError` messages
        (for writes another library makes on :attr:`study`, optuna-dashboard's, say)."""
        with _storage_errors(self._store.url, action):
            yield

    @property
    def config_data(self) -> dict[str, Any]:
        """The study file as validated and stored at create (a JSON object)."""
        return self._get("config")

    @property
    def schema_version(self) -> int | None:
        return self._get("schema")

    def round_state(self, r: int) -> dict[str, Any] | None:
        """Round ``r``'s stored state (``{"phase": ...}``), None before it was proposed."""
        return self._get(f"round.{r:04d}")

    def round_states(self) -> list[dict[str, Any]]:
        """Every stored round state, in round order."""
        return [v for _, v in sorted(self._items("round").items())]

    def set_phase(self, r: int, phase: Phase) -> None:
        self._put(f"round.{r:04d}", {**(self.round_state(r) or {}), "phase": Phase(phase)})

    def submissions(self) -> dict[int, dict[str, Any]]:
        """External submissions (in every state) by candidate number."""
        return {int(k): v for k, v in self._items("external").items()}

    def budget_used(self) -> int:
        """External submissions charged to the budget: one each, or an imported run's
        ``charge`` (it was submitted that many times)."""
        return charged(self.submissions().values())

    def put_submission(self, number: int, entry: Mapping[str, Any]) -> None:
        """Stores candidate ``number``'s submission (its intent first, then its outcome)."""
        self._put(f"external.{number}", dict(entry))

    def monitor_state(self, domain: str) -> dict[str, Any] | None:
        """A domain's stored monitor (:meth:`DomainMonitor.to_dict`), None before its first
        validity check."""
        return self._get(f"monitor.{domain}") or None

    def put_monitor_state(self, domain: str, state: Mapping[str, Any]) -> None:
        self._put(f"monitor.{domain}", dict(state))

    def mode(self, domain: str) -> Mode:
        """A domain's current mode (proxy until its monitor says otherwise)."""
        return Mode((self.monitor_state(domain) or {}).get("mode", Mode.PROXY))

    @property
    def warmup_dev(self) -> dict[str, list[float]] | None:
        """Per domain, the warm-up candidates' de-noised dev the knots were fixed from."""
        return self._get("validity.warmup_dev") or None

    def put_warmup_dev(self, warm: Mapping[str, list[float]]) -> None:
        self._put("validity.warmup_dev", dict(warm))

    @property
    def recommendation(self) -> dict[str, Any]:
        """The latest recommendation (``recommendation``, ``best_dev_candidate``, ...); empty
        before the first round ended."""
        return dict(self._get("recommendation") or {})

    def put_recommendation(self, result: Mapping[str, Any]) -> None:
        self._put("recommendation", dict(result))

    @property
    def finished(self) -> bool:
        return bool(self._get("finished", False))

    def mark_finished(self) -> None:
        self._put("finished", True)

    def lease(self, **kwargs: Any) -> StudyLease:
        """This study's lease (not yet taken): see :class:`StudyLease`."""
        return StudyLease(self._store, self.name, **kwargs)

    # -- audit --------------------------------------------------------------------------------

    def audit(self, kind: AuditKind, *, round: int | None, **fields: Any) -> None:
        """Appends one decision record: its kind, round, and the numbers behind it."""
        if self._audit_seq is None:
            self._audit_seq = len(self._items("audit"))
        entry = {"seq": self._audit_seq, "kind": AuditKind(kind), "round": round, **fields}
        self._put(f"audit.{self._audit_seq:06d}", entry)
        self._audit_seq += 1

    def audit_log(self) -> list[dict[str, Any]]:
        return [v for _, v in sorted(self._items("audit").items())]

    # -- candidates ---------------------------------------------------------------------------

    def candidates(self) -> list[Candidate]:
        """Every candidate in proposal order."""
        trials = _retrying(
            self._store.url, "read candidates", lambda: self.study.get_trials(deepcopy=False)
        )
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
                    state=CandidateState(t.state.name),
                    # A WAITING trial's recipe is its fixed params until it is started.
                    recipe=dict(t.params or t.system_attrs.get("fixed_params", {})),
                    dev=dev,
                    dev_n=dict(ua.get(f"{PREFIX}dev_n", {})),
                    artefact=ua.get(f"{PREFIX}artefact"),
                    error=ua.get(f"{PREFIX}error"),
                    proposal=dict(ua.get(f"{PREFIX}proposal", {})),
                    reproposed=bool(ua.get(f"{PREFIX}reproposed", False)),
                    heartbeat=_float_or_none(ua.get(f"{PREFIX}heartbeat")),
                    # Optuna stores naive local time, which timestamp() reads as local.
                    started_at=t.datetime_start.timestamp() if t.datetime_start else None,
                    released=ua.get(f"{PREFIX}released"),
                )
            )
        return out

    def enqueue(self, recipe: Mapping[str, Any], *, round: int, proposal: Mapping[str, Any]) -> int:
        """Stores a proposed candidate as a WAITING trial (the proposal survives a crash);
        returns its number.

        The trial is what ``Study.enqueue_trial`` makes (fixed params, WAITING), created through
        the storage so that its number is known.
        """
        from optuna.trial import TrialState, create_trial

        template = create_trial(
            state=TrialState.WAITING,
            system_attrs={"fixed_params": dict(recipe)},
            user_attrs={f"{PREFIX}round": round, f"{PREFIX}proposal": _jsonable(dict(proposal))},
        )
        return self._create_trial(template, "enqueue a candidate")

    def add_complete(
        self,
        recipe: Mapping[str, Any],
        *,
        distributions: Mapping[str, Any],
        dev: Mapping[str, float],
        dev_n: Mapping[str, int | None],
        domains: list[str],
        round: int,
        proposal: Mapping[str, Any],
    ) -> int:
        """Stores a candidate trained elsewhere (an imported run) as a COMPLETE trial; returns
        its number. It has no artefact: searchlab never made one."""
        from optuna.trial import TrialState, create_trial

        template = create_trial(
            state=TrialState.COMPLETE,
            params=dict(recipe),
            distributions=dict(distributions),
            values=[float(dev[d]) for d in domains],
            user_attrs={
                f"{PREFIX}round": round,
                f"{PREFIX}proposal": _jsonable(dict(proposal)),
                f"{PREFIX}dev_n": dict(dev_n),
            },
        )
        return self._create_trial(template, "store an imported candidate")

    def _create_trial(self, template: Any, action: str) -> int:
        """Creates a trial from an Optuna ``FrozenTrial`` template; returns its number."""
        storage = self.study._storage

        def create() -> int:
            trial_id = storage.create_new_trial(self.study._study_id, template_trial=template)
            return storage.get_trial_number_from_id(trial_id)

        return _retrying(self._store.url, action, create)

    def start_next(
        self, distributions: Mapping[str, Any], *, round: int | None = None
    ) -> optuna.Trial | None:
        """Takes the oldest WAITING candidate (of ``round``, if given) and marks it RUNNING;
        None when there is none.

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
        url = self._store.url

        def claim() -> int | None:
            for t in storage.get_all_trials(
                self.study._study_id, deepcopy=False, states=(TrialState.WAITING,)
            ):
                if round is not None and t.user_attrs.get(f"{PREFIX}round") != round:
                    continue
                try:
                    if not storage.set_trial_state_values(t._trial_id, state=TrialState.RUNNING):
                        continue  # another process took it first
                except UpdateFinishedTrialError:
                    continue
                return t._trial_id
            return None

        # Each step is one transaction, retried on its own while another process locks the
        # database (a step that failed was rolled back), so a claimed trial always gets its
        # params and nothing claimed is left half-done by a lock.
        with self._claim_lock():
            trial_id = _retrying(url, "start a candidate", claim)
            if trial_id is None:
                return None
            trial = _retrying(url, "start a candidate", lambda: optuna.Trial(self.study, trial_id))
            for name, dist in distributions.items():
                _retrying(
                    url,
                    "start a candidate",
                    lambda name=name, dist=dist: trial._suggest(name, dist),
                )
        return trial

    @contextmanager
    def _claim_lock(self) -> Iterator[None]:
        path = _sqlite_path(self._store.url)
        if path is None:
            yield
            return
        import fcntl

        with open(path + ".claim.lock", "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def heartbeat(self, number: int) -> None:
        """Writes the time on a RUNNING candidate: its worker is alive.

        Raises:
            CandidateFinishedError: If the candidate is already finished (given away).
        """
        self._write_trial(number, "heartbeat", time.time(), "write the heartbeat of")

    def set_worker(self, number: int, worker: str) -> None:
        """Writes which worker (``host:pid``) runs a RUNNING candidate.

        Raises:
            CandidateFinishedError: If the candidate is already finished.
        """
        self._write_trial(number, "worker", worker, "write the worker of")

    def release(self, number: int, reason: str) -> None:
        """A worker gives a RUNNING candidate back: the coordinator re-proposes it at once.

        Raises:
            CandidateFinishedError: If the candidate is already finished.
        """
        self._write_trial(number, "released", reason, "release")

    def _write_trial(self, number: int, key: str, value: Any, action: str) -> None:
        """Writes ``searchlab.<key>`` of an unfinished candidate (``action`` names the write in
        an error: "<action> candidate <number>")."""
        self._on_trial(
            number,
            f"{action} candidate {number}",
            lambda: self._set_trial_user_attr(number, key, value),
        )

    def _on_trial(self, number: int, action: str, fn: Callable[[], _T]) -> _T:
        """One storage operation on an unfinished trial, retried while the database is locked.

        Raises:
            CandidateFinishedError: If the trial is already finished.
        """

        def call() -> _T:
            with _unfinished(number):
                return fn()

        return _retrying(self._store.url, action, call)

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
        action = f"store candidate {number}"
        self._on_trial(
            number, action, lambda: self._set_trial_user_attr(number, "dev_n", dict(dev_n))
        )
        self._on_trial(
            number, action, lambda: self._set_trial_user_attr(number, "artefact", dict(artefact))
        )
        # Last, and on its own: the state change is what makes the candidate finished.
        self._on_trial(
            number, action, lambda: self.study.tell(number, [float(dev[d]) for d in domains])
        )

    def fail(self, number: int, reason: str, *, repropose: bool = False) -> None:
        """Marks a candidate FAIL with its reason (an unfinished trial only).

        Args:
            number: The candidate.
            reason: Why it failed.
            repropose: The engine fails it to propose its recipe again: the marker
                ``searchlab.reproposed`` is written before the failure, so resume can finish a
                replacement that was cut short (see ``Engine._recover``).

        Raises:
            CandidateFinishedError: If another process finished it first.
        """
        from optuna.trial import TrialState

        action = f"mark candidate {number} failed"
        if repropose:
            self._on_trial(
                number, action, lambda: self._set_trial_user_attr(number, "reproposed", True)
            )
        self._on_trial(
            number, action, lambda: self._set_trial_user_attr(number, "error", reason[:2000])
        )
        self._on_trial(number, action, lambda: self.study.tell(number, state=TrialState.FAIL))


# -- the study lease: one engine per study ---------------------------------------------------

LEASE_TABLE = "searchlab_lease"
LEASE_TTL_S = 30.0  # a lease whose heartbeat is older than this may be taken over
LEASE_HEARTBEAT_S = 5.0


def _lease_table() -> Any:
    import sqlalchemy as sa

    return sa.Table(
        LEASE_TABLE,
        sa.MetaData(),
        sa.Column("study_name", sa.String(512), primary_key=True),
        sa.Column("owner", sa.String(512), nullable=False),
        sa.Column("acquired_at", sa.Double(), nullable=False),
        sa.Column("heartbeat_at", sa.Double(), nullable=False),
        sa.Column("expires_at", sa.Double(), nullable=False),
    )


def _iso(t: float) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, under another user
    return True


@dataclass(frozen=True)
class LeaseHolder:
    """Who holds a study's lease, as stored (times are Unix seconds)."""

    owner: str  # host:pid:token
    acquired_at: float
    heartbeat_at: float
    expires_at: float

    @property
    def process(self) -> str:
        """``host:pid`` of the holder (the token only tells two leases of one process apart)."""
        return ":".join(self.owner.split(":")[:2])

    def gone(self) -> bool:
        """Whether the holder ran on this host and its process no longer exists."""
        host, _, rest = self.owner.partition(":")
        pid = rest.partition(":")[0]
        if host != socket.gethostname() or not pid.isdigit() or int(pid) == os.getpid():
            return False
        return not _pid_alive(int(pid))

    def describe(self, now: float | None = None) -> str:
        ago = max(0.0, (now if now is not None else time.time()) - self.heartbeat_at)
        return f"{self.process} since {_iso(self.acquired_at)} (heartbeat {ago:.0f} s ago)"


class StudyLease:
    """The right to run a study's engine: at most one process holds it at a time.

    ``study create``, ``study resume`` and ``coordinator`` hold it while the engine runs;
    workers do not (many serve one study). It is one row of the table ``searchlab_lease`` in the
    study's own database (created beside Optuna's tables, on Optuna's engine): the study name
    (primary key), the owner (``host:pid:token``), when it was acquired, its last heartbeat and
    when it expires. A background thread renews it every ``heartbeat_s`` seconds
    (``expires_at = now + ttl_s``); leaving the block releases it (deletes the row), whether the
    run ended, failed or was interrupted.

    Why it is atomic without Optuna's user attributes (which are read-modify-write, not
    transactional): every change is one SQL statement whose WHERE clause is the condition.

    - Acquire is ``INSERT``: the primary key lets exactly one of two processes insert the row;
      the other gets an integrity error (SQLite serialises writers; PostgreSQL's unique index
      makes the second insert wait for the first and then fail).
    - Takeover of a stale lease (expired, or held by a process of this host that no longer
      exists: kill -9) is ``UPDATE ... WHERE study_name = :n AND owner = :seen_owner AND
      expires_at <= :seen_expiry``, a compare-and-swap on the row as it was read: of two
      processes taking over the same stale lease, one updates one row and the other none
      (PostgreSQL re-checks the WHERE clause on the row the first one committed).
    - Renewal is ``UPDATE ... WHERE owner = :me``: no row updated means the lease was taken
      over (this process stalled past the expiry) and the engine stops at its next safe point
      (:meth:`check`).

    Times are the processes' clocks (as for workers' heartbeats): hosts must agree to well
    within ``ttl_s`` (NTP).

    Args:
        storage: The storage holding the study.
        study_name: The study.
        ttl_s: Seconds without a renewal after which another process may take the lease over.
        heartbeat_s: Seconds between renewals (default ``ttl_s / 6``).
    """

    def __init__(
        self,
        storage: Storage,
        study_name: str,
        *,
        ttl_s: float = LEASE_TTL_S,
        heartbeat_s: float | None = None,
    ) -> None:
        self.storage = storage
        self.study_name = study_name
        self.ttl_s = ttl_s
        self.heartbeat_s = heartbeat_s if heartbeat_s is not None else ttl_s / 6
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{os.urandom(4).hex()}"
        self.held = False
        self.lost: str | None = None  # why the lease was lost while held
        self.taken_over: LeaseHolder | None = None  # the stale holder acquire() replaced
        self.takeover_reason: str | None = None
        self.acquired_at: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._table_obj: Any = None

    # -- storage ------------------------------------------------------------------------------

    def _table(self) -> Any:
        """The lease table, created if it is not there yet (only writers get here)."""
        if self._table_obj is not None:
            return self._table_obj
        table = _lease_table()
        engine = self.storage.engine

        def create() -> None:
            try:
                table.create(engine, checkfirst=True)
            except Exception:
                # Two processes creating it at once: the loser's CREATE fails; fine if it exists.
                if LEASE_TABLE not in _table_names(engine):
                    raise

        _retrying(self.storage.url, "create the lease table", create)
        self._table_obj = table
        return table

    def _run(self, action: str, fn: Callable[[Any], _T]) -> _T:
        engine = self.storage.engine

        def once() -> _T:
            with engine.begin() as conn:
                return fn(conn)

        return _retrying(self.storage.url, f"{action} the lease of study {self.study_name!r}", once)

    def holder(self) -> LeaseHolder | None:
        """The current holder, or None when the study is free."""
        table = self._table()

        def read(conn: Any) -> Any:
            return conn.execute(table.select().where(table.c.study_name == self.study_name)).first()

        row = self._run("read", read)
        if row is None:
            return None
        return LeaseHolder(
            owner=row.owner,
            acquired_at=float(row.acquired_at),
            heartbeat_at=float(row.heartbeat_at),
            expires_at=float(row.expires_at),
        )

    def acquire(self) -> LeaseHolder | None:
        """Takes the lease; returns the stale holder it took over from (None if it was free).

        Raises:
            StudyHeldError: If a live process holds it (the message names it and since when).
        """
        from sqlalchemy.exc import IntegrityError

        table = self._table()
        for _ in range(10):  # each pass loses only to a process that changed the row
            now = time.time()
            row = {
                "owner": self.owner,
                "acquired_at": now,
                "heartbeat_at": now,
                "expires_at": now + self.ttl_s,
            }

            def insert(row: dict = row) -> bool:
                try:
                    with self.storage.engine.begin() as conn:
                        conn.execute(table.insert().values(study_name=self.study_name, **row))
                except IntegrityError:
                    return False  # the row is there: someone holds (or held) the lease
                return True

            if _retrying(self.storage.url, f"take the lease of study {self.study_name!r}", insert):
                return self._took(now, None)
            holder = self.holder()
            if holder is None:
                continue  # released in between: insert again
            gone = holder.gone()
            if holder.expires_at > now and not gone:
                raise StudyHeldError(
                    f"study {self.study_name!r} is held by {holder.describe(now)}; wait, or "
                    f"stop it (a lease not renewed for {self.ttl_s:g} s is taken over)"
                )

            def swap(conn: Any, holder: LeaseHolder = holder, row: dict = row) -> int:
                return conn.execute(
                    table.update()
                    .where(table.c.study_name == self.study_name)
                    .where(table.c.owner == holder.owner)
                    .where(table.c.expires_at <= holder.expires_at)
                    .values(**row)
                ).rowcount

            if self._run("take over", swap) == 1:
                self.takeover_reason = (
                    "its process no longer exists"
                    if gone
                    else f"no heartbeat for {now - holder.heartbeat_at:.0f} s"
                )
                return self._took(now, holder)
        raise StudyHeldError(f"study {self.study_name!r}: the lease keeps changing hands; retry")

    def _took(self, now: float, previous: LeaseHolder | None) -> LeaseHolder | None:
        self.held, self.lost, self.acquired_at, self.taken_over = True, None, now, previous
        return previous

    def takeover_fields(self) -> dict[str, Any] | None:
        """The numbers of a takeover for the audit entry ``lease_takeover``; None if none."""
        previous = self.taken_over
        if previous is None:
            return None
        return {
            "previous_owner": previous.owner,
            "previous_acquired_at": _iso(previous.acquired_at),
            "previous_heartbeat_at": _iso(previous.heartbeat_at),
            "previous_expires_at": _iso(previous.expires_at),
            "reason": self.takeover_reason,
            "owner": self.owner,
        }

    def renew(self) -> bool:
        """Moves the expiry on; False (and :attr:`lost` set) if another process took it."""
        table = self._table()
        now = time.time()

        def beat(conn: Any) -> int:
            return conn.execute(
                table.update()
                .where(table.c.study_name == self.study_name)
                .where(table.c.owner == self.owner)
                .values(heartbeat_at=now, expires_at=now + self.ttl_s)
            ).rowcount

        if self._run("renew", beat) == 1:
            return True
        holder = self.holder()
        self.held = False
        self.lost = (
            f"the lease of study {self.study_name!r} was taken over by "
            f"{holder.describe() if holder else 'another process'} (no heartbeat from this "
            f"process for {self.ttl_s:g} s); stopped"
        )
        return False

    def release(self) -> None:
        """Gives the lease up (only if this process still holds it)."""
        if not self.held:
            return
        table = self._table()
        self._run(
            "release",
            lambda conn: conn.execute(
                table.delete()
                .where(table.c.study_name == self.study_name)
                .where(table.c.owner == self.owner)
            ),
        )
        self.held = False

    def check(self) -> None:
        """Raises if the lease was lost: the engine calls it at its safe points.

        Raises:
            StudyHeldError: If another process took the lease over.
        """
        if self.lost is not None:
            raise StudyHeldError(self.lost)

    # -- holding it -------------------------------------------------------------------------

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                if not self.renew():
                    return
            except Exception as exc:  # a storage hiccup: the next beat may get through
                log.warning("lease of study %s not renewed: %s", self.study_name, exc)

    def __enter__(self) -> StudyLease:
        if not self.held:
            self.acquire()
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._beat, name=f"searchlab-lease-{self.study_name}", daemon=True
        )
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
            self._thread = None
        try:
            self.release()
        except Exception as error:  # never hide why the block ended; the lease then expires
            log.warning("lease of study %s not released: %s", self.study_name, error)
