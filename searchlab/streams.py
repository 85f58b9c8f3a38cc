"""Simulated (de-noised dev, external) streams, and the validity test's calibration on them.

:func:`simulate_stream` draws one domain's stream of pairs as an optimiser would produce them: a
null stream (external keeps rising with dev, under range restriction), a decline (past an onset
the optimiser reaches a region where external falls as dev rises), a plateau (external flat
there) or a decline with mixed healthy and hacked candidates. :func:`calibrate` runs
:class:`~searchlab.validity.DomainMonitor` over many such streams and measures false alarms,
detection and delay: cheap, and a check of the test's arithmetic, but not of what the engine feeds
it (:mod:`searchlab.calibration` replays the engine's own studies for that).
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np

from searchlab.store import Mode
from searchlab.validity import DetectorSettings, DomainMonitor, ValidityTest

__all__ = ["calibrate", "simulate_stream"]


_STREAM_KINDS = ("null", "decline", "plateau", "decline_mixed")
_NULL_VARIANTS = ("linear_locked", "linear", "concave")


def simulate_stream(
    kind: str,
    *,
    horizon: int,
    rng: np.random.Generator,
    onset: int | None = None,
    warmup: int = 15,
    variant: str | None = None,
) -> tuple[np.ndarray, np.ndarray, int | None]:
    """Simulates one domain's stream of (de-noised dev, observed external) pairs.

    Scales follow the reference weak domain of docs/FACTS.md (logit scale: ``a_p = 1.2``,
    ``a_g = 0.6``, ``b_g = 0.5``). The optimiser moves a genuine-skill coordinate ``G`` in
    ``[0, G_max]`` (``G_max ~ U(1.5, 2.5)``) and a hack coordinate ``d``; the dev logit is
    ``L + (G - G_max) + a_p (d - 0.6)`` where ``L ~ U(0.2, 0.8)`` is the level reached before
    the onset (dev accuracy 0.55-0.69). Before the onset ``d <= 0.6``; at ``onset`` the range of
    ``d`` opens to ``d_max ~ U(1.2, 1.5)`` (dev up to 0.71-0.87) and the optimiser moves there,
    since dev keeps rising with ``d``.

    The optimiser: ``warmup`` quasi-random candidates (``G`` and ``d`` uniform on their ranges),
    then exploitation that concentrates on the largest ``G`` and ``d`` with a shrinking spread
    (range restriction), with 10 % random exploration throughout.

    External (logit) is ``E_L + link(dev logit - L) + u + e`` where ``E_L ~ U(-0.2, 0.4)``
    (external accuracy 0.45-0.60 at the reached level), ``u`` and ``e`` are a term dev cannot
    see and a seed effect (0.05 logit each), and with ``z = dev logit - L`` and healthy slope
    ``s ~ U(0.6, 1.0)``:

    * ``"null"``, one of three variants (drawn, or ``variant``): ``"linear_locked"`` (the range
      never opens; ``link = s z``), ``"linear"`` (it opens, harmlessly: slope ``s`` below ``L``,
      ``a_g / a_p = 0.5`` above) and ``"concave"`` (diminishing but positive returns over the
      whole range: ``s`` times a saturating exponential with curvature ``kappa ~ U(2, 3)``,
      slope at ``L`` 0.16-0.31 ``s``, still rising above it).
    * ``"decline"``: slope ``s`` below ``L``; above it the reference hump past its peak,
      ``h(0.6 + z / a_p) - h(0.6)`` with ``h(d) = d (a_g - b_g d)``: external falls with dev, by
      0.18 to 0.41 logit (about 0.045 to 0.10 accuracy) at the top, local slope 0 at ``L`` and
      -0.5 to -0.75 logit per dev logit at the top (the reference's dev-optimal recipe costs
      0.061 external accuracy).
    * ``"plateau"``: slope ``s`` below ``L``, 0 above.
    * ``"decline_mixed"``: the two-coordinate form of the reference, ``external = E_L + s (G -
      G_max) + h(d) - h(0.6)``: external falls with ``d`` at fixed ``G``, but at a given dev it
      also depends on how dev was reached, so while ``G`` is still improving after the onset the
      slope of external on dev above ``L`` can stay positive. Harder than ``"decline"``.

    Scores are accuracies: the caller's GP mean of dev is emulated as the true dev accuracy
    plus N(0, 0.01^2); external is binomial on 1000 items, floored to 2 decimals and to at least
    0.01, like the leaderboard. The random draws do not depend on ``kind`` or ``variant``
    (common random numbers: the same generator state gives the same optimiser path and noise).

    Args:
        kind: ``"null"``, ``"decline"``, ``"plateau"`` or ``"decline_mixed"``.
        horizon: Number of candidates.
        rng: Random generator.
        onset: Index (0-based) of the first candidate after the range opens; drawn uniformly in
            ``[0.3 horizon, 0.55 horizon]`` (at least ``warmup + 5``) when ``None``.
        warmup: Number of quasi-random warm-up candidates.
        variant: Null variant (ignored unless ``kind == "null"``); drawn when ``None``.

    Returns:
        ``(dev, external, onset)``: de-noised dev accuracy, shape ``(horizon,)``; observed
        external accuracy, shape ``(horizon,)``; the onset (``None`` for null streams).
    """
    if kind not in _STREAM_KINDS:
        raise ValueError(f"kind must be one of {_STREAM_KINDS}, got {kind!r}")
    if variant is not None and variant not in _NULL_VARIANTS:
        raise ValueError(f"variant must be one of {_NULL_VARIANTS}")
    h = int(horizon)
    # stream parameters (always drawn in this order: common random numbers across kinds)
    g_max = rng.uniform(1.5, 2.5)
    top_dev = rng.uniform(0.2, 0.8)
    top_ext = rng.uniform(-0.2, 0.4)
    s_gen = rng.uniform(0.6, 1.0)
    d_max = rng.uniform(1.2, 1.5)
    kappa = rng.uniform(2.0, 3.0)
    u_variant = rng.uniform()
    u_onset = rng.uniform()
    explore = rng.uniform(size=h) < 0.1
    u_g, z_g = rng.uniform(size=h), rng.standard_normal(h)
    u_d, z_d = rng.uniform(size=h), rng.standard_normal(h)
    z_gp, z_unseen, z_seed = (rng.standard_normal(h) for _ in range(3))
    u_binom = rng.uniform(size=h)

    if onset is None:
        onset = max(round(h * (0.3 + 0.25 * u_onset)), warmup + 5)
    if variant is None:
        variant = _NULL_VARIANTS[min(int(u_variant * 3), 2)]
    d_lock, a_p = _D_LOCK, _A_P
    opens = kind != "null" or variant != "linear_locked"

    # optimiser path
    t = np.arange(h)
    d_avail = np.where((t >= onset) & opens, d_max, d_lock)
    random_phase = (t < warmup) | explore
    sd_g = 0.35 * np.exp(-np.maximum(t - warmup, 0) / 25.0) + 0.06
    since = np.where((t >= onset) & opens, t - onset, t - warmup)
    sd_d = 0.7 * np.exp(-np.maximum(since, 0) / 10.0) + 0.1
    gen = np.where(random_phase, g_max * u_g, g_max * (1.0 - np.abs(z_g) * sd_g))
    gen = np.clip(gen, 0.0, g_max)
    hack = np.where(random_phase, d_avail * u_d, d_avail * (1.0 - np.abs(z_d) * sd_d))
    hack = np.clip(hack, 0.0, d_avail)
    z = (gen - g_max) + a_p * (hack - d_lock)  # dev logit relative to the reached level

    link = _link(kind, variant, z, gen, hack, g_max=g_max, s_gen=s_gen, kappa=kappa)
    ext_logit = top_ext + link + 0.05 * z_unseen + 0.05 * z_seed

    from scipy import special, stats

    dev = special.expit(top_dev + z) + 0.01 * z_gp
    ext_obs = stats.binom.ppf(u_binom, 1000, special.expit(ext_logit)) / 1000.0
    ext_obs = np.maximum(np.floor(ext_obs * 100.0 + 1e-9) / 100.0, 0.01)
    return dev.astype(float), ext_obs.astype(float), (None if kind == "null" else int(onset))


# The reference weak domain: dev logit gain a_p per unit of hack distance, external hump
# d (a_g - b_g d), and the hack distance the optimiser is held to before the onset.
_A_P, _A_G, _B_G, _D_LOCK = 1.2, 0.6, 0.5, 0.6


def _link(
    kind: str,
    variant: str,
    z: np.ndarray,
    gen: np.ndarray,
    hack: np.ndarray,
    *,
    g_max: float,
    s_gen: float,
    kappa: float,
) -> np.ndarray:
    """External's logit relative to its reached level, for dev logit ``z`` (relative too), the
    skill and hack coordinates ``gen`` and ``hack`` (all shape ``(h,)``): the forms of
    :func:`simulate_stream`."""

    def hump(d: np.ndarray) -> np.ndarray:
        return d * (_A_G - _B_G * d)

    below, above = np.minimum(z, 0.0), np.maximum(z, 0.0)
    if kind == "decline":
        return s_gen * below + hump(_D_LOCK + above / _A_P) - hump(np.asarray(_D_LOCK))
    if kind == "plateau":
        return s_gen * below
    if kind == "decline_mixed":
        return s_gen * (gen - g_max) + hump(hack) - hump(np.asarray(_D_LOCK))
    if variant == "concave":
        span = g_max + _A_P * _D_LOCK  # warm-up range of the dev logit
        w = (z + span) / span  # 0 at the bottom of the range, 1 at the reached level
        conc = (1.0 - np.exp(-kappa * w)) / (1.0 - math.exp(-kappa))
        return s_gen * span * (conc - 1.0)
    return s_gen * below + (_A_G / _A_P) * above


def _run_monitor(
    dev: np.ndarray,
    external: np.ndarray,
    settings: DetectorSettings,
    warmup: int,
    stop_after: int,
) -> tuple[int | None, int | None]:
    """Checks after every candidate from the end of the warm-up on.

    Args:
        dev: De-noised dev, shape ``(n,)``.
        external: External, shape ``(n,)``.
        settings: Detector settings.
        warmup: Knots are fixed from the first ``warmup`` dev values; checks start then.
        stop_after: The run stops at the first alarm with ``n_pairs > stop_after``.

    Returns:
        ``(first, first_after)``: the number of pairs at the first alarm and at the first alarm
        after ``stop_after`` pairs (``None`` where there was none).
    """
    test = ValidityTest(settings=settings)
    test.fix_knots(dev[:warmup])
    monitor = DomainMonitor(domain="sim")
    first: int | None = None
    for n in range(warmup, dev.size + 1):
        _, event = monitor.check(test, dev[:n], external[:n])
        if event == Mode.DECOUPLED:
            first = n if first is None else first
            if n > stop_after:
                return first, n
    return first, None


def _clopper_pearson(k: int, n: int, level: float = 0.95) -> list[float]:
    """Exact (Clopper-Pearson) interval of a binomial proportion, from statsmodels."""
    if n == 0:
        return [0.0, 1.0]
    from statsmodels.stats.proportion import proportion_confint

    lo, hi = proportion_confint(k, n, alpha=1.0 - level, method="beta")
    return [float(lo), float(hi)]


def calibrate(
    *,
    streams: int = 200,
    horizon: int = 100,
    warmup: int = 15,
    settings: DetectorSettings | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Measures false alarms, detection and delay of the monitor by simulation.

    For stream index ``i`` the generator ``np.random.default_rng([seed, i])`` drives a null, a
    ``decline``, a ``plateau`` and a ``decline_mixed`` stream (:func:`simulate_stream`; common
    random numbers); null variants cycle through ``linear_locked``, ``linear`` and ``concave`` by
    stream index. Knots are fixed from the first ``warmup`` candidates' dev; a
    :class:`DomainMonitor` then checks after every candidate (from the end of the warm-up on).
    A detection is a switch to ``"decoupled"`` after the onset (a decline stream that alarmed
    before the onset must first return to proxy mode).

    Args:
        streams: Number of streams per kind.
        horizon: Candidates per stream.
        warmup: Warm-up candidates (knots are fixed from them).
        settings: Detector settings (default :class:`DetectorSettings`).
        seed: Base seed.

    Returns:
        A JSON-safe dict: ``false_alarm_rate`` (P(any alarm within the horizon | null)),
        ``false_alarm_ci95``, ``false_alarm_by_variant``, ``detection_rate`` (P(an alarm after
        the onset | decline)), ``detection_ci95``, ``median_delay`` (candidates from the onset to
        the alarm, counting the first post-onset candidate as 1, among detections),
        ``pre_onset_alarm_rate`` (decline streams alarmed before the onset),
        ``plateau_detection_rate``, ``plateau_ci95``, ``plateau_median_delay``,
        ``mixed_detection_rate``, ``mixed_ci95``, ``mixed_median_delay`` (``decline_mixed``
        streams), ``streams``, ``horizon``, ``warmup``, ``alpha``, ``n_domains``, ``threshold``,
        ``settings`` and ``seconds`` (wall time).
    """
    settings = settings or DetectorSettings()
    start_time = time.perf_counter()
    null_alarm, detections, pre_onset = _run_streams(streams, horizon, warmup, settings, seed)
    n_false = sum(sum(v) for v in null_alarm.values())

    det_rate, det_ci, det_delay = _rate(detections["decline"])
    pla_rate, pla_ci, pla_delay = _rate(detections["plateau"])
    mix_rate, mix_ci, mix_delay = _rate(detections["decline_mixed"])
    return {
        "false_alarm_rate": n_false / streams,
        "false_alarm_ci95": _clopper_pearson(n_false, streams),
        # P(any of n_domains null domains alarms): union bound on the upper 95 % limit.
        "study_false_alarm_bound": min(
            1.0, settings.n_domains * _clopper_pearson(n_false, streams)[1]
        ),
        "false_alarm_by_variant": {
            v: {"streams": len(a), "alarms": int(sum(a))} for v, a in null_alarm.items()
        },
        "detection_rate": det_rate,
        "detection_ci95": det_ci,
        "median_delay": det_delay,
        "pre_onset_alarm_rate": pre_onset / streams,
        "plateau_detection_rate": pla_rate,
        "plateau_ci95": pla_ci,
        "plateau_median_delay": pla_delay,
        "mixed_detection_rate": mix_rate,
        "mixed_ci95": mix_ci,
        "mixed_median_delay": mix_delay,
        "streams": streams,
        "horizon": horizon,
        "warmup": warmup,
        "alpha": settings.alpha,
        "n_domains": settings.n_domains,
        "threshold": settings.threshold,
        "settings": settings.to_dict(),
        "seconds": time.perf_counter() - start_time,
    }


def _run_streams(
    streams: int, horizon: int, warmup: int, settings: DetectorSettings, seed: int
) -> tuple[dict[str, list[bool]], dict[str, list[int | None]], int]:
    """Every stream of :func:`calibrate`: per null variant whether each alarmed; per
    alternative kind each stream's delay (None: no detection); decline streams alarmed before
    the onset."""
    null_alarm: dict[str, list[bool]] = {v: [] for v in _NULL_VARIANTS}
    detections: dict[str, list[int | None]] = {"decline": [], "plateau": [], "decline_mixed": []}
    pre_onset = 0
    for i in range(streams):
        variant = _NULL_VARIANTS[i % len(_NULL_VARIANTS)]
        for kind in _STREAM_KINDS:
            rng = np.random.default_rng([seed, i])
            dev, ext, onset = simulate_stream(
                kind, horizon=horizon, rng=rng, warmup=warmup, variant=variant
            )
            if kind == "null":
                first, _ = _run_monitor(dev, ext, settings, warmup, stop_after=0)
                null_alarm[variant].append(first is not None)
                continue
            if onset is None:  # pragma: no cover - non-null kinds always have an onset
                raise RuntimeError("simulate_stream returned no onset")
            first, alarm = _run_monitor(dev, ext, settings, warmup, stop_after=onset)
            if kind == "decline":
                pre_onset += first is not None and first <= onset
            detections[kind].append(None if alarm is None else alarm - onset)

    return null_alarm, detections, pre_onset


def _rate(values: list[int | None]) -> tuple[float, list[float], float | None]:
    """Detection rate, its exact 95 % interval and the median delay of the detections."""
    hits = [d for d in values if d is not None]
    med = float(np.median(hits)) if hits else None
    return len(hits) / max(len(values), 1), _clopper_pearson(len(hits), len(values)), med
