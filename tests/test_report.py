"""``searchlab study report``: one self-contained HTML page, PNG figures and summary.md."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest
from conftest import run_cli, sqlite_url
from studybuild import DOMAINS, WEAK, build_study

from searchlab.report import FIGURES, figures, view
from searchlab.store import Storage


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    path = tmp_path_factory.mktemp("report") / "s.db"
    build_study(sqlite_url(path), seed=5)
    return sqlite_url(path), path


def _switch(url: str) -> dict:
    log = Storage(url).load("built").audit_log()
    (switch,) = [e for e in log if e["kind"] == "mode_switch"]
    return switch


def test_report_writes_html_pngs_and_summary(stored: tuple[str, Path], tmp_path: Path) -> None:
    url, db = stored
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    out = tmp_path / "report"
    r = run_cli("study", "report", "built", "--storage", url, "--out", out)
    assert r.returncode == 0, r.stderr
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before  # reading only
    names = {p.name for p in out.iterdir()}
    pngs = {"dev_external.png", "validity.png", "modes.png", "budget.png"}
    assert {"report.html", "summary.md"} | pngs <= names
    for name in pngs:
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000

    page = (out / "report.html").read_text(encoding="utf-8")
    # Self-contained: plotly.js inline, no script fetched from anywhere.
    assert "<script src=" not in page and len(page) > 1_000_000
    for gid in FIGURES:
        assert f'id="{gid}"' in page
    switch = _switch(url)
    text = f"-&gt; decoupled after candidate {switch['candidate']}"
    assert text in page
    assert "Audit trail" in page and "mode_switch" in page and "Candidates" in page

    summary = (out / "summary.md").read_text(encoding="utf-8")
    assert f"| {WEAK} | decoupled | -> decoupled after candidate {switch['candidate']}" in summary
    assert "## Recommendation" in summary and "Candidate **" in summary
    assert "![validity](validity.png)" in summary
    # The candidate table has a row per candidate.
    assert len(re.findall(r"^\| \d+ \| \d+ \| COMPLETE \|", summary, flags=re.M)) == 24


def test_figures_mark_the_switch_where_the_audit_says(stored: tuple[str, Path]) -> None:
    url, _ = stored
    v = view(Storage(url).load("built"))
    figs = figures(v)
    switch = _switch(url)
    dev_ext = figs["searchlab-dev-external"]
    lines = [s for s in dev_ext.layout.shapes if s.line.dash == "dash"]
    assert [ln.x0 for ln in lines] == [switch["candidate"]]
    validity = figs["searchlab-validity"]
    (star,) = [t for t in validity.data if t.name == "switch"]
    assert star.y[0] == pytest.approx(switch["evidence"]["statistic"])
    modes = figs["searchlab-modes"].data[0]
    row = list(modes.z[DOMAINS.index(WEAK)])
    assert row[0] == 0.0 and row[-1] == 1.0  # proxy after round 1, decoupled at the end
    assert all(z == 0.0 for d in DOMAINS if d != WEAK for z in modes.z[DOMAINS.index(d)])


def test_unwritable_out_is_one_line_and_storage_unchanged(
    stored: tuple[str, Path], tmp_path: Path
) -> None:
    url, db = stored
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for target in (blocker, blocker / "sub"):
        r = run_cli("study", "report", "built", "--storage", url, "--out", target)
        assert r.returncode == 2 and r.stderr.startswith("error: output folder")
        assert len(r.stderr.strip().splitlines()) == 1
    r = run_cli("study", "report", "nope", "--storage", url, "--out", tmp_path / "r")
    assert r.returncode == 2 and "known: ['built']" in r.stderr
    assert not (tmp_path / "r").exists()
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before
