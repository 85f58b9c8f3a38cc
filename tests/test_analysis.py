"""Tidy export and re-analysis of a stored study (written by ``studybuild``, no engine run)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest
from conftest import run_cli, sqlite_url
from studybuild import DOMAINS, WEAK, build_study

from searchlab.analysis import AnalysisError, reanalyze
from searchlab.readmodel import read
from searchlab.store import Storage


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One finished study whose weak domain switched; the observed dev is all it stored."""
    url = sqlite_url(tmp_path_factory.mktemp("analysis") / "s.db")
    build_study(url, seed=5)
    return url


def test_tables_have_the_tidy_columns(stored: str) -> None:
    t = read(Storage(stored).load("built")).tables
    c = t["candidates"]
    assert len(c) == 24 and list(c["number"]) == list(range(24))
    for d in DOMAINS:
        assert {f"dev.{d}", f"external.{d}", f"mode.{d}"} <= set(c.columns)
    assert {"recipe.learning_rate", "recipe.mixture.cipher", "round", "state"} <= set(c.columns)
    # External only where measured: 18 submissions.
    assert c[f"external.{WEAK}"].notna().sum() == 18
    # The weak domain was proposed in decoupled mode after its switch, in proxy mode before.
    assert set(c[f"mode.{WEAK}"]) == {"proxy", "decoupled"}
    assert list(c.loc[c["round"] == 0, f"mode.{WEAK}"]) == ["proxy"] * 4
    d = t["decisions"]
    assert {"seq", "kind", "round"} <= set(d.columns)
    assert "mode_switch" in set(d["kind"]) and "evidence.statistic" in d.columns
    s = t["submissions"]
    assert list(s["submission"]) == list(range(18))
    ch = t["checks"]
    assert len(ch) == 18 * len(DOMAINS) and ch["pair"].max() == 18


def test_export_csv_and_json_read_back(stored: str, tmp_path: Path) -> None:
    r = run_cli("study", "export", "built", "--storage", stored, "--out", tmp_path / "csv")
    assert r.returncode == 0, r.stderr
    back = pd.read_csv(tmp_path / "csv" / "candidates.csv")
    assert len(back) == 24 and f"dev.{WEAK}" in back.columns
    r = run_cli(
        "study", "export", "built", "--storage", stored, "--out", tmp_path / "j", "--format", "json"
    )
    assert r.returncode == 0, r.stderr
    rows = json.loads((tmp_path / "j" / "submissions.json").read_text())
    assert len(rows) == 18 and set(rows[0]) >= {"candidate", "submission", f"external.{WEAK}"}


def test_export_parquet_needs_pyarrow(stored: str, tmp_path: Path) -> None:
    args = ("study", "export", "built", "--storage", stored, "--format", "parquet")
    r = run_cli(*args, "--out", tmp_path / "p")
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        assert r.returncode == 2
        assert r.stderr.strip() == (
            "error: --format parquet needs pyarrow: pip install pyarrow (or use csv or json)"
        )
        assert not (tmp_path / "p").exists()
    else:
        assert r.returncode == 0, r.stderr
        assert len(pd.read_parquet(tmp_path / "p" / "candidates.parquet")) == 24


def test_stricter_alpha_fires_later_and_looser_earlier(stored: str) -> None:
    record = Storage(stored).load("built")
    base = reanalyze(record)
    assert base["dev_source"] == "observed"
    strict = reanalyze(record, alpha=0.005)
    loose = reanalyze(record, alpha=0.3)
    for d in DOMAINS:
        first = base["domains"][d]["reanalysis"]["first_switch"]
        s = strict["domains"][d]["reanalysis"]["first_switch"]
        lo = loose["domains"][d]["reanalysis"]["first_switch"]
        if first is None:
            assert s is None
        else:
            assert s is None or s["pair"] >= first["pair"]
        if first is not None:
            assert lo is not None and lo["pair"] <= first["pair"]
    # On this study the weak domain moves strictly both ways; the others never switch.
    w = lambda r: r["domains"][WEAK]["reanalysis"]["first_switch"]["pair"]  # noqa: E731
    assert w(strict) > w(base) > w(loose)
    assert strict["domains"][WEAK]["change"].startswith("later")
    assert loose["domains"][WEAK]["change"].startswith("earlier")
    for d in set(DOMAINS) - {WEAK}:
        assert base["domains"][d]["study"]["first_switch"] is None


def test_stored_per_check_dev_replays_the_study_exactly(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path / "s.db")
    record = build_study(url, seed=5, store_check_dev=True)
    result = reanalyze(record)
    assert result["dev_source"] == "stored"
    for d in DOMAINS:
        study = result["domains"][d]["study"]["first_switch"]
        replay = result["domains"][d]["replay"]["first_switch"]
        assert (study is None) == (replay is None)
        if study is not None:
            assert (study["candidate"], study["pair"]) == (replay["candidate"], replay["pair"])


def test_analyze_cli_says_which_dev_and_json(stored: str) -> None:
    r = run_cli("study", "analyze", "built", "--storage", stored, "--alpha", "0.005")
    assert r.returncode == 0, r.stderr
    assert "dev used: observed dev" in " ".join(r.stdout.split())
    assert WEAK in r.stdout
    r = run_cli("study", "analyze", "built", "--storage", stored, "--json", "--hinge-form", "x")
    assert r.returncode == 2 and r.stderr.startswith("error: bad detector settings")
    r = run_cli("study", "analyze", "built", "--storage", stored, "--json", "--knot-offsets", "0,1")
    data = json.loads(r.stdout)
    assert data["changed"] == {"knot_offsets": [0.0, 1.0]} and set(data["domains"]) == set(DOMAINS)


def test_bad_input_is_one_line(stored: str, tmp_path: Path) -> None:
    r = run_cli("study", "export", "nope", "--storage", stored, "--out", tmp_path / "x")
    assert r.returncode == 2 and "no study 'nope'" in r.stderr and "['built']" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    missing = sqlite_url(tmp_path / "missing.db")
    r = run_cli("study", "analyze", "built", "--storage", missing)
    assert r.returncode == 2 and "no such database file" in r.stderr
    assert not (tmp_path / "missing.db").exists()
    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = run_cli("study", "export", "built", "--storage", stored, "--out", blocker)
    assert r.returncode == 2 and "is a file, not a folder" in r.stderr
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        r = run_cli("study", "export", "built", "--storage", stored, "--out", locked / "sub")
        assert r.returncode == 2 and "cannot be written" in r.stderr


def test_threshold_override_and_settings_errors(stored: str) -> None:
    record = Storage(stored).load("built")
    try:
        result = reanalyze(record, threshold=1e9)
    except AnalysisError as exc:  # a searchlab without calibrated thresholds
        assert "threshold_override" in str(exc)
        return
    assert result["changed"] == {"threshold_override": 1e9}
    assert all(v["reanalysis"]["first_switch"] is None for v in result["domains"].values())
    with pytest.raises(AnalysisError, match="bad detector settings"):
        reanalyze(record, alpha=2.0)
