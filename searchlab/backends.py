"""The back-end protocol, the loader, and the built-in simulated back end.

A back end turns a recipe into an artefact (training), an artefact into per-domain dev scores
(evaluation), and an artefact into per-domain external scores (one submission to the scarce
target). A study file names one in one of three ways::

    backend:
      name: simulated                        # a built-in name (BUILTIN_BACKENDS)
      name: slurm                            # an entry point of the group searchlab.backends
      name: mypackage.cluster:SlurmBackend   # module:Class, only with --trust-backend

Built-in names always work. So do the entry-point names of the group ``searchlab.backends``
(``[project.entry-points."searchlab.backends"] slurm = "mypackage.cluster:SlurmBackend"``):
the user installed the package that registers them, so they are code the user chose to trust.
An arbitrary ``module:Class`` is imported only with an explicit opt-in (``--trust-backend``, or
``SEARCHLAB_TRUST_BACKEND=1``): importing a module runs its top-level code, so without the opt-in
a study file from someone else could run any module on the path. With the opt-in, the study
file is as trusted as the code it names: only opt in for files you wrote or have read.

Whatever the name, what it resolves to must be a class with callable ``train``, ``evaluate`` and
``submit_external`` attributes; this is checked before anything is called, so a function
(``torch.hub:load``, say) is refused without running. The class is then constructed as
``Class(domains=[...], weights={...}, seed=int, **options)``. YAML is read with a safe loader
(:func:`searchlab.config.load_study_file`) and storage holds JSON only, so the back end is the
only code a study file can make run.

Artefacts are JSON-serialisable mappings (a path to an adapter folder, say): they are stored with
the candidate, so a later process (``resume``) can submit an artefact trained by an earlier one.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import math
import numbers
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from searchlab.errors import BackendError

if TYPE_CHECKING:
    from searchlab.config import StudyConfig

Artefact = dict[str, Any]


@runtime_checkable
class Backend(Protocol):
    """What searchlab needs from a back end.

    It is constructed once per process as ``Class(domains=[...], weights={domain: w},
    seed=int, **options)`` (``options``: the study file's ``backend.options``; raise
    :class:`~searchlab.errors.BackendError` naming a bad one), by ``study create``, ``resume``,
    ``coordinator``, each ``worker`` and ``study validate``. A ``module:Class`` name must be
    importable by the process: its package installed, or its folder on ``PYTHONPATH``.

    Optional methods, used when present:

    - ``check_recipe(recipe) -> None``: raises :class:`~searchlab.errors.BackendError` for a
      recipe the back end cannot train (an unknown key, say). ``study validate`` calls it on one
      recipe of the search space, so a key the back end does not know fails there and not in
      round 0.
    - ``preflight() -> list[str]``: what would stop a run that construction does not check
      (model or data files not there yet); ``study validate`` prints each as a warning.
    - ``recover_external(artefact, *, submission) -> Mapping[str, float] | None``: the score of a
      submission that was sent but whose answer was lost (a crash between sending and storing).
      Without it, such a submission is recorded as lost and never re-sent.
    - ``true_external(artefact) -> Mapping[str, float]`` and ``optimum() -> float``: the truth,
      for back ends that know it (simulations); used for regret in status and benchmarks.
      ``true_external`` may get a stand-in artefact ``{"recipe": ..., "candidate": n}`` (a
      candidate whose artefact was not stored); ``optimum`` is called at every recommendation,
      with no arguments, and is the best weighted external under the study's weights: compute
      it once and keep it.
    """

    def train(self, recipe: Mapping[str, Any], *, candidate: int, seed: int) -> Artefact:
        """Trains one candidate and returns its JSON-serialisable artefact."""
        ...

    def evaluate(self, artefact: Artefact) -> Mapping[str, float | tuple[float, int]]:
        """Per-domain dev accuracy, optionally with its item count ``(accuracy, n)``."""
        ...

    def submit_external(self, artefact: Artefact, *, submission: int) -> Mapping[str, float]:
        """Per-domain external score of one submission (may be rounded and noisy)."""
        ...


def check_scores(
    raw: Any, domains: list[str], *, what: str, candidate: int
) -> dict[str, tuple[float, int | None]]:
    """Validates per-domain scores (a back end's, or a caller's): every domain, finite,
    within [0, 1], each a number or ``(accuracy, n)``; ``what`` names them in messages."""
    if not isinstance(raw, Mapping):
        raise BackendError(
            f"candidate {candidate}: {what} returned {type(raw).__name__}, expected a mapping"
        )
    out: dict[str, tuple[float, int | None]] = {}
    for domain in domains:
        if domain not in raw:
            raise BackendError(f"candidate {candidate}: {what} has no score for domain {domain!r}")
        value = raw[domain]
        n: int | None = None
        if isinstance(value, tuple | list):
            if len(value) != 2:
                raise BackendError(
                    f"candidate {candidate}: {what}[{domain!r}] must be a number or (accuracy, n)"
                )
            value, n = value
            # Any integer type (NumPy's too), or a float that is a whole number.
            whole = (isinstance(n, numbers.Integral) and not isinstance(n, bool) and n >= 1) or (
                isinstance(n, float) and n.is_integer() and n >= 1
            )
            if not whole:
                raise BackendError(
                    f"candidate {candidate}: {what}[{domain!r}] has item count {n!r}, expected "
                    "a whole number of at least 1"
                )
            n = int(n)
        try:
            score = float(value)
        except (TypeError, ValueError, OverflowError):
            raise BackendError(
                f"candidate {candidate}: {what}[{domain!r}] is not a number: {value!r}"
            ) from None
        if not math.isfinite(score):
            raise BackendError(f"candidate {candidate}: {what}[{domain!r}] is {score}")
        if not 0.0 <= score <= 1.0:
            raise BackendError(
                f"candidate {candidate}: {what}[{domain!r}] = {score} is outside [0, 1]"
            )
        out[domain] = (score, n)
    return out


def check_dev_scores(
    raw: Any, domains: list[str], *, candidate: int
) -> dict[str, tuple[float, int | None]]:
    """Validates what ``evaluate`` returned; raises :class:`BackendError` naming the problem."""
    return check_scores(raw, domains, what="evaluate", candidate=candidate)


def check_external_scores(raw: Any, domains: list[str], *, candidate: int) -> dict[str, float]:
    """Validates what ``submit_external`` returned."""
    scores = check_scores(raw, domains, what="submit_external", candidate=candidate)
    return {d: s for d, (s, _) in scores.items()}


class SimulatedBackend:
    """Training and evaluation on a simulated post-training response surface.

    See :mod:`searchlab.simulation` for the surface. Dev is binomial accuracy on the dev items;
    an external submission returns the public half, floored to the leaderboard resolution.

    Args:
        domains: The study's domains; each must be a domain of the surface.
        weights: The study's objective weights, for the surface's optimum and regret.
        seed: The study seed; the surface instance is ``options["instance_seed"]`` or this.
        noise: False for noise-free evaluation (true accuracies, exact external).
        **options: :class:`searchlab.simulation.SurfaceConfig` fields.
    """

    def __init__(
        self,
        *,
        domains: list[str],
        weights: Mapping[str, float],
        seed: int,
        noise: bool = True,
        instance_seed: int | None = None,
        **options: Any,
    ) -> None:
        from searchlab.simulation import ResponseSurface, SurfaceConfig

        try:
            config = SurfaceConfig.from_options({"domains": tuple(domains), **options})
        except (TypeError, ValueError) as exc:
            raise BackendError(f"backend.options: {exc}") from None
        self.domains = list(domains)
        self.noise = bool(noise)
        self.surface = ResponseSurface(
            config=config,
            instance_seed=seed if instance_seed is None else int(instance_seed),
            weights=dict(weights),
        )

    def train(self, recipe: Mapping[str, Any], *, candidate: int, seed: int) -> Artefact:
        # Simulated training is the recipe plus the run seed: the surface is deterministic.
        return {"recipe": dict(recipe), "candidate": candidate, "seed": seed}

    def evaluate(self, artefact: Artefact) -> dict[str, tuple[float, int] | float]:
        recipe, candidate = artefact["recipe"], artefact["candidate"]
        if not self.noise:
            return dict(self.surface.true_dev(recipe, candidate=candidate))
        return dict(
            self.surface.observe_dev(recipe, run_seed=artefact["seed"], candidate=candidate)
        )

    def submit_external(self, artefact: Artefact, *, submission: int) -> dict[str, float]:
        return self._public_external(artefact, submission)

    def recover_external(self, artefact: Artefact, *, submission: int) -> dict[str, float]:
        # The simulated leaderboard is deterministic per submission: looking up the answer of a
        # submission sent before a crash gives what it returned, without sending it again.
        return self._public_external(artefact, submission)

    def _public_external(self, artefact: Artefact, submission: int) -> dict[str, float]:
        recipe, candidate = artefact["recipe"], artefact["candidate"]
        if not self.noise:
            return dict(self.surface.true_external(recipe, candidate=candidate))
        result = self.surface.observe_external(
            recipe, run_seed=artefact["seed"], submission=submission, candidate=candidate
        )
        return dict(result["public"])

    def true_external(self, artefact: Artefact) -> dict[str, float]:
        return dict(self.surface.true_external(artefact["recipe"], candidate=artefact["candidate"]))

    def optimum(self) -> float:
        return float(self.surface.optimum()[0])


BUILTIN_BACKENDS: dict[str, str] = {
    "simulated": "searchlab.backends:SimulatedBackend",
    # Real LoRA training (trl) and graded generation; needs the `train` extra.
    "post-training": "searchlab_training.backend:PostTrainingBackend",
}


def import_object(path: str) -> Any:
    """Imports ``module:attribute``.

    Raises:
        BackendError: naming the path when the module or attribute does not exist.
    """
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise BackendError(f"backend.name {path!r}: expected a built-in name or 'module:Class'")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise BackendError(
            f"backend.name {path!r}: cannot import {module_name!r}: {exc}; install its package "
            "or put its folder on PYTHONPATH"
        ) from None
    except Exception as exc:  # the module raising while it loads
        raise BackendError(
            f"backend.name {path!r}: cannot import {module_name!r}: {type(exc).__name__}: {exc}"
        ) from None
    try:
        return getattr(module, attr)
    except AttributeError:
        raise BackendError(f"backend.name {path!r}: {module_name!r} has no {attr!r}") from None


ENTRY_POINT_GROUP = "searchlab.backends"
TRUST_ENV = "SEARCHLAB_TRUST_BACKEND"
_METHODS = ("train", "evaluate", "submit_external")
_HOW_TO_TRUST = (
    "importing a module named in a study file runs its code, so it needs an opt-in: pass "
    f"--trust-backend (or set {TRUST_ENV}=1) if you trust this file, or register the class "
    f"under the entry-point group {ENTRY_POINT_GROUP!r} and use its name"
)


def trust_from_env() -> bool:
    """Whether ``SEARCHLAB_TRUST_BACKEND`` opts in to ``module:Class`` back ends (``1``)."""
    return os.environ.get(TRUST_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def installed_backends() -> dict[str, importlib.metadata.EntryPoint]:
    """Back ends that installed packages register in the entry-point group, by name."""
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


def check_backend_class(obj: Any, name: str) -> type:
    """Checks, without calling anything, that ``obj`` is a class with the back-end methods.

    Raises:
        BackendError: naming ``backend.name`` if ``obj`` is not a class (a function such as
            ``torch.hub:load`` is refused here, before it could run) or lacks a method.
    """
    if not inspect.isclass(obj):
        raise BackendError(
            f"backend.name {name!r} is a {type(obj).__name__}, not a class; a back end is a "
            f"class with methods {', '.join(_METHODS)}"
        )
    missing = [m for m in _METHODS if not callable(getattr(obj, m, None))]
    if missing:
        raise BackendError(f"backend.name {name!r}: class lacks method(s) {missing}")
    return obj


def resolve_backend_class(name: str, *, trust: bool | None = None) -> type:
    """Finds the back-end class a study file names, importing only what the rules allow.

    Args:
        name: A built-in name, an entry-point name of the group ``searchlab.backends``, or
            ``module:Class``.
        trust: Whether an arbitrary ``module:Class`` may be imported (``--trust-backend``).
            None reads ``SEARCHLAB_TRUST_BACKEND``.

    Raises:
        BackendError: naming ``backend.name`` if the name is unknown, is a ``module:Class``
            without the opt-in (nothing is imported then), cannot be imported, or is not a
            back-end class.
    """
    if trust is None:
        trust = trust_from_env()
    installed = installed_backends() if name not in BUILTIN_BACKENDS else {}
    if name in BUILTIN_BACKENDS:
        obj = import_object(BUILTIN_BACKENDS[name])
    elif name in installed:
        try:
            obj = installed[name].load()
        except Exception as exc:  # the registering package is broken or half-installed
            raise BackendError(
                f"backend.name {name!r}: entry point {installed[name].value!r} cannot be "
                f"loaded: {type(exc).__name__}: {exc}"
            ) from None
    elif ":" not in name:
        known = sorted(BUILTIN_BACKENDS) + sorted(installed)
        raise BackendError(
            f"backend.name {name!r}: unknown back end; known: {', '.join(known)}, "
            "or 'module:Class' with --trust-backend"
        )
    elif not trust:
        raise BackendError(f"backend.name {name!r}: {_HOW_TO_TRUST}")
    else:
        obj = import_object(name)
    return check_backend_class(obj, name)


def load_backend(
    name: str,
    options: Mapping[str, Any],
    *,
    domains: list[str],
    weights: Mapping[str, float],
    seed: int,
    trust: bool | None = None,
) -> Backend:
    """Constructs the back end a study file names.

    Args:
        name: A built-in name (``simulated``), an entry-point name of the group
            ``searchlab.backends``, or ``module:Class`` (only with ``trust``).
        options: Keyword arguments for the class.
        domains: The study's domain names.
        weights: The study's objective weights.
        seed: The study seed.
        trust: Whether an arbitrary ``module:Class`` may be imported; None reads
            ``SEARCHLAB_TRUST_BACKEND``. Passed explicitly, not kept as global state.

    Raises:
        BackendError: If the name is not allowed, or the class cannot be imported, is not a
            back-end class, or cannot be constructed.
    """
    cls = resolve_backend_class(name, trust=trust)
    try:
        backend = cls(domains=list(domains), weights=dict(weights), seed=seed, **dict(options))
    except BackendError:
        raise
    except Exception as exc:
        raise BackendError(
            f"backend {name!r} could not be constructed: {type(exc).__name__}: {exc}"
        ) from None
    missing = [m for m in _METHODS if not callable(getattr(backend, m, None))]
    if missing:
        raise BackendError(f"backend {name!r} lacks method(s) {missing}")
    return backend


def backend_for(config: StudyConfig, *, trust: bool | None = None) -> Backend:
    """Constructs the back end a validated study configuration names (its seed included).

    Args:
        config: The study configuration.
        trust: Whether a ``module:Class`` back end may be imported (see :func:`load_backend`).
    """
    return load_backend(
        config.backend.name,
        config.backend.options,
        domains=config.domain_names,
        weights=config.weights,
        seed=config.seed,
        trust=trust,
    )
