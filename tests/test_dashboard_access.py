"""Who may reach the dashboard, and what they may do: loopback by default, remote read-only.

The :class:`ReadOnly` middleware is called as a WSGI app, alone and around optuna-dashboard's own
app; then ``searchlab dashboard --host 0.0.0.0 --allow-remote`` serves on a free port and a
DELETE through loopback is refused while reads work.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from io import BytesIO
from pathlib import Path
from typing import Any
from wsgiref.util import setup_testing_defaults

import pytest
from conftest import run_cli, sqlite_url
from studybuild import build_study

from searchlab.dashboard import DashboardError, ReadOnly, access, is_loopback

pytest.importorskip("optuna_dashboard")


def _call(app: Any, method: str | None, path: str = "/") -> tuple[str, dict[str, str], bytes]:
    """One request to a WSGI app: (status line, headers, body)."""
    environ: dict[str, Any] = {"PATH_INFO": path, "wsgi.input": BytesIO(b"")}
    setup_testing_defaults(environ)
    if method is None:
        del environ["REQUEST_METHOD"]
    else:
        environ["REQUEST_METHOD"] = method
    seen: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
        seen["status"], seen["headers"] = status, dict(headers)

    chunks: Iterable[bytes] = app(environ, start_response)
    body = b"".join(chunks)
    return seen["status"], seen["headers"], body


class _Inner:
    """A WSGI app that records the methods it was called with."""

    def __init__(self) -> None:
        self.methods: list[str] = []

    def __call__(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        self.methods.append(environ["REQUEST_METHOD"])
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"inner"]


def test_read_only_passes_get_and_head_and_refuses_the_rest() -> None:
    inner = _Inner()
    app = ReadOnly(inner)
    for method in ("GET", "HEAD", "get"):
        assert _call(app, method)[0] == "200 OK"
    for method in ("DELETE", "POST", "PUT", "PATCH", "OPTIONS", "delete", "PROPFIND", "", None):
        status, headers, body = _call(app, method)
        assert status.startswith("405 "), method
        assert headers["Allow"] == "GET, HEAD"
        assert int(headers["Content-Length"]) == len(body) and b"read-only" in body
    assert inner.methods == ["GET", "HEAD", "get"]


def test_read_only_around_optuna_dashboard_keeps_the_study(tmp_path: Path) -> None:
    import optuna
    import optuna_dashboard

    url = sqlite_url(tmp_path / "s.db")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    optuna.create_study(storage=url, study_name="kept")
    storage = optuna.storages.RDBStorage(url)
    app = ReadOnly(optuna_dashboard.wsgi(storage))

    status, _, body = _call(app, "GET", "/api/studies")
    assert status.startswith("200 ")
    (summary,) = json.loads(body)["study_summaries"]
    sid = summary["study_id"]
    assert _call(app, "DELETE", f"/api/studies/{sid}")[0].startswith("405 ")
    assert _call(app, "POST", f"/api/studies/{sid}/rename")[0].startswith("405 ")
    assert [s.study_name for s in optuna.get_all_study_summaries(url)] == ["kept"]
    # Unwrapped, the same DELETE deletes: what the middleware stands between.
    assert _call(optuna_dashboard.wsgi(storage), "DELETE", f"/api/studies/{sid}")[0][:3] == "204"
    assert optuna.get_all_study_summaries(url) == []


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("localhost", True),
        ("LOCALHOST", True),
        ("::1", True),
        ("[::1]", True),
        ("::ffff:127.0.0.1", True),
        ("0.0.0.0", False),
        ("::", False),
        ("", False),
        ("10.0.0.5", False),
        ("example.com", False),
        ("localhost.example.com", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_access_policy() -> None:
    assert access("127.0.0.1", 8080) == (True, None)  # loopback: as optuna-dashboard does
    assert access("::1", 8080, allow_writes=False) == (False, None)
    with pytest.raises(DashboardError, match="--allow-remote"):
        access("0.0.0.0", 8080)
    writes, warning = access("0.0.0.0", 8080, allow_remote=True)
    assert writes is False and warning is not None and "no authentication" in warning
    writes, warning = access("0.0.0.0", 8080, allow_remote=True, allow_writes=True)
    assert writes is True and warning is not None and "delete" in warning
    for port in (0, -1, 65536, 99999):
        with pytest.raises(DashboardError, match="--port"):
            access("127.0.0.1", port)


def _one_line_error(result: subprocess.CompletedProcess[str], *culprits: str) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    for culprit in culprits:
        assert culprit in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize(
    ("args", "culprits"),
    [
        (["--port", "0"], ["--port", "0"]),
        (["--port", "99999"], ["--port", "99999"]),
        (["--host", "0.0.0.0"], ["0.0.0.0", "--allow-remote"]),
        (["--host", "example.com", "--allow-writes"], ["example.com", "--allow-remote"]),
    ],
)
def test_cli_refuses_with_one_line(tmp_path: Path, args: list[str], culprits: list[str]) -> None:
    # The address is checked before the storage: the database file does not even exist.
    r = run_cli("dashboard", "--storage", sqlite_url(tmp_path / "none.db"), *args, timeout=120)
    _one_line_error(r, *culprits)
    assert not (tmp_path / "none.db").exists()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _request(url: str, method: str = "GET") -> tuple[int, bytes]:
    req = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(req, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_remote_server_is_read_only(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path / "s.db")
    build_study(url, rounds=2, seed=5)
    port = _free_port()
    log = tmp_path / "server.log"
    args = ["dashboard", "--storage", url, "--port", str(port), "--no-publish"]
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "searchlab.cli", *args, "--host", "0.0.0.0", "--allow-remote"],
            stdout=sink,
            stderr=subprocess.STDOUT,
            cwd=tempfile.gettempdir(),
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                status, body = _request(f"{base}/api/studies")
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"dashboard did not start: {log.read_text()[-2000:]}")
                time.sleep(0.2)
        assert status == 200
        (summary,) = json.loads(body)["study_summaries"]
        assert _request(f"{base}/api/studies/{summary['study_id']}", "DELETE")[0] == 405
        assert _request(f"{base}/api/studies/{summary['study_id']}")[0] == 200
        assert _request(f"{base}/api/meta", "HEAD")[0] == 200
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    import optuna

    assert [s.study_name for s in optuna.get_all_study_summaries(url)] == ["built"]
    warnings = [line for line in log.read_text().splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "no authentication" in warnings[0], log.read_text()
