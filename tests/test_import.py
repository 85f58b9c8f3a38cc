"""Past runs imported into a study (``study import``): checked row by row, charged to the budget,
then the study runs on from them."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
from conftest import run_cli, simulated_study, sqlite_url, write_yaml

from searchlab.backends import SimulatedBackend
from searchlab.config import validate_study
from searchlab.space import SearchSpace
from searchlab.store import AuditKind, Storage

_DOMAINS = ["bit_manipulation", "gravity", "equations"]


def _study() -> dict[str, Any]:
    return simulated_study(
        "warm",
        4,
        _DOMAINS,
        options={"variant": "goodhart", "b_g": 1.5},
        rounds={"candidates": 4, "count": 3},
        external={"per_round": 2, "total": 10},
        policy={"warmup_rounds": 1},
    )


def _past_runs(n: int = 8) -> list[dict[str, Any]]:
    """``n`` runs made elsewhere: simulated training of quasi-random recipes, every other one
    submitted (the third twice)."""
    config = validate_study(_study(), source="test")
    backend = SimulatedBackend(
        domains=config.domain_names, weights=config.weights, seed=99, **config.backend.options
    )
    rows = []
    for i, recipe in enumerate(SearchSpace(config.space).quasi_random(n, seed=7)):
        art = backend.train(recipe, candidate=1000 + i, seed=i)
        row = {**recipe, "candidate": f"run-{i}"}
        row |= {f"dev.{d}": v[0] for d, v in backend.evaluate(art).items()}
        if i % 2 == 0:
            scores = backend.submit_external(art, submission=i)
            row |= {f"external.{d}": v for d, v in scores.items()}
            row["submissions"] = 2 if i == 2 else 1
        rows.append(row)
    return rows


def _write(path: Path, rows: list[dict[str, Any]]) -> Path:
    if path.suffix == ".csv":
        columns = list(dict.fromkeys(k for r in rows for k in r))
        with path.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=columns)
            w.writeheader()
            w.writerows(rows)
    elif path.suffix == ".parquet":
        import pandas as pd

        pd.DataFrame(rows).to_parquet(path)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _init(tmp_path: Path) -> str:
    tmp_path.mkdir(parents=True, exist_ok=True)
    url = sqlite_url(tmp_path / "s.db")
    done = run_cli(
        "study", "init", str(write_yaml(tmp_path / "s.yaml", _study())), "--storage", url
    )
    assert done.returncode == 0, done.stderr
    return url


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_import_then_run_on(tmp_path: Path, suffix: str) -> None:
    if suffix == ".parquet":
        pytest.importorskip("pyarrow")
    rows = _past_runs()
    url = _init(tmp_path)
    path = _write(tmp_path / f"runs{suffix}", rows)
    done = run_cli("study", "import", "warm", str(path), "--storage", url, "--json")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["candidates"] == list(range(8))
    assert out["external_budget"] == {"used": 5, "left": 5, "total": 10}  # 4 runs, one twice

    record = Storage(url).load("warm")
    imported = record.candidates()
    assert [c.round for c in imported] == [-1] * 8
    assert [c.proposal["label"] for c in imported] == [f"run-{i}" for i in range(8)]
    for c, row in zip(imported, rows, strict=True):
        assert c.dev == pytest.approx({d: row[f"dev.{d}"] for d in _DOMAINS})
        assert c.recipe == pytest.approx({k: row[k] for k in c.recipe})
    subs = record.submissions()
    assert sorted(subs) == [0, 2, 4, 6] and subs[2]["charge"] == 2
    assert all(s["state"] == "done" and set(s["test_dev"]) == set(_DOMAINS) for s in subs.values())
    (entry,) = [e for e in record.audit_log() if e["kind"] == AuditKind.CANDIDATES_IMPORTED]
    assert entry["charged"] == 5 and entry["paired"] == [0, 2, 4, 6]

    # The study runs on from them: the engine (resume) spends only what is left.
    done = run_cli("study", "resume", "warm", "--storage", url, "-q")
    assert done.returncode == 0, done.stderr
    status = json.loads(run_cli("study", "status", "warm", "--storage", url, "--json").stdout)
    assert status["finished"] and status["external_budget"]["used"] <= 10
    assert status["candidates"] == 8 + 12
    checks = [e for e in Storage(url).load("warm").audit_log() if e["kind"] == "validity_check"]
    assert checks and checks[0]["domains"]["gravity"]["n_pairs"] == 5  # 4 imported + 1


def _bad(rows: list[dict[str, Any]], i: int, **change: Any) -> list[dict[str, Any]]:
    out = [dict(r) for r in rows]
    for k, v in change.items():
        if v is None:
            out[i].pop(k, None)
        else:
            out[i][k] = v
    return out


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"dev.gravity": None}, "row 3, dev.gravity: missing"),
        ({"dev.gravity": "high"}, "row 3, dev.gravity: not a number ('high')"),
        ({"dev.gravity": 1.5}, "row 3, dev.gravity: 1.5 is not a score in [0, 1]"),
        (
            {"external.gravity": None},
            "row 3, external.gravity: missing (give every domain or none)",
        ),
        ({"epochs": 40}, "row 3: recipe key 'epochs' = 40 is outside its bounds [1, 10]"),
        ({"lora_rank": 12}, "row 3: recipe key 'lora_rank' = '12' is not one of its choices"),
        ({"template_share": None}, "row 3, template_share: missing"),
        ({"lora_rnak": 8}, "unknown column 'lora_rnak' (row 3)"),
        ({"submissions": 9}, "the runs charge 12 submissions, the study's budget is 10"),
        ({"submissions": -1}, "row 3, submissions: '-1' is not a whole number of at least 0"),
        ({"submissions": 0}, "row 3, submissions: 0 with external scores given"),
    ],
)
def test_a_bad_row_is_one_line_and_nothing_is_stored(
    tmp_path: Path, change: dict[str, Any], message: str
) -> None:
    url = _init(tmp_path)
    path = _write(tmp_path / "runs.csv", _bad(_past_runs(), 2, **change))
    before = Storage(url).load("warm").attrs
    done = run_cli("study", "import", "warm", str(path), "--storage", url)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and message in done.stderr, done.stderr
    record = Storage(url).load("warm")
    assert record.attrs == before and record.candidates() == []


def test_import_refuses_a_study_that_started(tmp_path: Path) -> None:
    url = _init(tmp_path)
    path = _write(tmp_path / "runs.jsonl", _past_runs(2))
    assert run_cli("study", "import", "warm", str(path), "--storage", url).returncode == 0
    again = run_cli("study", "import", "warm", str(path), "--storage", url)
    assert again.returncode == 2 and "imported once" in again.stderr
    url = _init(tmp_path / "other")
    assert run_cli("study", "ask", "warm", "--storage", url).returncode == 0
    path = _write(tmp_path / "runs.jsonl", _past_runs(2))
    done = run_cli("study", "import", "warm", str(path), "--storage", url)
    assert done.returncode == 2 and "has candidates already" in done.stderr
    missing = run_cli("study", "import", "warm", str(tmp_path / "nope.csv"), "--storage", url)
    assert missing.returncode == 2 and "no such file" in missing.stderr
