"""What the proposals after a switch do to the weak domain: read from stored studies.

    python benchmarks/after_switch.py sqlite:///main-0.db ... [--study NAME] [--domain NAME]

Per study: the round whose submission first alarmed, how many candidates were proposed in the
rounds after it, and their median data share on the domain and median template share (the hack
knob of the simulated back end). docs/RESULTS.md ("Proposals after the switch keep the skill").
"""

from __future__ import annotations

import argparse

import numpy as np

from searchlab.readmodel import alarms, read
from searchlab.store import Storage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("storages", nargs="+")
    parser.add_argument("--study", default="goodhart-sim")
    parser.add_argument("--domain", default="equations")
    args = parser.parse_args()
    for url in args.storages:
        view = read(Storage(url).load(args.study))
        fired = alarms(view.log)
        if not fired:
            print(f"{url}: no alarm")
            continue
        first = fired[0]["round"]
        after = [c for c in view.complete.values() if c.round > first]
        rounds = view.config.rounds.count
        line = f"{url}: alarm in round {first + 1} of {rounds}, {len(after)} proposed after"
        if after:
            share = np.median([c.recipe[f"mixture.{args.domain}"] for c in after])
            template = np.median([c.recipe["template_share"] for c in after])
            line += f", median share {share:.2f}, median template share {template:.3f}"
        print(line)


if __name__ == "__main__":
    main()
