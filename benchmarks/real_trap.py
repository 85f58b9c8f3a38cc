"""The trap in real training: searchlab against dev-only on a real study file, seed by seed.

For each seed, the study file runs twice with the real post-training back end: as written
(``searchlab``) and with ``policy.switch: false`` (``dev-only``: the same engine, never leaving
proxy mode). Both arms have the same study seed, so the same warm-up candidates, the same
training seed per candidate number and the same leaderboard split; they differ from the first
switch on.

Per seed and arm it reports:

- the alarms, ``domain@candidate`` (and whether each came before the last round);
- the recommendation's **private** external score: the leaderboard's hidden half, weighted like
  the objective, which the search never sees; and per domain;
- the best-dev candidate's private external score, the same way;
- the wall time and the peak resident memory of the study process.

The tiny base is built once into ``WORKDIR/base`` (not timed) and linked into each run's cache,
so no run pays for it. A run whose study already finished in ``WORKDIR`` is read, not rerun: the
seeds and arms can be split over processes (``--seeds 2 --arms dev-only``) and summarised by one
more call with all of them.

    OMP_NUM_THREADS=1 python benchmarks/real_trap.py [--study studies/tiny-trap.yaml] \
        [--seeds 4 5 6] [--arms searchlab dev-only] [--workdir DIR] [--json]
"""

from __future__ import annotations

import os

# One thread per process before anything imports torch (overridable), as in the CLI.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import copy
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, NoReturn

import yaml

ARMS = ("searchlab", "dev-only")


def _run_config(study: dict[str, Any], arm: str, cache: Path) -> dict[str, Any]:
    """The study file of one arm: its own cache folder; dev-only never switches."""
    config = copy.deepcopy(study)
    config["backend"].setdefault("options", {})["cache_dir"] = str(cache)
    if arm == "dev-only":
        config.setdefault("policy", {})["switch"] = False
    return config


def _run_study(file: Path, *, name: str, seed: int, storage: str, log: Path) -> dict[str, float]:
    """Runs ``study create`` in its own process; its wall time and peak resident memory."""
    started = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "searchlab.cli",
                "study",
                "create",
                str(file),
                "--name",
                name,
                "--seed",
                str(seed),
                "--storage",
                storage,
                "-q",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        # wait4, not wait: it also gives this child's own resource usage (its peak memory).
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here; Popen must not wait again
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["(no output)"]
        _fail(f"{name}: study create exited {proc.returncode}: {tail[0]} (log {log})")
    # ru_maxrss is in KiB on Linux.
    return {"wall_s": round(seconds, 1), "peak_rss_mb": round(usage.ru_maxrss / 1024, 1)}


def _result(
    config: dict[str, Any], *, name: str, storage: str, arm: str, seed: int
) -> dict[str, Any]:
    """What one finished run shows, private scores included."""
    from searchlab.readmodel import read
    from searchlab.store import Storage
    from searchlab_training.backend import PostTrainingBackend

    view = read(Storage(storage).load(name))
    status = view.status()
    last_round = view.rounds_total - 1
    options = dict(config["backend"].get("options", {}))
    weights = view.weights  # sum to 1: the study file's rule
    backend = PostTrainingBackend(domains=view.domains, weights=weights, seed=seed, **options)
    complete = view.complete

    def private(number: int) -> dict[str, Any]:
        per_domain = backend.private_external(complete[number].artefact or {})
        value = sum(w * per_domain[d] for d, w in weights.items())
        return {
            "candidate": number,
            "private": round(value, 4),
            "per_domain": {d: round(v, 4) for d, v in per_domain.items()},
        }

    rec = status["recommendation"] or {}
    best = status["best_dev_candidate"] or {}
    return {
        "arm": arm,
        "seed": seed,
        "alarms": [{**a, "before_last_round": a["round"] < last_round} for a in status["alarms"]],
        "recommendation": private(int(rec["candidate"])),
        "best_dev": private(int(best["candidate"])),
        "candidates": status["candidates"],
        "failed": status["failed_candidates"],
        "submissions": status["external_budget"]["used"],
    }


def _fail(message: str) -> NoReturn:
    """One line on stderr, exit status 2 (bad input), as the CLI does."""
    print(message, file=sys.stderr)
    raise SystemExit(2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", default="studies/tiny-trap.yaml")
    # Seeds 1 and 2 were used while the study file was chosen: the reported ones start at 4.
    parser.add_argument("--seeds", type=int, nargs="+", default=[4, 5, 6])
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    parser.add_argument(
        "--workdir", default=str(Path(tempfile.gettempdir()) / "searchlab-real-trap")
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from searchlab.config import load_study_file
    from searchlab.errors import StudyFileError
    from searchlab_training.backend import PostTrainingBackend

    try:
        # Validated as `study create` would; the plain mapping is what each arm's copy rewrites.
        checked = load_study_file(args.study)
    except StudyFileError as exc:
        _fail(str(exc))
    if checked.backend.name != "post-training":
        _fail(
            f"{args.study}: backend.name is {checked.backend.name!r}; this benchmark needs "
            "post-training"
        )
    study = yaml.safe_load(Path(args.study).read_text())
    work = Path(args.workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    options = {**checked.backend.options, "cache_dir": str(work / "base")}
    base = PostTrainingBackend(
        domains=checked.domain_names, weights={}, seed=0, **options
    ).base_path()

    rows = []
    for seed in args.seeds:
        for arm in args.arms:
            run = work / f"{arm}-seed{seed}"
            storage = f"sqlite:///{run / 'study.db'}"
            name = f"{checked.name}-{arm}-{seed}"
            config = _run_config(study, arm, run / "cache")
            timing_file = run / "timing.json"
            if not timing_file.exists():
                shutil.rmtree(run, ignore_errors=True)
                (run / "cache").mkdir(parents=True)
                (run / "cache" / base.name).symlink_to(base, target_is_directory=True)
                file = run / "study.yaml"
                file.write_text(yaml.safe_dump(config, sort_keys=False))
                timing = _run_study(
                    file, name=name, seed=seed, storage=storage, log=run / "log.txt"
                )
                timing_file.write_text(json.dumps(timing))
            timing = json.loads(timing_file.read_text())
            rows.append(
                {**_result(config, name=name, storage=storage, arm=arm, seed=seed), **timing}
            )

    summary = _summary(rows)
    if args.json:
        print(
            json.dumps({"study": args.study, "base": str(base), "runs": rows, **summary}, indent=2)
        )
        return
    print(
        f"{'seed':>4} {'arm':>9} {'alarms':<34} {'rec private':>11} {'best-dev private':>16}"
        f" {'wall s':>7} {'peak MB':>8}"
    )
    for r in rows:
        alarms = (
            " ".join(
                f"{a['domain']}@{a['candidate']}" + ("" if a["before_last_round"] else "(last)")
                for a in r["alarms"]
            )
            or "-"
        )
        print(
            f"{r['seed']:>4} {r['arm']:>9} {alarms:<34} {r['recommendation']['private']:>11.4f}"
            f" {r['best_dev']['private']:>16.4f} {r['wall_s']:>7.0f} {r['peak_rss_mb']:>8.0f}"
        )
    for key, value in summary.items():
        print(f"{key}: {value}")


def _summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per seed with both arms: searchlab's private external minus dev-only's; their median."""
    by = {(r["seed"], r["arm"]): r for r in rows}
    seeds = sorted(
        {
            r["seed"]
            for r in rows
            if (r["seed"], "searchlab") in by and (r["seed"], "dev-only") in by
        }
    )
    diffs = [
        round(
            by[s, "searchlab"]["recommendation"]["private"]
            - by[s, "dev-only"]["recommendation"]["private"],
            4,
        )
        for s in seeds
    ]
    return {
        "paired_seeds": seeds,
        "searchlab_minus_dev_only": diffs,
        "median_difference": statistics.median(diffs) if diffs else None,
    }


if __name__ == "__main__":
    main()
