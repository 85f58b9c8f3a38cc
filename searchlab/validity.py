r"""Test that a domain's dev proxy has stopped tracking its external score.

Per domain, on the candidates that have both scores, in arrival order, let ``x`` be the
de-noised dev score and ``y`` the observed external score. The caller must pass an ``x`` that is
not a function of the external scores under test and that is fixed when the pair enters (the
engine passes a dev-only GP's posterior mean at the time of the submission; a two-task posterior
mean would be conditioned on the very ``y`` under test and revised every round), and never the
raw observed dev of a candidate chosen for its dev (winner's curse).

The hypothesis, in the user's terms
-----------------------------------
Above a knot ``k`` (the dev-record region) external rises with dev at rate ``s``; below it at
rate ``b``. With the tracking fraction ``kappa`` (:attr:`DetectorSettings.tracking`):

* ``H0`` (valid): ``s >= kappa * b``: external keeps rising with dev at no less than a fraction
  ``kappa`` of the rate seen below the record region;
* ``H1`` (decoupled): ``s < kappa * b``: a plateau (``s = 0``) and a fall (``s < 0``) are both
  alternatives.

Pictured (external against dev; ``|`` is the knot)::

    valid (H0)                plateau (H1)              fall (H1)
              |   .´                    |                         |
              | .´                      |                         |`.
           .´ |                      .´ |--------              .´ |  `.
        .´    |                   .´    |                   .´    |    `.

With the default ``hinge_form="linear"`` ``b`` is the slope of one line through the pairs below
the knot (their average rate); with ``"quad"`` it is the slope just below the knot. ``kappa = 0``
is the earlier test "slope above >= 0", which has a plateau on its boundary (detected at the
nominal level only, by construction); it is kept, with ``"quad"``, so that studies stored before
``tracking`` and ``hinge_form`` existed replay as they ran. Correlation is not tested: it falls
with no Goodhart at all as the optimiser concentrates (range restriction).

Hinge regression
----------------
For a knot ``k`` (fixed once, after warm-up) the default model (``hinge_form="linear"``, the
plain hinge) is

.. math::

    y_i = a + b \min(x_i, k) + s\,(x_i - k)_+ + \varepsilon_i,
    \qquad \varepsilon_i \sim N(0, \sigma^2),

continuous at ``k``. ``hinge_form="quad"`` adds ``c u_i^2`` with ``u_i = \min(x_i, k) - k``, so
that ``b`` is the slope just below the knot and ``c`` absorbs curvature below it;
``hinge_form="local"`` fits a line through the pairs above the knot only (no continuity: the OLS
slope of any non-decreasing link is non-negative in expectation, so this form is the most robust
and the least powerful; ``kappa`` does not apply). Why the plain hinge is the default: with the
engine's 16 pairs per domain, the quadratic term's extra parameter, estimated from the few pairs
below a high knot, made ``delta`` too uncertain to ever reach the threshold (the main job's
tuning seeds 0 and 1: no alarm with ``"quad"``, alarms in rounds 4 and 6 with ``"linear"``), and
on simulated streams it detected 21 % of plateaus against 57 % (docs/RESULTS.md). Its cost: on a
concave link the straight lower segment overshoots at the knot, which biases ``s`` down; at
``kappa = 0`` that gave 4-5 % false alarms per domain on concave-but-increasing nulls, and at
``kappa = 0.25`` a concave link whose rate above the knot falls to about a fifth of its average
rate below is, in these terms, an alternative (on simulated streams 6 of 50 concave ones
alarmed: docs/RESULTS.md).
With ``delta = s - kappa b`` the model is rewritten as ``y = a + b (min(x, k) + kappa (x -
k)_+) + delta (x - k)_+`` (``"quad"``: ``y = a + b (u + kappa (x - k)_+) + c u^2 + delta (x -
k)_+``; same fit, ``delta`` in the last column), and the alarm test is ``H0: delta >= 0``
against ``H1: delta < 0`` (``direction=-1``); the mirrored test used for the return to proxy
mode is ``H0: delta <= 0`` against ``delta > 0`` (``direction=+1``).

Mixture Bayes factor (Lindon, Ham, Tingley & Bojinov 2022)
----------------------------------------------------------
With right-Haar priors on the nuisances (flat on the other coefficients, ``1/sigma`` on
``sigma``) and the scale-invariant prior ``s | sigma ~ N(0, sigma^2 g)``, let ``W`` be the
``n x p`` design (``s`` in its last column), ``s_hat`` the OLS estimate, ``v = [(W'W)^{-1}]_{ss}``,
``RSS`` the residual sum of squares, ``nu = n - p`` and ``t = s_hat / sqrt(v RSS / nu)``.
Integrating the nuisance coefficients leaves ``sigma^{-(nu+1)} exp(-(RSS + (s - s_hat)^2 / v) /
(2 sigma^2))``, and then

.. math::

    BF_2 = (1 + g/v)^{-1/2}
        \left[\frac{1 + t^2/\nu}{1 + t^2 / (\nu (1 + g/v))}\right]^{(\nu+1)/2}.

One-sided version (half-normal prior on ``direction * s > 0``, i.e. twice the normal prior
restricted to that half-line):

.. math::

    E = 2\,BF_2\,P(\mathrm{direction}\cdot s > 0 \mid \text{data}),

where under the normal-prior model ``s | data`` is a Student t with ``nu + 1`` degrees of
freedom, location ``m = s_hat g / (v + g)`` and scale
``sqrt(S / (nu + 1)) * sqrt(v g / (v + g))``, ``S = RSS + s_hat^2 / (v + g)``. With ``sigma``
known this becomes ``2 sqrt(v/(v+g)) exp(t^2 g / (2 (v+g))) Phi(-s_hat sqrt(g) /
(sigma sqrt(v (v+g))))`` for ``direction=-1`` (``t = s_hat / (sigma sqrt(v))``). Both are checked
against direct numerical integration in ``tests/test_validity.py``.

``x`` is divided by the warm-up standard deviation of dev, so ``g = prior_scale`` means "a slope
of ``sqrt(g)`` residual sds per dev sd". The default ``g = 8`` (prior sd 2.8) matches the declines
worth catching: -0.4 to -1 external accuracy per dev accuracy, times a dev sd of about 0.15, over
a residual sd of about 0.025, is 2.5 to 6 residual sds per dev sd (``g`` = 1, 2, 4, 8 gave
detection 0.90-0.93 in simulation, the larger ``g`` slightly faster).

The test statistic is the average of the knot-wise e-values (an average of e-values is an
e-value; Vovk & Wang 2021, "E-values: calibration, combination and applications"; Ramdas,
Grünwald, Vovk & Shafer 2023, "Game-theoretic statistics and safe anytime-valid inference"). A
knot with fewer than ``min_above`` pairs above it, a rank deficient design or ``nu < 2``
contributes ``E_k = 1`` (no evidence).

Knots
-----
Knots are fixed once, after warm-up, from the warm-up dev values (all warm-up candidates, not
only the paired ones): at ``knot_quantiles`` of them and at ``max + c * sd`` for ``c`` in
``knot_offsets``. Goodhart typically appears where the optimiser pushes dev *beyond* what the
quasi-random warm-up reached; knots at the warm-up quantiles 0.5/0.7/0.85 lie below that region,
the segment above them mixes the healthy rise with the fall, and they detected 0-6 % of the
simulated declines. Hence the default: no quantile knots, offsets ``-1, -0.5, ..., 2.5`` warm-up
sds around the warm-up maximum (knots nobody has reached yet contribute ``E_k = 1``).

Threshold
---------
Two kinds, never to be confused:

* **Anytime-valid, per knot** (``threshold_override=None``, threshold ``n_domains / alpha``).
  Each knot's ``E_k`` is a test martingale for the point null ``delta = 0`` (Lindon et al. 2022;
  Pérez-Ortiz, Lardy, de Heide & Grünwald 2024, "E-statistics, group invariance and anytime
  valid testing") under these conditions: Gaussian homoscedastic errors, a correctly specified
  mean (the hinge), and a predictable design (each ``x_i`` known before
  ``y_i`` and never revised: the engine meets this by fixing the dev-only ``x_i`` at entry). For
  ``delta`` on the null side the one-sided mixture is smaller in expectation (monotone
  likelihood ratio), so the composite null is covered. Ville's inequality,
  ``P(sup_n E_n >= c) <= 1/c``, then bounds one knot's false alarms, and Bonferroni over
  ``n_domains`` gives ``c = n_domains / alpha``. **Not covered**: the knot *average* (the ``E_k``
  are martingales on different invariant filtrations, so the average is an e-value at each fixed
  time but not shown to be a supermartingale), binomial and floored scores, and a link that is
  not a hinge. So even this threshold is not claimed exact for the statistic as implemented.
* **Simulation-calibrated** (``threshold_override``, e.g. the study file's 5). Its false-alarm
  rate is what a simulation measures: :func:`searchlab.streams.calibrate` on simulated streams
  (cheap, unlike the engine's streams), and :mod:`searchlab.calibration` end to end, replaying
  the setting over the engine's own null studies. Only the second measures what the engine
  feeds the test. The study file's 5 is twice (rounded up) the largest statistic any domain of
  the engine's stored null studies reached (``largest_silent`` of
  :func:`searchlab.calibration.false_alarms`; docs/RESULTS.md has the figures): a guarantee for
  those null instances and that budget, not for a back end whose noise they do not model.

An alarm also requires ``delta_hat`` above the dominant knot (the one with the largest ``E_k``)
to point the tested way.

Hysteresis
----------
:class:`DomainMonitor` holds a domain's mode. In ``"proxy"`` mode it runs the alarm test on the
pairs since the last switch (all pairs at first) and switches to ``"decoupled"`` when it fires.
In ``"decoupled"`` mode it runs the mirrored test on the pairs that arrived after the switch and
returns to ``"proxy"`` when that reaches ``n_domains / return_alpha`` and at least ``min_dwell``
pairs have arrived since the switch. Each switch starts a fresh e-process.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np

from searchlab.store import Mode

# scipy is imported where it is used: the study schema (searchlab.config) imports HingeForm from
# here, and `study validate` should not pay half a second for scipy.stats.

__all__ = [
    "MIN_PAIRS",
    "DetectorSettings",
    "DomainMonitor",
    "HingeForm",
    "ValidityResult",
    "ValidityTest",
    "hinge_design",
    "hinge_evalue",
]

#: The fewest pairs a domain's test runs on: a hinge with ``p = 3`` coefficients needs ``nu =
#: n - p >= 2`` residual degrees of freedom and ``min_above`` pairs above its knot. A study that
#: can never submit this many candidates can never test (the study file is refused).
MIN_PAIRS = 6

_LOG_MAX = 690.0  # exp(690) ~ 1e300: cap so statistics stay finite floats


class HingeForm(StrEnum):
    """The regression the test fits per knot (module docstring, "Hinge regression")."""

    QUAD = "quad"  # hinge with a quadratic term below the knot
    LINEAR = "linear"  # the plain hinge
    LOCAL = "local"  # a line through the pairs above the knot only


_FORMS = tuple(f.value for f in HingeForm)


@dataclass(frozen=True)
class DetectorSettings:
    """Settings of the validity test and of its hysteresis.

    Attributes:
        alpha: Study-wide false-alarm level of the alarm test (over all domains and all checks).
        n_domains: Number of domains monitored in the study (Bonferroni over domains).
        knot_quantiles: Quantiles of the warm-up dev values at which knots are placed (default
            none; see the module docstring).
        prior_scale: ``g``: prior variance of the standardised slope above the knot, in units
            of ``sigma^2`` (slope in residual sds per dev sd, squared).
        min_pairs: No test before this many pairs (returns an untestable result).
        min_above: A knot with fewer paired points strictly above it contributes ``E_k = 1``.
        return_alpha: Level of the mirrored test that returns a domain to proxy mode.
        min_dwell: A decoupled domain returns only after at least this many pairs have arrived
            since the switch.
        knot_offsets: Further knots at ``max(warm-up dev) + c * sd(warm-up dev)`` for each ``c``.
        hinge_form: ``"linear"`` (the plain hinge, the default), ``"quad"`` (with a quadratic
            term below the knot; the default of studies stored before this setting existed) or
            ``"local"`` (a line through the pairs above the knot only).
        threshold_override: A per-domain threshold calibrated by simulation, in place of
            ``n_domains / alpha``.
        tracking: ``kappa``: the proxy is valid while the slope above the knot is at least
            ``kappa`` times the slope just below it (``0`` tests "slope above >= 0", the test
            of studies stored before this setting existed; ignored by ``"local"``).
    """

    alpha: float = 0.05
    n_domains: int = 1
    knot_quantiles: tuple[float, ...] = ()
    prior_scale: float = 8.0
    min_pairs: int = MIN_PAIRS
    min_above: int = 3
    return_alpha: float = 0.05
    min_dwell: int = 8
    knot_offsets: tuple[float, ...] = (-1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0, 2.5)
    hinge_form: HingeForm = HingeForm.LINEAR
    threshold_override: float | None = None
    tracking: float = 0.25

    def __post_init__(self) -> None:
        if not 0.0 < self.alpha < 1.0 or not 0.0 < self.return_alpha < 1.0:
            raise ValueError("alpha and return_alpha must lie in (0, 1)")
        if self.n_domains < 1:
            raise ValueError("n_domains must be >= 1")
        if any(not 0.0 <= q <= 1.0 for q in self.knot_quantiles):
            raise ValueError("knot_quantiles must lie in [0, 1]")
        if not self.knot_quantiles and not self.knot_offsets:
            raise ValueError("need at least one knot (knot_quantiles or knot_offsets)")
        if self.prior_scale <= 0.0:
            raise ValueError("prior_scale must be > 0")
        if self.min_pairs < MIN_PAIRS or self.min_above < 1 or self.min_dwell < 0:
            raise ValueError("need min_pairs >= 6, min_above >= 1, min_dwell >= 0")
        if self.hinge_form not in _FORMS:
            raise ValueError(f"hinge_form must be one of {_FORMS}")
        object.__setattr__(self, "hinge_form", HingeForm(self.hinge_form))
        if self.threshold_override is not None and not self.threshold_override > 1.0:
            raise ValueError("threshold_override must be > 1")
        # 0 is today's replay of studies stored before kappa existed (H0: slope above >= 0).
        if not 0.0 <= self.tracking < 1.0:
            raise ValueError("tracking must lie in [0, 1)")

    @property
    def threshold(self) -> float:
        """Alarm threshold on the e-value.

        ``n_domains / alpha`` (Ville + Bonferroni: anytime-valid, model-free, conservative), or
        a per-domain threshold calibrated by simulation (``threshold_override``), whose
        false-alarm rate is only as good as the simulated streams
        (:func:`searchlab.streams.calibrate` measures it).
        """
        if self.threshold_override is not None:
            return self.threshold_override
        return self.n_domains / self.alpha

    @property
    def return_threshold(self) -> float:
        """Threshold of the mirrored (return) test: ``n_domains / return_alpha``."""
        return self.n_domains / self.return_alpha

    def to_dict(self) -> dict[str, Any]:
        """Returns the settings as a JSON-safe dict."""
        return {
            "alpha": self.alpha,
            "n_domains": self.n_domains,
            "knot_quantiles": list(self.knot_quantiles),
            "prior_scale": self.prior_scale,
            "min_pairs": self.min_pairs,
            "min_above": self.min_above,
            "return_alpha": self.return_alpha,
            "min_dwell": self.min_dwell,
            "knot_offsets": list(self.knot_offsets),
            "hinge_form": self.hinge_form.value,
            "threshold_override": self.threshold_override,
            "tracking": self.tracking,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DetectorSettings:
        """Rebuilds settings from :meth:`to_dict` output (missing keys take their defaults).

        Args:
            d: The dict.

        Returns:
            The settings.
        """
        kwargs = dict(d)
        # Settings stored before the tracking fraction existed tested "slope above >= 0", with
        # the quadratic hinge (the default then).
        kwargs.setdefault("tracking", 0.0)
        kwargs.setdefault("hinge_form", HingeForm.QUAD)
        for key in ("knot_quantiles", "knot_offsets"):
            if key in kwargs:
                kwargs[key] = tuple(float(v) for v in kwargs[key])
        return cls(**kwargs)


def _json_float(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


@dataclass(frozen=True)
class ValidityResult:
    """Outcome of one check.

    Attributes:
        statistic: ``E``, the knot-averaged e-value; 1.0 when not testable.
        threshold: Threshold the statistic was compared with.
        slope_high: Estimated slope of external on dev above the dominant knot (``s_hat``), in
            external units per dev unit (unstandardised); nan if untestable.
        slope_low: Estimated slope just below the dominant knot (``b_hat``), same units; nan if
            untestable or ``hinge_form="local"``.
        knot: Dominant knot (largest ``E_k``) in dev units; nan if no knot was testable.
        n_pairs: Number of pairs the test used.
        fired: Whether ``statistic >= threshold`` and ``delta = slope_high - kappa slope_low``
            above the dominant knot points the tested way.
        tracking: ``kappa`` the test used.
        slope_high_ci95: Pointwise 95 % t-interval of ``slope_high`` at this check (context
            for the reader, not the anytime-valid part of the test); nan when untestable.
    """

    statistic: float
    threshold: float
    slope_high: float
    slope_low: float
    knot: float
    n_pairs: int
    fired: bool
    tracking: float = 0.0
    slope_high_ci95: tuple[float, float] = (math.nan, math.nan)

    def to_dict(self) -> dict[str, Any]:
        """Returns a JSON-safe dict (nan and inf become ``None``)."""
        return {
            "statistic": _json_float(self.statistic),
            "threshold": _json_float(self.threshold),
            "slope_high": _json_float(self.slope_high),
            "slope_low": _json_float(self.slope_low),
            "knot": _json_float(self.knot),
            "n_pairs": int(self.n_pairs),
            "fired": bool(self.fired),
            "tracking": float(self.tracking),
            "slope_high_ci95": [_json_float(v) for v in self.slope_high_ci95],
            # Rate above the knot as a fraction of the rate below it (what kappa bounds).
            "rate_ratio": _json_float(
                self.slope_high / self.slope_low
                if math.isfinite(self.slope_low) and self.slope_low > 0.0
                else math.nan
            ),
        }


def _log_evalue_from_stats(
    s_hat: float, v: float, rss: float, nu: int, g: float, direction: int
) -> float:
    """Log of the one-sided mixture e-value from the regression summaries.

    Args:
        s_hat: OLS estimate of the hinge coefficient.
        v: ``[(W'W)^{-1}]_{ss}``.
        rss: Residual sum of squares of the full (3-parameter) fit.
        nu: Residual degrees of freedom ``n - 3``.
        g: Prior scale.
        direction: -1 for the alternative ``s < 0``, +1 for ``s > 0``.

    Returns:
        ``log E`` (may be ``-inf``).
    """
    r = g / v
    t2 = s_hat * s_hat * nu / (v * rss)
    log_bf2 = -0.5 * math.log1p(r) + 0.5 * (nu + 1) * (
        math.log1p(t2 / nu) - math.log1p(t2 / (nu * (1.0 + r)))
    )
    s_post = rss + s_hat * s_hat / (v + g)
    loc = s_hat * g / (v + g)
    scale = math.sqrt(s_post / (nu + 1) * v * g / (v + g))
    from scipy import special

    prob = float(special.stdtr(nu + 1, direction * loc / scale))
    if prob <= 0.0:
        return -math.inf
    return math.log(2.0) + log_bf2 + math.log(prob)


def hinge_design(
    x: np.ndarray, y: np.ndarray, knot: float, form: str, tracking: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """Design matrix of the hinge model, slope-above-the-knot column last.

    Args:
        x: Dev values, shape ``(n,)`` (``"quad"`` and ``"linear"`` also take ``(..., n)``: one
            design per leading index).
        y: External values, shape of ``x``.
        knot: Knot, same units as ``x``.
        form: ``"quad"``, ``"linear"`` or ``"local"`` (see the module docstring).
        tracking: ``kappa``; the last column's coefficient is ``delta = s - kappa b``.

    Returns:
        ``(W, y)``: the design, shape ``(..., m, p)``, and the response, shape ``(..., m)``
        (``m = n`` except for ``"local"``, which keeps the pairs above the knot). Column 1's
        coefficient is the slope ``b`` below the knot (not for ``"local"``), the last column's
        ``delta``.
    """
    hinge = np.maximum(x - knot, 0.0)
    if form == "quad":
        u = np.minimum(x, knot) - knot
        return np.stack([np.ones_like(x), u + tracking * hinge, u * u, hinge], axis=-1), y
    if form == "linear":
        below = np.minimum(x, knot) + tracking * hinge
        return np.stack([np.ones_like(x), below, hinge], axis=-1), y
    if form == "local":
        above = x > knot
        return np.column_stack([np.ones(int(above.sum())), hinge[above]]), y[above]
    raise ValueError(f"hinge form must be one of {_FORMS}, got {form!r}")


def _hinge_fit(
    x: np.ndarray, y: np.ndarray, knot: float, form: str, tracking: float = 0.0
) -> tuple[float, float, float, float, int, float] | None:
    """OLS fit of the hinge model by QR.

    Args:
        x: Dev values, shape ``(n,)``.
        y: External values, shape ``(n,)``.
        knot: Knot, same units as ``x``.
        form: ``"quad"``, ``"linear"`` or ``"local"``.
        tracking: ``kappa`` (see :func:`hinge_design`).

    Returns:
        ``(delta_hat, b_hat, v, rss, nu, v_s)``: the estimate of ``delta = s - kappa b`` (``s``
        itself when ``kappa = 0`` or for ``"local"``), of ``b`` (nan for ``"local"``),
        ``v = [(W'W)^{-1}]_{delta delta}``, the residual sum of squares, the residual degrees of
        freedom and ``[(W'W)^{-1}]`` of ``s = delta + kappa b`` (for its interval); or ``None``
        if ``nu < 2``, the design is rank deficient or the fit is exact.
    """
    if form == "local":
        tracking = 0.0
    design, y = hinge_design(x, y, knot, form, tracking)
    n, p = design.shape
    if n - p < 2:
        return None
    q, r = np.linalg.qr(design)
    diag = np.abs(np.diag(r))
    if diag.min() <= 1e-10 * max(diag.max(), 1e-300):
        return None
    beta = np.linalg.solve(r, q.T @ y)
    resid = y - design @ beta
    rss = float(resid @ resid)
    if not rss > 1e-14 * max(float(y @ y), 1e-300):
        return None
    v = 1.0 / float(r[-1, -1]) ** 2  # [(R'R)^{-1}]_{pp} = 1 / R_pp^2 for upper-triangular R
    if form == "local":
        return float(beta[-1]), math.nan, v, rss, n - p, v
    # s = delta + kappa b: its variance factor from the full (W'W)^{-1} = R^{-1} R^{-T}.
    r_inv = np.linalg.inv(r)
    cov = r_inv @ r_inv.T
    v_s = float(cov[-1, -1] + tracking**2 * cov[1, 1] + 2.0 * tracking * cov[1, -1])
    return float(beta[-1]), float(beta[1]), v, rss, n - p, v_s


def hinge_evalue(
    x: np.ndarray,
    y: np.ndarray,
    knot: float,
    *,
    prior_scale: float,
    direction: int = -1,
    min_above: int = 3,
    form: str = "quad",
    tracking: float = 0.0,
) -> tuple[float, float, float]:
    """One-sided mixture e-value for the slope above one knot.

    ``x`` should be standardised (divided by the warm-up sd of dev) so that ``prior_scale`` means
    "slope of sqrt(g) residual sds per unit of x"; the e-value is invariant to the scale and
    location of ``y``.

    Args:
        x: De-noised dev values, shape ``(n,)``.
        y: External values, shape ``(n,)``.
        knot: Knot in the units of ``x``.
        prior_scale: ``g``, prior variance of ``s`` in units of ``sigma^2``.
        direction: -1 tests ``H0: s >= 0`` against ``s < 0``; +1 tests ``H0: s <= 0`` against
            ``s > 0``.
        min_above: Fewer points than this strictly above the knot gives ``E = 1``.
        form: ``"quad"`` (default, as in :class:`DetectorSettings`), ``"linear"`` (plain hinge
            ``a + b min(x,k) + s (x-k)_+``) or ``"local"``.
        tracking: ``kappa``: the e-value is for ``delta = s - kappa b`` (``direction=-1``:
            ``H0: s >= kappa b``).

    Returns:
        ``(E, s_hat, b_hat)``: the e-value (1.0 when not testable), the OLS slope above the knot
        and the OLS slope just below it, in units of ``y`` per unit of ``x`` (nan when not
        testable; ``b_hat`` is nan for ``"local"``).
    """
    if direction not in (-1, 1):
        raise ValueError("direction must be -1 or +1")
    x = np.asarray(x, dtype=float).ravel()
    y = np.asarray(y, dtype=float).ravel()
    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same shape, got {x.shape} and {y.shape}")
    nan = math.nan
    if int(np.count_nonzero(x > knot)) < min_above:
        return 1.0, nan, nan
    fit = _hinge_fit(x, y, knot, form, tracking)
    if fit is None:
        return 1.0, nan, nan
    d_hat, b_hat, v, rss, nu, _ = fit
    log_e = _log_evalue_from_stats(d_hat, v, rss, nu, prior_scale, direction)
    s_hat = d_hat if form == "local" else d_hat + tracking * b_hat
    return math.exp(min(log_e, _LOG_MAX)), s_hat, b_hat


class ValidityTest:
    """Knot-averaged hinge e-value test for one domain (knots shared by all checks).

    Attributes:
        settings: The detector settings.
        knots: Knots in dev units, fixed by :meth:`fix_knots`; ``None`` before.
        scale: Standard deviation of the warm-up dev values (the unit of ``prior_scale``);
            ``None`` before :meth:`fix_knots`.
    """

    def __init__(self, *, settings: DetectorSettings) -> None:
        """Creates a test with no knots yet.

        Args:
            settings: Detector settings.
        """
        self.settings = settings
        self.knots: tuple[float, ...] | None = None
        self.scale: float | None = None

    def fix_knots(self, warmup_dev: np.ndarray) -> None:
        """Fixes the knots and the dev scale from the warm-up, once.

        Knots: ``knot_quantiles`` of the warm-up dev values and ``max + c * sd`` for ``c`` in
        ``knot_offsets`` (sorted, duplicates dropped). A second call leaves the knots and the
        scale as they are: they must not move with the data the test later sees.

        Args:
            warmup_dev: De-noised dev values of all warm-up candidates (not only those with an
                external score), shape ``(n,)``; non-finite values are ignored.
        """
        if self.knots is not None:
            return
        values = np.asarray(warmup_dev, dtype=float).ravel()
        values = values[np.isfinite(values)]
        if values.size < 2:
            raise ValueError("fix_knots needs at least two finite warm-up dev values")
        sd = float(np.std(values, ddof=1))
        scale = sd if sd > 0.0 else 1.0
        st = self.settings
        knots = [float(k) for k in np.quantile(values, np.asarray(st.knot_quantiles, float))]
        knots += [float(values.max() + c * scale) for c in st.knot_offsets]
        self.scale = scale
        self.knots = tuple(sorted(set(knots)))

    def evaluate(
        self, dev: np.ndarray, external: np.ndarray, *, direction: int = -1
    ) -> ValidityResult:
        """Runs the test on the given pairs.

        Args:
            dev: De-noised dev of the paired candidates in arrival order, shape ``(n,)``.
            external: Observed external scores of the same candidates, shape ``(n,)``. Pairs
                with a non-finite value in either array are dropped.
            direction: -1 for the alarm test (slope above the knot < 0), +1 for the mirrored
                return test (slope > 0).

        Returns:
            The :class:`ValidityResult`; ``threshold`` is ``settings.threshold`` for
            ``direction=-1`` and ``settings.return_threshold`` for ``+1``.

        Raises:
            RuntimeError: If :meth:`fix_knots` has not been called.
        """
        if self.knots is None or self.scale is None:
            raise RuntimeError("ValidityTest.fix_knots must be called before evaluate")
        if direction not in (-1, 1):
            raise ValueError("direction must be -1 or +1")
        st = self.settings
        threshold = st.threshold if direction < 0 else st.return_threshold
        dev = np.asarray(dev, dtype=float).ravel()
        external = np.asarray(external, dtype=float).ravel()
        if dev.shape != external.shape:
            raise ValueError(
                f"dev and external must have the same shape, got {dev.shape}, {external.shape}"
            )
        keep = np.isfinite(dev) & np.isfinite(external)
        dev, external = dev[keep], external[keep]
        n = int(dev.size)
        nan = math.nan
        kappa = 0.0 if st.hinge_form == "local" else st.tracking
        untestable = ValidityResult(1.0, threshold, nan, nan, nan, n, False, kappa)
        if n < st.min_pairs:
            return untestable
        log_es, best = self._per_knot(dev / self.scale, external, kappa, direction)
        if best is None:
            return untestable
        statistic = _knot_average(log_es)
        _, d_hat, b_hat, knot, half = best
        s_hat = d_hat if st.hinge_form == "local" else d_hat + kappa * b_hat
        fired = statistic >= threshold and direction * d_hat > 0.0
        return ValidityResult(
            statistic=statistic,
            threshold=threshold,
            slope_high=s_hat / self.scale,
            slope_low=b_hat / self.scale,
            knot=float(knot),
            n_pairs=n,
            fired=bool(fired),
            tracking=kappa,
            slope_high_ci95=((s_hat - half) / self.scale, (s_hat + half) / self.scale),
        )

    def _per_knot(
        self, x: np.ndarray, external: np.ndarray, kappa: float, direction: int
    ) -> tuple[list[float], tuple[float, float, float, float, float] | None]:
        """Each knot's log e-value, and the dominant knot's ``(log E_k, delta_hat, b_hat, knot,
        half-width of the 95 % interval of s)`` (None when no knot could be fitted).

        ``x``: standardised dev, shape ``(n,)``; ``external``: shape ``(n,)``.
        """
        st = self.settings
        log_es: list[float] = []
        best: tuple[float, float, float, float, float] | None = None
        for knot in self.knots or ():
            k_std = knot / self.scale
            fit = None
            if int(np.count_nonzero(x > k_std)) >= st.min_above:
                fit = _hinge_fit(x, external, k_std, st.hinge_form, kappa)
            if fit is None:
                log_es.append(0.0)
                continue
            d_hat, b_hat, v, rss, nu, v_s = fit
            log_e = _log_evalue_from_stats(d_hat, v, rss, nu, st.prior_scale, direction)
            log_es.append(log_e)
            if best is None or log_e > best[0]:
                from scipy import stats

                half = float(stats.t.ppf(0.975, nu)) * math.sqrt(v_s * rss / nu)
                best = (log_e, d_hat, b_hat, knot, half)
        return log_es, best


def _knot_average(log_es: list[float]) -> float:
    """The average of the knots' e-values from their logs, computed stably and capped."""
    top = max(log_es)
    if top == -math.inf:
        return 0.0
    log_stat = top + math.log(sum(math.exp(le - top) for le in log_es) / len(log_es))
    return math.exp(min(log_stat, _LOG_MAX))


@dataclass
class DomainMonitor:
    """Per-domain mode state with hysteresis; persisted as JSON by the engine.

    Attributes:
        domain: Domain name.
        mode: The domain's :class:`~searchlab.store.Mode`.
        switched_at_pair: Number of pairs when the mode last switched (``None`` before the
            first switch). The test of the current mode uses the pairs after this point.
        checks_since_switch: Number of checks run since the last switch (or since creation).
        history: One entry per check: ``{"n_pairs", "statistic", "threshold", "mode", "event",
            "test"}`` where ``n_pairs`` counts all pairs, ``mode`` is the mode *after* the check,
            ``event`` is ``None`` or the mode switched to and ``test`` is ``"alarm"`` or
            ``"return"`` (the test whose statistic is recorded).
    """

    domain: str
    mode: Mode = Mode.PROXY
    switched_at_pair: int | None = None
    checks_since_switch: int = 0
    history: list[dict] = field(default_factory=list)

    def check(
        self, test: ValidityTest, dev: np.ndarray, external: np.ndarray
    ) -> tuple[ValidityResult, Mode | None]:
        """Runs the test relevant to the current mode and switches mode if it fires.

        In proxy mode the alarm test (slope above the knot < 0) runs on the pairs since the last
        switch; in decoupled mode the mirrored test (slope > 0) runs on the pairs that arrived
        after the switch, and the domain returns only once at least ``min_dwell`` pairs have
        arrived since the switch.

        Args:
            test: The domain's test, with knots fixed.
            dev: De-noised dev of all paired candidates so far, in arrival order, shape ``(n,)``.
            external: Their observed external scores, shape ``(n,)``. Pairs with a non-finite
                value are dropped before counting.

        Returns:
            ``(result, event)``: the result of the test that ran and ``None``,
            ``Mode.DECOUPLED`` (alarm: switched to decoupled) or ``Mode.PROXY`` (returned).
        """
        if self.mode not in tuple(Mode):
            raise ValueError(f"unknown mode {self.mode!r}")
        dev = np.asarray(dev, dtype=float).ravel()
        external = np.asarray(external, dtype=float).ravel()
        if dev.shape != external.shape:
            raise ValueError("dev and external must have the same shape")
        keep = np.isfinite(dev) & np.isfinite(external)
        dev, external = dev[keep], external[keep]
        n = int(dev.size)
        start = min(self.switched_at_pair or 0, n)
        test_name = "alarm" if self.mode == Mode.PROXY else "return"
        self.checks_since_switch += 1
        event: Mode | None = None
        if self.mode == Mode.PROXY:
            result = test.evaluate(dev[start:], external[start:], direction=-1)
            if result.fired:
                event = Mode.DECOUPLED
        else:
            result = test.evaluate(dev[start:], external[start:], direction=1)
            if result.fired and n - start >= test.settings.min_dwell:
                event = Mode.PROXY
        if event is not None:
            self.mode = event
            self.switched_at_pair = n
            self.checks_since_switch = 0
        self.history.append(
            {
                "n_pairs": n,
                "statistic": _json_float(result.statistic),
                "threshold": _json_float(result.threshold),
                "mode": self.mode,
                "event": event,
                "test": test_name,
            }
        )
        return result, event

    def observe(
        self, test: ValidityTest, dev: np.ndarray, external: np.ndarray, *, switch: bool = True
    ) -> tuple[ValidityResult, Mode | None, Mode | None]:
        """:meth:`check`, where ``switch=False`` (``policy.switch: false``, the dev-only
        baseline) never changes the mode: a check that would switch leaves the monitor exactly
        as it was before it.

        Returns:
            ``(result, event, ignored)``: ``event`` as for :meth:`check` (always None when
            ``switch`` is False); ``ignored`` the mode a switch was refused to, or None.
        """
        before = self.to_dict()
        result, event = self.check(test, dev, external)
        if event is None or switch:
            return result, event, None
        self.__dict__.update(vars(DomainMonitor.from_dict(before)))
        return result, None, event

    def to_dict(self) -> dict[str, Any]:
        """Returns the state as a JSON-safe dict."""
        return {
            "domain": self.domain,
            "mode": self.mode,
            "switched_at_pair": self.switched_at_pair,
            "checks_since_switch": self.checks_since_switch,
            "history": [dict(h) for h in self.history],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DomainMonitor:
        """Rebuilds a monitor from :meth:`to_dict` output.

        Args:
            d: The dict.

        Returns:
            The monitor.
        """
        switched = d.get("switched_at_pair")
        return cls(
            domain=str(d["domain"]),
            mode=Mode(d.get("mode", Mode.PROXY)),
            switched_at_pair=None if switched is None else int(switched),
            checks_since_switch=int(d.get("checks_since_switch", 0)),
            history=[dict(h) for h in d.get("history", [])],
        )
