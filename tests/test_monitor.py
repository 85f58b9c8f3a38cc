"""`searchlab monitor`: the validity test on a score log that no searchlab study wrote."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli

from searchlab.monitor import LogError, monitor_log, read_log
from searchlab.streams import simulate_stream
from searchlab.validity import DetectorSettings, HingeForm

HORIZON = 64


def _log(path: Path, seed: int, *, every: int = 1) -> Path:
    """A loop's log: a domain whose external falls past an onset while dev keeps rising, and a
    healthy one; external measured for every ``every``-th candidate."""
    rng_weak, rng_ok = np.random.default_rng([seed, 1]), np.random.default_rng([seed, 2])
    dw, ew, _ = simulate_stream("decline", horizon=HORIZON, rng=rng_weak, warmup=8)
    dh, eh, _ = simulate_stream("null", horizon=HORIZON, rng=rng_ok, warmup=8, variant="linear")
    rows = [
        {
            "candidate": f"run-{i}",
            "dev.weak": f"{dw[i]:.4f}",
            "external.weak": f"{ew[i]:.2f}" if i % every == 0 else "",
            "dev.healthy": f"{dh[i]:.4f}",
            "external.healthy": f"{eh[i]:.2f}" if i % every == 0 else "",
        }
        for i in range(HORIZON)
    ]
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return path


SETTINGS = DetectorSettings(n_domains=2, threshold_override=20.0, hinge_form=HingeForm.LINEAR)


def test_the_decline_is_caught_and_the_healthy_domain_spared(tmp_path: Path) -> None:
    """Over seeds (not one trajectory): the falling domain in most, the healthy one in none."""
    verdicts = [
        monitor_log(read_log(_log(tmp_path / f"s{seed}.csv", seed)), settings=SETTINGS)["domains"]
        for seed in range(4)
    ]
    assert sum(v["weak"]["verdict"] == "decoupled" for v in verdicts) >= 3
    assert all(v["healthy"]["verdict"] == "valid" for v in verdicts)
    fired = next(v["weak"]["switches"][0] for v in verdicts if v["weak"]["switches"])
    assert fired["candidate"].startswith("run-") and fired["statistic"] >= 20.0


def test_the_cli_prints_json_and_reads_json_lines_with_gaps(tmp_path: Path) -> None:
    path = _log(tmp_path / "log.jsonl", seed=1, every=2)
    r = run_cli("monitor", str(path), "--threshold", "20", "--hinge-form", "linear", "--json")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["candidates"] == HORIZON and set(result["domains"]) == {"weak", "healthy"}
    assert result["domains"]["weak"]["pairs"] == HORIZON // 2
    assert result["settings"]["threshold_override"] == 20.0
    r = run_cli("monitor", str(path), "--domains", "healthy")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("healthy: valid (32 pairs;")


@pytest.mark.parametrize(
    ("content", "suffix", "message"),
    [
        ("candidate,dev.a,external.a\n1,0.5,\n2,,0.4\n", ".csv", "row 2, dev.a: missing"),
        ("candidate,dev.a,external.a\n1,0.5,\n2,high,0.4\n", ".csv", "row 2, dev.a: not a number"),
        ("candidate,dev.a,external.a\n1,0.5,1.5\n", ".csv", "row 1, external.a: 1.5 is not"),
        ("candidate,dev.a,external.a\n1,nan,0.5\n", ".csv", "row 1, dev.a: nan is not"),
        ('{"dev.a": 0.5}\n[1]\n', ".jsonl", "line 2: expected a JSON object"),
        ('{"dev.a": 0.5}\n{oops\n', ".jsonl", "line 2: not JSON"),
        ("candidate,score\n1,0.5\n", ".csv", "no dev.<domain> column"),
        ("dev.a\n0.5\n", ".txt", "unknown format '.txt'"),
        ("candidate,dev.a\n", ".csv", "no candidates"),
    ],
)
def test_a_bad_log_is_one_line_naming_row_and_column(
    tmp_path: Path, content: str, suffix: str, message: str
) -> None:
    path = tmp_path / f"log{suffix}"
    path.write_text(content)
    with pytest.raises(LogError, match=message.replace("(", r"\(").replace(".", r"\.")):
        read_log(path)


def test_cli_bad_input_exits_2_with_one_line(tmp_path: Path) -> None:
    path = _log(tmp_path / "log.csv", seed=0)
    for args, message in [
        ((str(tmp_path / "missing.csv"),), "no such file"),
        ((str(path), "--domains", "nosuch"), "no column dev.nosuch"),
        ((str(path), "--warmup", "64"), "warm-up 64 needs at least 65 candidates"),
        ((str(path), "--threshold", "1"), "--threshold must be > 1"),
    ]:
        r = run_cli("monitor", *args)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1 and message in r.stderr, r.stderr


def test_a_plain_optuna_study_is_read_like_its_log(tmp_path: Path) -> None:
    """Scores in trials' user attributes (as a plain Optuna loop would keep them, under its own
    key names): the same verdicts and evidence as the same log as CSV."""
    import optuna

    from searchlab.monitor import read_optuna

    csv_path = _log(tmp_path / "log.csv", seed=2, every=2)
    with csv_path.open() as f:
        rows = list(csv.DictReader(f))
    url = f"sqlite:///{tmp_path / 'plain.db'}"
    study = optuna.create_study(study_name="plain", storage=url)
    for row in rows:
        trial = study.ask()
        for d in ("weak", "healthy"):
            trial.set_user_attr(f"{d}/dev", float(row[f"dev.{d}"]))
            if row[f"external.{d}"]:
                trial.set_user_attr(f"{d}/leaderboard", float(row[f"external.{d}"]))
        study.tell(trial, 0.0)
    plain = read_optuna(url, "plain", dev_key="{domain}/dev", external_key="{domain}/leaderboard")
    from_csv = monitor_log(read_log(csv_path), settings=SETTINGS)["domains"]
    from_optuna = monitor_log(plain, settings=SETTINGS)["domains"]
    for d in ("weak", "healthy"):
        ours, theirs = from_optuna[d], from_csv[d]
        assert (ours["verdict"], ours["pairs"], ours["last"]) == (
            theirs["verdict"],
            theirs["pairs"],
            theirs["last"],
        )
    # Switches name the trial number instead of the log's id.
    assert [s["pair"] for s in from_optuna["weak"]["switches"]] == [
        s["pair"] for s in from_csv["weak"]["switches"]
    ]
    r = run_cli(
        "monitor",
        "--optuna-storage",
        url,
        "--study",
        "plain",
        "--dev-key",
        "{domain}/dev",
        "--external-key",
        "{domain}/leaderboard",
        "--threshold",
        "20",
        "--json",
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["domains"]["healthy"]["verdict"] == "valid"
    for args, message in [
        (("--study", "nosuch"), "no study 'nosuch'"),
        (("--study", "plain", "--dev-key", "dev"), "needs exactly one {domain}"),
        (("--study", "plain"), "no user attribute of its 64 COMPLETE trials matches 'dev."),
        (
            ("--study", "plain", "--dev-key", "{domain}/dev", "--domains", "x"),
            "no user attribute x/dev",
        ),
        ((), "give a LOG file, or --optuna-storage URL with --study NAME"),
    ]:
        r = run_cli("monitor", "--optuna-storage", url, *args)
        assert r.returncode == 2 and message in r.stderr, r.stderr
