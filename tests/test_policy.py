"""Submission policy and recommendation."""

from __future__ import annotations

import numpy as np
import pytest

from searchlab.policy import (
    SubmissionRound,
    choose_submissions,
    confirm_for_recommendation,
    implausible_domains,
    rank_for_submission,
    recommend,
    record_probe,
    share_probes,
    spread_by_dev,
)
from searchlab.store import Mode


def test_warm_up_spreads_over_dev_extremes_first() -> None:
    numbers = [10, 11, 12, 13, 14]
    dev = np.array([0.5, 0.1, 0.9, 0.3, 0.7])
    picks = [c.candidate for c in spread_by_dev(numbers, dev, 2)]
    assert picks == [11, 12]
    picks = [c.candidate for c in spread_by_dev(numbers, dev, 3)]
    assert picks == [11, 12, 10]
    assert len({c.candidate for c in spread_by_dev(numbers, dev, 9)}) == 5


def test_proxy_mode_confirms_best_dev_decoupled_uses_external_bound() -> None:
    numbers = [1, 2, 3]
    pred = {
        "dev_mean": np.array([0.9, 0.5, 0.7]),
        "dev_sd": np.zeros(3),
        "ext_mean": np.array([0.2, 0.6, 0.4]),
        "ext_sd": np.array([0.0, 0.0, 0.3]),
    }
    proxy = rank_for_submission(numbers, [pred], [1.0], ["proxy"], 1, beta=1.0)
    assert proxy[0].candidate == 1
    decoupled = rank_for_submission(numbers, [pred], [1.0], ["decoupled"], 1, beta=1.0)
    assert decoupled[0].candidate == 3  # 0.4 + 0.3 beats 0.6


def test_recommendation_is_by_modelled_external() -> None:
    assert recommend([4, 5, 6], np.array([0.3, np.nan, 0.5]))[:2] == (6, 0.5)


def test_record_probe_picks_the_largest_per_domain_dev_record() -> None:
    numbers = [7, 8, 9]
    dev_a = np.array([0.50, 0.52, 0.40])  # domain a: paired max 0.50, sd 0.1 -> +0.2 sd at 8
    dev_b = np.array([0.30, 0.20, 0.61])  # domain b: paired max 0.40, sd 0.1 -> +2.1 sd at 9
    choice = record_probe(numbers, [dev_a, dev_b], [0.5, 0.4], [0.1, 0.1], ["a", "b"])
    assert choice is not None and choice.candidate == 9
    assert "b" in choice.reason and choice.score == pytest.approx(2.1)
    # No candidate beats a record: no probe.
    assert record_probe(numbers, [dev_a, dev_b], [0.9, 0.9], [0.1, 0.1], ["a", "b"]) is None


def test_last_round_confirms_the_top_of_the_modelled_external() -> None:
    picks = confirm_for_recommendation([3, 4, 5, 6], np.array([0.61, 0.70, 0.55, 0.66]), 2)
    assert [c.candidate for c in picks] == [4, 6]
    assert all("last round" in c.reason for c in picks)
    assert confirm_for_recommendation([3], np.array([0.5]), 0) == []


def test_a_model_out_of_range_is_flagged_and_never_the_sole_basis() -> None:
    # Two domains; candidate 1's model says 4.4 in domain a (an extrapolation), candidate 2's
    # domain b is far above anything observed there.
    ext_a = np.array([0.40, 4.40, 0.45, 0.50])
    ext_b = np.array([0.30, 0.30, 0.95, 0.35])
    observed = [np.array([0.41, 0.48]), np.array([0.28, 0.36])]
    flags = implausible_domains([ext_a, ext_b], observed, ["a", "b"])
    assert flags == [[], ["a"], ["b"], []]
    mean = (ext_a + ext_b) / 2
    number, value, basis = recommend([1, 2, 3, 4], mean, implausible=flags)
    assert number == 4 and value == pytest.approx(0.425) and "in range" in basis
    # Nothing plausible: the best observed external decides, not the model.
    number, _, basis = recommend(
        [1, 2], np.array([3.0, 2.0]), implausible=[["a"], ["a"]], observed_external={2: 0.4}
    )
    assert number == 2 and basis.startswith("observed external")


def test_a_domain_without_external_scores_is_never_flagged() -> None:
    assert implausible_domains([np.array([7.0])], [np.array([])], ["a"]) == [[]]


def test_share_probes_go_to_decoupled_domains_with_a_share_taking_turns() -> None:
    domains = ["a", "b", "c"]
    modes = [Mode.DECOUPLED, Mode.PROXY, Mode.DECOUPLED]
    shares = [0.6, 0.3, 0.5]
    probes = share_probes(round=2, domains=domains, modes=modes, record_shares=shares, slots=2)
    assert [(p.domain, p.min_share) for p in probes] == [("a", 0.6), ("c", 0.5)]
    # One slot: the decoupled domains take turns by round.
    turns = [share_probes(round=r, domains=domains, modes=modes, record_shares=shares, slots=1)
             for r in (2, 3)]  # fmt: skip
    assert [t[0].domain for t in turns] == ["a", "c"]
    # No slot, no decoupled domain, or no share: none.
    assert share_probes(round=2, domains=domains, modes=modes, record_shares=shares, slots=0) == []
    proxy = [Mode.PROXY] * 3
    assert share_probes(round=2, domains=domains, modes=proxy, record_shares=shares, slots=2) == []
    none = [None, 0.3, None]
    assert share_probes(round=2, domains=domains, modes=modes, record_shares=none, slots=2) == []


def test_a_share_probe_is_submitted_after_the_record_probe_and_before_the_ranking() -> None:
    pred = {
        "dev_mean": np.array([0.9, 0.5, 0.7]),
        "dev_sd": np.zeros(3),
        "ext_mean": np.array([0.2, 0.6, 0.4]),
        "ext_sd": np.zeros(3),
    }

    def round_with(budget: int, last: bool = False) -> list[int]:
        r = SubmissionRound(
            round=3 if last else 2,
            rounds=4,
            warmup_rounds=1,
            budget=budget,
            open=[1, 2, 3],
            predictions=[pred],
            weights=[1.0],
            modes=[Mode.DECOUPLED],
            ucb_beta=1.0,
            probe_ready=True,
            probe=lambda numbers: record_probe(
                numbers, [pred["dev_mean"][: len(numbers)]], [0.8], [0.1], ["a"]
            ),
            modelled_external=lambda numbers: pred["ext_mean"][[n - 1 for n in numbers]],
            share_probes={3: "a"},
        )
        return [c.candidate for c in choose_submissions(r)]

    assert round_with(3) == [1, 3, 2]  # record probe, share probe, then the best by the bound
    assert round_with(2) == [1, 3]
    assert round_with(1) == [3]  # no room for the record probe
    assert round_with(3, last=True) == [1, 3, 2]  # the last round confirms after it
