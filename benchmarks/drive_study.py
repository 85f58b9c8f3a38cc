"""Runs a study file through searchlab.loop.Study (the caller's-loop API) instead of the engine's
own loop, with its back end standing in for the caller's training and leaderboard.

    python benchmarks/drive_study.py studies/goodhart-sim.yaml --storage sqlite:///driven.db
    searchlab study create studies/goodhart-sim.yaml --storage sqlite:///own.db -q
    python benchmarks/same_study.py sqlite:///own.db sqlite:///driven.db

The two stored studies are the same run when the API and the engine share their steps: the
caller tells exactly what the back end returned, so every proposal, submission, validity check
and switch must agree (the back end is also passed for its truth, so the recommendation's regret
is recorded as the engine records it).
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file")
    parser.add_argument("--storage", required=True)
    parser.add_argument("--count", type=int, default=4, help="candidates per ask")
    args = parser.parse_args()

    from searchlab.backends import backend_for
    from searchlab.config import load_study_file
    from searchlab.execution import candidate_seed
    from searchlab.loop import Study

    config = load_study_file(args.file)
    backend = backend_for(config)
    study = Study.create(config, storage=args.storage, backend=backend)
    artefacts = {}
    while not study.finished:
        asked = study.ask(args.count)
        for c in asked:
            seed = candidate_seed(study.config, c.number)
            artefacts[c.number] = backend.train(c.recipe, candidate=c.number, seed=seed)
            study.tell(c.number, dev=backend.evaluate(artefacts[c.number]), artefact={})
        plan = study.plan_submissions()
        for s in plan.submissions:
            scores = backend.submit_external(artefacts[s.number], submission=s.submission)
            study.tell_external(s.number, external=scores)
        if not asked and not plan.submissions and not study.finished:
            raise SystemExit(f"stuck: {study.next_step()}")
    status = study.status()
    alarms = ", ".join(f"{a['domain']}@{a['candidate']}" for a in status["alarms"]) or "none"
    print(f"alarms: {alarms}; recommendation: {status['recommendation']['candidate']}")


if __name__ == "__main__":
    main()
