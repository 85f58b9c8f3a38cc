"""Decisions that are not acquisition: who spends the external budget, and what to recommend.

Submission policy (spend the external budget where it informs the decision):

- Warm-up rounds: spread the submissions over the range of de-noised mean dev (the lowest and the
  highest first, then the quantiles between), so the validity test sees the dev->external relation
  over a range and not only at the top.
- Later rounds, with two or more submissions a round: one goes to the candidate setting the
  largest per-domain dev record over the pairs the validity test has (:func:`record_probe`).
- After a switch: the round's share probes (below), while the budget lasts.
- The rest: rank unsubmitted candidates by

      score(x) = sum_d w_d * [ mu_dev_d(x)                          if d is in proxy mode
                               mu_ext_d(x) + beta * sd_ext_d(x)     if d is decoupled ],

  i.e. confirm the best candidates where dev is trusted, and measure where the external model is
  promising and uncertain where it is not. A candidate is never submitted twice.
- The last round: the submissions other than the probe confirm the candidates with the highest
  modelled external score (:func:`confirm_for_recommendation`). No proposal follows, so a
  measurement for the acquisition would inform nothing; what is left to decide is the
  recommendation, and an observed external score at the top of the model makes it reliable.
  The probe stays: an alarm in the last round is still evidence the user reads.

Share probes (after a switch). A domain decoupled because dev made records that external did
not follow; the pairs behind that alarm hold the domain's data share and the hack together
(records are set with much of the domain's data *and* the hack), so no model of them can tell
which of the two costs external, and the models blame the share: proposals after the switch
cut the domain's data to nothing where the external optimum keeps half of it (docs/RESULTS.md,
"After the switch, the model misleads"). So each round after a switch, one proposal per
decoupled domain (:func:`share_probes`; at most one fewer than the round's submissions) maximises
the same acquisition under the constraint that the domain's data share is at least the share of
its dev-record holder, and it is submitted ahead of the ranked candidates: an external score
at a recipe that keeps the data and drops whatever else the model blames. This changes nothing
before the first switch, so the validity test's null corpus still describes the engine. Its
limit: the probe's other coordinates are chosen by the same model, so where that model holds
the hack harmless the probe keeps the hack too and teaches nothing (docs/RESULTS.md, "Share
probes"). A top-up of a resumed round (one candidate) has no room for a probe.

Recommendation: the candidate with the highest modelled external score (weighted posterior mean
of the external task), never the highest raw dev. A GP extrapolates freely: with two external
points its mean can leave [0, 1] (a 4.4 "accuracy" was seen). A candidate whose modelled external
is implausible in any domain (:func:`implausible_domains`: outside [0, 1], or further than
``margin`` outside the range of that domain's observed external scores) is never recommended on
the model's word alone: the recommendation is the best plausible candidate, and when none is
plausible, the submitted candidate with the best observed external score.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from searchlab.store import Mode


@dataclass(frozen=True)
class SubmissionChoice:
    """One candidate chosen for an external submission, with why."""

    candidate: int
    reason: str
    score: float


SHARE_PROBE = "share-probe"  # the proposal method of a share probe (:func:`share_probes`)


@dataclass(frozen=True)
class ShareProbe:
    """One share probe to propose: the domain it asks about and the least share it keeps."""

    domain: str
    min_share: float


def share_probes(
    *,
    round: int,
    domains: Sequence[str],
    modes: Sequence[Mode],
    record_shares: Sequence[float | None],
    slots: int,
) -> list[ShareProbe]:
    """The share probes of a round (the module docstring says why).

    Args:
        round: The round, to take turns when more domains are decoupled than there are slots.
        domains: ``K`` domain names.
        modes: ``K`` modes; only decoupled domains get a probe.
        record_shares: Per domain, the data share of the completed candidate with the highest
            de-noised dev in that domain; None where no mixture gives the domain a share.
        slots: How many probes the round has room for (fewer proposals and submissions than
            the round has, so that the acquisition and the ranking keep at least one each).

    Returns:
        At most ``slots`` probes.
    """
    wanted = [
        ShareProbe(d, float(share))
        for d, mode, share in zip(domains, modes, record_shares, strict=True)
        if mode == Mode.DECOUPLED and share is not None
    ]
    if slots <= 0 or not wanted:
        return []
    start = round % len(wanted)
    return (wanted[start:] + wanted[:start])[:slots]


@dataclass(frozen=True)
class SubmissionRound:
    """What the submission policy needs to know about one round.

    Attributes:
        round: The round (0-based).
        rounds: Rounds in the study.
        warmup_rounds: Rounds of quasi-random warm-up.
        budget: Submissions this round may still make (per-round quota and total budget).
        open: Completed candidates never submitted, in fit order.
        predictions: Per domain, the fitted surrogate's ``dev_mean``, ``ext_mean``, ``ext_sd``
            ... at ``open`` (arrays of shape ``(len(open),)``).
        weights: Domain weights.
        modes: Domain modes.
        ucb_beta: ``beta`` of :func:`rank_for_submission`.
        probe_ready: Whether every domain's test has its warm-up scale (the probe needs it).
        probe: The dev-record probe among the given open candidates, or None (lazy: it fits the
            dev-only models).
        modelled_external: Weighted modelled external at the given open candidates (lazy).
        baseline: The baseline candidate (``objective.baseline``), if the study has one: the
            first warm-up submission, the reference of its floors.
        share_probes: This round's share probes among ``open``, each with its domain.
    """

    round: int
    rounds: int
    warmup_rounds: int
    budget: int
    open: list[int]
    predictions: Sequence[Mapping[str, np.ndarray]]
    weights: Sequence[float]
    modes: Sequence[Mode]
    ucb_beta: float
    probe_ready: bool
    probe: Callable[[list[int]], SubmissionChoice | None]
    modelled_external: Callable[[list[int]], np.ndarray]
    baseline: int | None = None
    share_probes: Mapping[int, str] = field(default_factory=dict)


def choose_submissions(r: SubmissionRound) -> list[SubmissionChoice]:
    """Which candidates get this round's external submissions, and why (the module docstring
    gives the rule of each round)."""
    if r.round < r.warmup_rounds:
        mean_dev = np.asarray(
            sum(w * p["dev_mean"] for p, w in zip(r.predictions, r.weights, strict=True))
        )
        if r.baseline in r.open and r.budget > 0:
            i = r.open.index(r.baseline)
            rest = [n for n in r.open if n != r.baseline]
            first = SubmissionChoice(r.baseline, "baseline: the reference of the floors", 0.0)
            return [first, *spread_by_dev(rest, np.delete(mean_dev, i), r.budget - 1)]
        return spread_by_dev(r.open, mean_dev, r.budget)
    keep = list(range(len(r.open)))
    choices: list[SubmissionChoice] = []
    if r.budget >= 2 and r.probe_ready:
        probe = r.probe(list(r.open))
        if probe is not None:
            choices.append(probe)
            keep = [i for i in keep if r.open[i] != probe.candidate]
    for i in list(keep):
        domain = r.share_probes.get(r.open[i])
        if domain is not None and len(choices) < r.budget:
            reason = f"share probe: {domain}'s data share kept at its dev record's"
            choices.append(SubmissionChoice(r.open[i], reason, 0.0))
            keep.remove(i)
    left = [r.open[i] for i in keep]
    if r.round == r.rounds - 1:
        # No proposal follows: what is left to decide is the recommendation.
        return choices + confirm_for_recommendation(
            left, r.modelled_external(left), r.budget - len(choices)
        )
    return choices + rank_for_submission(
        left,
        [{key: v[keep] for key, v in p.items()} for p in r.predictions],
        r.weights,
        r.modes,
        r.budget - len(choices),
        beta=r.ucb_beta,
    )


def spread_by_dev(numbers: Sequence[int], mean_dev: np.ndarray, k: int) -> list[SubmissionChoice]:
    """Picks ``k`` candidates spread over the range of mean dev, extremes first.

    Args:
        numbers: ``n`` candidate numbers.
        mean_dev: ``n`` de-noised weighted mean dev of those candidates.
        k: How many to pick.
    """
    order = np.argsort(mean_dev)
    n = len(order)
    if k <= 0 or n == 0:
        return []
    k = min(k, n)
    # Extremes first (0, 1), then the interior quantiles: a two-pick round spans the range.
    targets = [0.0, 1.0] + [i / (k - 1) for i in range(1, k - 1)] if k > 1 else [1.0]
    chosen: list[int] = []
    for t in targets[:k]:
        pos = round(t * (n - 1))
        for step in range(n):  # nearest position not taken yet
            for p in (pos - step, pos + step):
                if 0 <= p < n and int(order[p]) not in chosen:
                    chosen.append(int(order[p]))
                    break
            else:
                continue
            break
    return [
        SubmissionChoice(numbers[i], "warm-up: spread over de-noised dev", float(mean_dev[i]))
        for i in chosen
    ]


def rank_for_submission(
    numbers: Sequence[int],
    predictions: Sequence[dict[str, np.ndarray]],
    weights: Sequence[float],
    modes: Sequence[str],
    k: int,
    *,
    beta: float,
) -> list[SubmissionChoice]:
    """Picks the ``k`` candidates whose external score informs the decision most.

    Args:
        numbers: ``n`` unsubmitted candidate numbers.
        predictions: Per domain, :meth:`DomainSurrogate.predict` at those candidates.
        weights: ``K`` domain weights.
        modes: ``K`` domain modes.
        k: How many to pick.
        beta: Optimism of the external bound in decoupled domains.
    """
    if k <= 0 or not numbers:
        return []
    score = np.zeros(len(numbers))
    for p, w, mode in zip(predictions, weights, modes, strict=True):
        if mode == Mode.DECOUPLED and not np.isnan(p["ext_mean"]).any():
            score += w * (p["ext_mean"] + beta * p["ext_sd"])
        else:
            score += w * p["dev_mean"]
    decoupled = [m == Mode.DECOUPLED for m in modes]
    reason = (
        "confirm the best by modelled dev"
        if not any(decoupled)
        else "promising and uncertain external in decoupled domain(s), dev elsewhere"
    )
    best = np.argsort(-score)[:k]
    return [SubmissionChoice(numbers[i], reason, float(score[i])) for i in best]


def confirm_for_recommendation(
    numbers: Sequence[int], modelled_external: np.ndarray, k: int
) -> list[SubmissionChoice]:
    """The ``k`` candidates with the highest modelled external score, for the last round.

    Args:
        numbers: ``n`` unsubmitted candidate numbers.
        modelled_external: ``n`` weighted posterior means of the external task (or of dev, while
            no domain has an external model).
        k: How many to pick.
    """
    best = np.argsort(-np.asarray(modelled_external, dtype=float))[: max(k, 0)]
    return [
        SubmissionChoice(
            numbers[i],
            "last round: confirm the best by modelled external before recommending",
            float(modelled_external[i]),
        )
        for i in best
    ]


def record_probe(
    numbers: Sequence[int],
    dev_means: Sequence[np.ndarray],
    paired_max: Sequence[float],
    scales: Sequence[float],
    domains: Sequence[str],
) -> SubmissionChoice | None:
    """The candidate that sets the largest dev record over the pairs the validity test has.

    Collapse shows where dev makes records; a test that only ever sees external at the best
    candidates by *mean* dev may never see a domain's own records. So one submission a round goes
    to the candidate whose de-noised dev, in some domain, lies furthest above that domain's
    highest paired dev, in units of the domain's warm-up dev sd.

    Args:
        numbers: ``n`` unsubmitted candidate numbers.
        dev_means: Per domain, ``n`` de-noised dev values of those candidates.
        paired_max: Per domain, the highest de-noised dev among submitted candidates.
        scales: Per domain, the warm-up dev sd of the validity test.
        domains: ``K`` domain names, for the reason.

    Returns:
        The choice, or None when no candidate beats a record.
    """
    if not numbers:
        return None
    z = np.stack(
        [
            (m - top) / max(sd, 1e-9)
            for m, top, sd in zip(dev_means, paired_max, scales, strict=True)
        ]
    )  # K x n
    best_domain, best = np.unravel_index(int(np.argmax(z)), z.shape)
    if z[best_domain, best] <= 0:
        return None
    return SubmissionChoice(
        numbers[best],
        f"validity probe: dev record in {domains[best_domain]} "
        f"(+{z[best_domain, best]:.2f} warm-up sd above its paired maximum)",
        float(z[best_domain, best]),
    )


def implausible_domains(
    ext_means: Sequence[np.ndarray],
    observed: Sequence[np.ndarray],
    domains: Sequence[str],
    *,
    margin: float = 0.15,
) -> list[list[str]]:
    """Per candidate, the domains whose modelled external score is implausible.

    Implausible: outside [0, 1] (an accuracy), or more than ``margin`` below the lowest or above
    the highest external score observed in that domain (beyond what the data can support). A
    domain with no observed external score has no model of its own and is never flagged.

    Args:
        ext_means: Per domain (``K``), the posterior mean of external at ``n`` candidates.
        observed: Per domain, the observed external scores (``m`` each, ``m`` may be 0).
        domains: ``K`` domain names.
        margin: Allowed distance outside the observed range, in accuracy units.

    Returns:
        ``n`` lists of domain names (empty where every domain is plausible).
    """
    n = len(ext_means[0]) if ext_means else 0
    flags: list[list[str]] = [[] for _ in range(n)]
    for mean, obs, d in zip(ext_means, observed, domains, strict=True):
        obs = np.asarray(obs, dtype=float)
        if obs.size == 0:
            continue
        lo, hi = max(0.0, float(obs.min()) - margin), min(1.0, float(obs.max()) + margin)
        bad = ~((np.asarray(mean) >= lo) & (np.asarray(mean) <= hi))
        for i in np.flatnonzero(bad):
            flags[int(i)].append(d)
    return flags


def recommend(
    numbers: Sequence[int],
    modelled_external: np.ndarray,
    *,
    implausible: Sequence[Sequence[str]] | None = None,
    observed_external: dict[int, float] | None = None,
    shortfall: np.ndarray | None = None,
) -> tuple[int, float, str]:
    """The candidate with the highest modelled external score among the plausible ones that
    meet the study's floors.

    Args:
        numbers: ``n`` completed candidate numbers.
        modelled_external: ``n`` weighted posterior means of the external task.
        implausible: Per candidate, the domains :func:`implausible_domains` flagged (none when
            omitted).
        observed_external: Weighted observed external score per submitted candidate: the
            fallback when no candidate's model is plausible.
        shortfall: ``n`` totals by which each candidate misses the floors
            (:func:`searchlab.objective.floor_shortfall`; 0 = meets them all), or None when the
            study has no floors. When none meets them, the least short is returned, and the
            basis says so.

    Returns:
        (candidate number, its modelled external score, the basis in words).
    """
    values = np.asarray(modelled_external, dtype=float)
    ok = np.ones(len(numbers), dtype=bool)
    if implausible is not None:
        ok = np.array([not f for f in implausible], dtype=bool)
    if shortfall is not None:
        short = np.asarray(shortfall, dtype=float)
        meets = short <= 0
        if not meets.any():
            pool = np.where(ok, short, np.inf) if ok.any() else short
            i = int(np.argmin(pool))
            return (
                numbers[i],
                float(values[i]),
                f"no candidate meets the floors: the least short (by {short[i]:.4f})",
            )
        ok = ok & meets if (ok & meets).any() else meets
        observed_external = {
            n: v for n, v in (observed_external or {}).items() if meets[list(numbers).index(n)]
        }
    if ok.any() and not np.isnan(values[ok]).all():
        i = int(np.nanargmax(np.where(ok, values, np.nan)))
        basis = (
            "modelled external"
            if ok.all()
            else ("modelled external, among candidates whose model is in range")
        )
        if shortfall is not None:
            basis += ", among candidates that meet the floors"
        return numbers[i], float(values[i]), basis
    if observed_external:
        best = max(observed_external, key=observed_external.__getitem__)
        i = list(numbers).index(best)
        return best, float(values[i]), "observed external (the model is out of range everywhere)"
    i = int(np.nanargmax(values))
    return numbers[i], float(values[i]), "modelled external (out of range, nothing observed)"
