"""Throughput of searchlab workers on PostgreSQL, and where the coordinator's time goes.

Starts a throw-away PostgreSQL cluster (initdb/pg_ctl; as root it runs them as ``postgres``),
then for each back-end delay and worker count runs a 5 x 8 simulated study: the coordinator in
this process (so ``Engine.timings`` can be read), the workers as ``searchlab worker`` processes.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/workers.py [--workers 1 2 4] [--delays 0.3 0]
"""

from __future__ import annotations

import os

# One thread per process before anything imports torch (overridable), as in the CLI.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from test_workers import SLOW_BACKEND, STUDY, _free_port, _pg_bin


def _cluster() -> tuple[str, list[str], str, str]:
    found = _pg_bin()
    if found is None:
        sys.exit("initdb/pg_ctl not found")
    initdb, pg_ctl = found
    folder = tempfile.mkdtemp(prefix="searchlab-pg-")
    prefix: list[str] = []
    if os.geteuid() == 0:
        import pwd

        user = pwd.getpwnam("postgres")
        os.chown(folder, user.pw_uid, user.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    data, port = f"{folder}/data", _free_port()
    subprocess.run(
        [*prefix, initdb, "-D", data, "-U", "postgres", "--auth=trust"],
        check=True,
        capture_output=True,
    )
    opts = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1"
    subprocess.run(
        [*prefix, pg_ctl, "-D", data, "-o", opts, "-l", f"{folder}/log", "-w", "start"],
        check=True,
        capture_output=True,
    )
    return f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres", prefix, pg_ctl, data


def run_one(url: str, tmp: Path, delay: float, workers: int) -> dict[str, float]:
    from searchlab.config import load_study_file
    from searchlab.engine import Engine
    from searchlab.store import CandidateState, Storage

    name = f"bench-{delay}-{workers}"
    (tmp / "slowbackend.py").write_text(SLOW_BACKEND)
    file = tmp / f"{name}.yaml"
    file.write_text(
        STUDY.format(name=name, log=tmp / f"{name}.log", delay=delay, k=8, rounds=5, budget=8)
    )
    sys.path.insert(0, str(tmp))
    config = load_study_file(str(file))
    record = Storage(url).create(config)
    from searchlab.backends import backend_for

    # slowbackend:SlowSimulated is this script's own module: trusted, in-process and in workers.
    backend = backend_for(config, trust=True)
    env = {
        **os.environ,
        "PYTHONPATH": str(tmp),
        "OMP_NUM_THREADS": "1",
        "SEARCHLAB_TRUST_BACKEND": "1",
    }
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "searchlab.cli",
                "worker",
                name,
                "--storage",
                url,
                "--lease",
                "30",
                "--idle-exit",
                "60",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(workers)
    ]
    time.sleep(4.0)  # let the workers import and connect: the clock measures the study only
    engine = Engine(record=record, config=config, backend=backend, external_workers=True)
    t0 = time.perf_counter()
    engine.run()
    wall = time.perf_counter() - t0
    for p in procs:
        p.wait(timeout=120)
    n = sum(1 for c in record.candidates() if c.state == CandidateState.COMPLETE)
    return {
        "delay": delay,
        "workers": workers,
        "candidates": n,
        "seconds": wall,
        "per_minute": 60 * n / wall,
        **engine.timings,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--delays", type=float, nargs="+", default=[0.3, 0.0])
    args = parser.parse_args()
    url, prefix, pg_ctl, data = _cluster()
    tmp = Path(tempfile.mkdtemp(prefix="searchlab-bench-"))
    try:
        print("delay_s workers candidates wall_s per_min fit_s propose_s wait_s", flush=True)
        for delay in args.delays:
            for w in args.workers:
                r = run_one(url, tmp, delay, w)
                print(
                    f"{r['delay']:7.1f} {r['workers']:7d} {r['candidates']:10d} "
                    f"{r['seconds']:6.1f} {r['per_minute']:7.1f} {r['fit']:5.1f} "
                    f"{r['propose']:9.1f} {r['wait']:6.1f}",
                    flush=True,
                )
    finally:
        subprocess.run(
            [*prefix, pg_ctl, "-D", data, "-m", "immediate", "stop"], capture_output=True
        )
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
