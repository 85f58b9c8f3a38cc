"""Where a simulated study's regret comes from: what the search found, or what it recommended.

    python benchmarks/found_vs_recommended.py sqlite:///a.db[:STUDY] ... [--json | --summary]

Per stored study of the simulated back end (``bench search --keep``, the main job): the true
regret (optimum minus the weighted true external) of the recommendation, of the best candidate
the study trained (by the truth, which no method sees), and of the best one trained before and
after the round whose submission first alarmed; the recommendation's rank among the trained
candidates by the truth. A recommendation of rank 1 means the regret is all in what the search
found. ``STUDY`` defaults to ``bench-INSTANCE-SEED`` read from a ``--keep`` file's name
(``INSTANCE-SEED-METHOD.db``). docs/RESULTS.md ("A calibrated threshold").
"""

from __future__ import annotations

import argparse
import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from searchlab.backends import backend_for
from searchlab.bench import true_regret
from searchlab.readmodel import alarms, read
from searchlab.store import Storage


def _study_name(url: str) -> tuple[str, str]:
    """``(url, study)`` from ``URL[:STUDY]``; the study from a ``--keep`` file name if absent."""
    head, sep, tail = url.rpartition(":")
    if sep and not tail.startswith("//"):
        return head, tail
    match = re.fullmatch(r"(.+)-(\d+)-[a-z-]+\.db", Path(url.removeprefix("sqlite:///")).name)
    if match is None:
        raise SystemExit(f"{url}: give the study as URL:STUDY")
    return url, f"bench-{match[1]}-{match[2]}"


def decompose(url: str, study: str) -> dict[str, Any]:
    """The regrets of one stored study (see the module docstring)."""
    view = read(Storage(url).load(study))
    config = view.config
    backend = backend_for(config)
    regrets = {
        n: true_regret(backend, config.domain_names, config.weights, c.artefact)
        for n, c in view.complete.items()
    }
    chosen = view.recommendation["recommendation"]["candidate"]
    fired = alarms(view.log)
    first = fired[0]["round"] if fired else None
    shown = f"{fired[0]['domain']}@{fired[0]['candidate']}/round{first + 1}" if fired else None
    before = [r for n, r in regrets.items() if first is None or view.complete[n].round <= first]
    after = [r for n, r in regrets.items() if first is not None and view.complete[n].round > first]
    return {
        "study": study,
        "storage": url,
        "alarm": shown,
        "recommendation": regrets[chosen],
        "best_found": min(regrets.values()),
        "best_before_alarm": min(before),
        "best_after_alarm": min(after) if after else math.nan,
        "rank": sorted(regrets.values()).index(regrets[chosen]) + 1,
        "candidates": len(regrets),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("storages", nargs="+", help="URL[:STUDY]")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument("--summary", action="store_true", help="medians over the studies")
    args = parser.parse_args()
    rows = [decompose(*_study_name(given)) for given in args.storages]
    if args.summary:
        rec = np.array([r["recommendation"] for r in rows])
        best = np.array([r["best_found"] for r in rows])
        ranks = np.array([r["rank"] for r in rows])
        print(
            f"{len(rows)} studies: recommendation {np.median(rec):.4f}, best trained "
            f"{np.median(best):.4f}, difference {np.median(rec - best):.4f} (medians); the best "
            f"trained in {int((ranks == 1).sum())}, median rank {np.median(ranks):g}"
        )
        return
    for row in rows:
        if args.json:
            print(json.dumps(row))
            continue
        print(
            f"{row['study']}: alarm {row['alarm'] or 'none'}; regret of the recommendation "
            f"{row['recommendation']:.4f} (rank {row['rank']} of {row['candidates']}), best "
            f"found {row['best_found']:.4f}, before the alarm {row['best_before_alarm']:.4f}, "
            f"after it {row['best_after_alarm']:.4f}"
        )


if __name__ == "__main__":
    main()
