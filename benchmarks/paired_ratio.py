"""Paired ratios of medians over seeds, with a paired bootstrap 95 % interval.

    python benchmarks/paired_ratio.py A.log B.log          # regret: A's median / B's
    python benchmarks/paired_ratio.py --front ROWS ...      # hypervolume: searchlab / best Optuna

The logs are `bench search`'s progress lines (``INSTANCE seed S METHOD: regret R ...``), one
seed each; the ratio is over the seeds both hold. ``--front`` reads `bench front`'s JSON rows
(one per line, or a ``--json`` object with ``rows``) and takes, per seed, searchlab's
hypervolume over the better of NSGA-II and TPE. The bootstrap resamples seeds (10,000 draws,
generator seed 0). docs/RESULTS.md ("A calibrated threshold").
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np

LINE = re.compile(r"\S+ seed (\d+) \S+: regret ([0-9.eE+-]+)")


def _regrets(path: str) -> dict[int, float]:
    found = (LINE.match(line) for line in Path(path).read_text().splitlines())
    return {int(m[1]): float(m[2]) for m in found if m}


def _front_rows(paths: list[str]) -> list[dict]:
    rows = []
    for path in paths:
        text = Path(path).read_text()
        if text.lstrip().startswith("{") and '"rows"' in text[:200]:
            rows += json.loads(text)["rows"]
        else:
            rows += [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    return rows


def _interval(values: np.ndarray, statistic) -> tuple[float, float]:
    rng = np.random.default_rng(0)
    draws = [statistic(rng.integers(0, len(values), len(values))) for _ in range(10_000)]
    return float(np.percentile(draws, 2.5)), float(np.percentile(draws, 97.5))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+")
    parser.add_argument("--front", action="store_true", help="bench front rows")
    args = parser.parse_args()
    if args.front:
        hv = {(r["seed"], r["method"]): r["hypervolume"] for r in _front_rows(args.files)}
        seeds = sorted(s for s, m in hv if m == "searchlab" and (s, "tpe") in hv)
        ratio = np.array(
            [hv[(s, "searchlab")] / max(hv[(s, "nsga2")], hv[(s, "tpe")]) for s in seeds]
        )
        lo, hi = _interval(ratio, lambda i: np.median(ratio[i]))
        print(
            f"{len(seeds)} seeds: searchlab / best Optuna, median {np.median(ratio):.2f} "
            f"({lo:.2f}-{hi:.2f}), above 1 in {int((ratio > 1).sum())}"
        )
        return
    if len(args.files) != 2:
        parser.error("give two bench search logs (or --front)")
    a, b = (_regrets(f) for f in args.files)
    seeds = sorted(set(a) & set(b))
    x, y = np.array([a[s] for s in seeds]), np.array([b[s] for s in seeds])
    lo, hi = _interval(x, lambda i: np.median(x[i]) / np.median(y[i]))
    print(
        f"{len(seeds)} seeds: median {np.median(x):.4f} / {np.median(y):.4f} = "
        f"{np.median(x) / np.median(y):.2f} ({lo:.2f}-{hi:.2f}); lower in {int((x < y).sum())}, "
        f"equal in {int((x == y).sum())}"
    )


if __name__ == "__main__":
    main()
