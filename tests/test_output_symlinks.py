"""``study report`` and ``study export`` never write through a symbolic link.

A symlinked ``summary.md`` (or ``candidates.csv``, or the folder itself) in the output folder is
refused with one ``error:`` line naming it, before any file is written; its target is unchanged.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from conftest import run_cli, sqlite_url
from studybuild import build_study

from searchlab.export import OutputError, open_output

pytestmark = pytest.mark.skipif(not hasattr(os, "symlink"), reason="no symbolic links here")

ORIGINAL = "precious, not to be overwritten\n"


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = sqlite_url(tmp_path_factory.mktemp("links") / "s.db")
    build_study(url, rounds=2, seed=5)
    return url


def _target(tmp_path: Path) -> Path:
    target = tmp_path / "elsewhere" / "precious.txt"
    target.parent.mkdir()
    target.write_text(ORIGINAL, encoding="utf-8")
    return target


def _one_line_error(result: subprocess.CompletedProcess[str], *culprits: str) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    for culprit in culprits:
        assert culprit in lines[0], lines[0]
    return lines[0]


def test_report_refuses_a_symlinked_summary(stored: str, tmp_path: Path) -> None:
    target = _target(tmp_path)
    out = tmp_path / "rep"
    out.mkdir()
    (out / "summary.md").symlink_to(target)
    r = run_cli("study", "report", "built", "--storage", stored, "--out", str(out))
    _one_line_error(r, str(out / "summary.md"), "symbolic link")
    assert target.read_text(encoding="utf-8") == ORIGINAL
    assert sorted(p.name for p in out.iterdir()) == ["summary.md"]  # nothing else written


def test_report_refuses_a_symlinked_png_and_a_symlinked_folder(stored: str, tmp_path: Path) -> None:
    target = _target(tmp_path)
    out = tmp_path / "rep"
    out.mkdir()
    (out / "validity.png").symlink_to(target)
    r = run_cli("study", "report", "built", "--storage", stored, "--out", str(out))
    _one_line_error(r, str(out / "validity.png"))
    assert target.read_text(encoding="utf-8") == ORIGINAL

    linked = tmp_path / "linked"
    linked.symlink_to(target.parent, target_is_directory=True)
    r = run_cli("study", "report", "built", "--storage", stored, "--out", str(linked))
    _one_line_error(r, str(linked), "symbolic link")
    assert sorted(p.name for p in target.parent.iterdir()) == ["precious.txt"]


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_export_refuses_a_symlinked_table(stored: str, tmp_path: Path, fmt: str) -> None:
    target = _target(tmp_path)
    out = tmp_path / "tables"
    out.mkdir()
    (out / f"decisions.{fmt}").symlink_to(target)
    r = run_cli("study", "export", "built", "--storage", stored, "--out", str(out), "--format", fmt)
    _one_line_error(r, str(out / f"decisions.{fmt}"), "symbolic link")
    assert target.read_text(encoding="utf-8") == ORIGINAL
    assert sorted(p.name for p in out.iterdir()) == [f"decisions.{fmt}"]


def test_open_output_refuses_links_and_writes_files(tmp_path: Path) -> None:
    target = _target(tmp_path)
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "not-there")
    for link in (dangling, tmp_path / "link"):
        if link.name == "link":
            link.symlink_to(target)
        with pytest.raises(OutputError, match="symbolic link"):
            open_output(link)
    assert not (tmp_path / "not-there").exists()
    assert target.read_text(encoding="utf-8") == ORIGINAL
    plain = tmp_path / "plain.txt"
    plain.write_text("old, longer content\n", encoding="utf-8")
    with open_output(plain) as f:
        f.write("new\n")
    assert plain.read_text(encoding="utf-8") == "new\n"  # truncated, not appended


@pytest.mark.skipif(not hasattr(os, "O_NOFOLLOW"), reason="no O_NOFOLLOW here")
def test_open_output_does_not_follow_a_link_made_after_the_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The link appears between the check and the open: O_NOFOLLOW still refuses it.
    import searchlab.export as export

    target = _target(tmp_path)
    path = tmp_path / "late"
    checked = []

    def check_then_link(paths: object) -> None:
        checked.append(paths)
        if not path.is_symlink():
            path.symlink_to(target)

    monkeypatch.setattr(export, "refuse_symlinks", check_then_link)
    with pytest.raises(OutputError):
        open_output(path)
    assert target.read_text(encoding="utf-8") == ORIGINAL
