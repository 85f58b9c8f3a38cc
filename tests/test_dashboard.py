"""The real optuna-dashboard on a finished study: the API, and the page in headless Chromium.

The dashboard runs as ``searchlab dashboard`` in a subprocess on a free loopback port. The
Chromium part needs Debian's ``chromium`` (``.ci/run`` installs it) and is skipped without it.
Set ``SEARCHLAB_SCREENSHOT_DIR`` to keep the screenshots.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import run_cli, sqlite_url
from studybuild import WEAK, build_study

from searchlab.dashboard import publish, publish_after_round
from searchlab.report import FIGURES
from searchlab.store import Storage

CHROMIUM = shutil.which("chromium") or (
    "/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None
)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str, timeout: float = 10) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read().decode("utf-8"))


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = sqlite_url(tmp_path_factory.mktemp("dash") / "s.db")
    build_study(url, seed=5)
    return url


@pytest.fixture(scope="module")
def server(stored: str) -> Iterator[str]:
    """``searchlab dashboard`` on a free loopback port; yields its base URL."""
    port = _free_port()
    log = tempfile.TemporaryFile()  # noqa: SIM115 - open for the server's whole life
    args = ["dashboard", "--storage", stored, "--port", str(port)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "searchlab.cli", *args],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=tempfile.gettempdir(),
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                _get(f"{base}/api/meta", timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    pytest.fail(f"dashboard did not start: {log.read().decode()[-2000:]}")
                time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _study_id(base: str) -> int:
    summaries = _get(f"{base}/api/studies")["study_summaries"]
    return next(s["study_id"] for s in summaries if s["study_name"] == "built")


def _switch(url: str) -> dict:
    log = Storage(url).load("built").audit_log()
    (switch,) = [e for e in log if e["kind"] == "mode_switch"]
    return switch


def test_api_serves_the_searchlab_figures_and_note(server: str, stored: str) -> None:
    detail = _get(f"{server}/api/studies/{_study_id(server)}")
    ids = [g["id"] for g in detail["plotly_graph_objects"]]
    assert sorted(ids) == sorted(FIGURES)
    validity = next(g for g in detail["plotly_graph_objects"] if g["id"] == "searchlab-validity")
    assert "validity statistic" in validity["graph_object"]
    note = detail["note"]["body"]
    switch = _switch(stored)
    assert note.startswith("## searchlab: built")
    assert f"| {WEAK} | decoupled | -> decoupled after candidate {switch['candidate']}" in note
    assert "### Recommendation" in note
    # optuna-dashboard's own view: one dev objective per domain.
    assert detail["objective_names"] == ["dev:cipher", "dev:gravity", "dev:equations"]


def _chromium(url: str, *args: str, profile: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={profile}",
            "--window-size=1400,1000",
            "--virtual-time-budget=15000",
            *args,
            url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run does)")
def test_page_in_headless_chromium_shows_figures_and_note(
    server: str, stored: str, tmp_path: Path
) -> None:
    sid = _study_id(server)
    keep = os.environ.get("SEARCHLAB_SCREENSHOT_DIR")
    shots = Path(keep) if keep else tmp_path
    shots.mkdir(parents=True, exist_ok=True)
    analytics = f"{server}/dashboard/studies/{sid}"
    note_page = f"{server}/dashboard/studies/{sid}/note"

    dom = _chromium(analytics, "--dump-dom", profile=tmp_path / "p1").stdout
    for gid in FIGURES:
        assert f'id="user-defined-plot:{gid}"' in dom, gid
    assert "validity statistic against its threshold" in dom  # the figure was drawn

    dom = _chromium(note_page, "--dump-dom", profile=tmp_path / "p2").stdout
    switch = _switch(stored)
    assert "searchlab: built" in dom
    assert f"decoupled after candidate {switch['candidate']}" in dom

    for name, url in (("dashboard-note.png", note_page), ("dashboard-study.png", analytics)):
        shot = shots / name
        r = _chromium(url, f"--screenshot={shot}", profile=tmp_path / f"s-{name}")
        assert shot.exists() and shot.stat().st_size > 10_000, r.stderr[-2000:]
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_publish_overwrites_and_after_round_never_raises(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path / "s.db")
    record = build_study(url, rounds=3, seed=5)
    assert sorted(publish(record)) == sorted(FIGURES)
    assert publish_after_round(record) is None  # again: overwritten, same ids
    attrs = record.study._storage.get_study_system_attrs(record.study._study_id)
    ids = {k.split(":")[2] for k in attrs if k.startswith("dashboard:plot_data:")}
    assert ids == set(FIGURES)
    assert attrs["dashboard:note_ver"] == 2

    class Broken:
        name = "broken"

        def refresh(self) -> None:
            raise RuntimeError("boom\nsecond line")

    message = publish_after_round(Broken())  # type: ignore[arg-type]
    assert message == "RuntimeError: boom second line"


def test_bad_input_is_one_line(stored: str, tmp_path: Path) -> None:
    r = run_cli("dashboard", "--storage", sqlite_url(tmp_path / "missing.db"), "--port", "1")
    assert r.returncode == 2 and "no such database file" in r.stderr
    assert not (tmp_path / "missing.db").exists()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        busy = s.getsockname()[1]
        r = run_cli("dashboard", "--storage", stored, "--port", str(busy))
    assert r.returncode == 2 and r.stderr.startswith(f"error: cannot listen on 127.0.0.1:{busy}")
    assert len(r.stderr.strip().splitlines()) == 1
