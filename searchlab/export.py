"""Output folders and files that refuse symbolic links, and the export of a study's tables.

:func:`export` writes the tidy tables of :mod:`searchlab.readmodel` as CSV, JSON or Parquet;
:func:`check_output_dir`, :func:`refuse_symlinks` and :func:`open_output` are what every command
that writes files (export, report) uses, so none writes through a link it did not make.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from searchlab.errors import SearchlabError
from searchlab.readmodel import read

if TYPE_CHECKING:
    from searchlab.store import StudyRecord

__all__ = ["FORMATS", "OutputError", "check_output_dir", "export", "open_output", "refuse_symlinks"]

FORMATS = ("csv", "json", "parquet")


class OutputError(SearchlabError):
    """An output folder cannot be created or written."""


def check_output_dir(path: str | os.PathLike[str]) -> Path:
    """Creates ``path`` if needed and checks that a file can be written in it.

    Raises:
        OutputError: If it cannot be created or written (one line, before anything is written).
    """
    out = Path(path)
    try:
        if out.is_symlink():
            # Whatever it points to is not the folder that was named.
            raise OutputError(f"output folder {str(out)!r} is a symbolic link: refusing to use it")
        if out.exists() and not out.is_dir():
            raise OutputError(f"output folder {str(out)!r} is a file, not a folder")
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".searchlab-write-test-"):
            pass
    except OutputError:
        raise
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise OutputError(f"output folder {str(out)!r} cannot be written: {reason}") from None
    return out


def refuse_symlinks(paths: Iterable[Path]) -> None:
    """Checks, before anything is written, that no file about to be written is a symlink.

    Raises:
        OutputError: Naming the first such path.
    """
    for path in paths:
        if os.path.islink(path):
            raise OutputError(
                f"output file {str(path)!r} is a symbolic link: refusing to write through it"
            )


def open_output(path: Path, *, binary: bool = False) -> IO[Any]:
    """Opens ``path`` for writing (created or truncated) without following a symlink.

    ``O_NOFOLLOW`` closes the gap between :func:`refuse_symlinks` and the write; where the
    platform lacks it, the symlink check is repeated instead.

    Raises:
        OutputError: If ``path`` is a symbolic link or cannot be opened.
    """
    refuse_symlinks([path])
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags, 0o666)
    except OSError as exc:
        if os.path.islink(path):  # ELOOP from O_NOFOLLOW: it became a link meanwhile
            refuse_symlinks([path])
        raise OutputError(f"cannot write {str(path)!r}: {exc.strerror or exc}") from None
    if binary:
        return os.fdopen(fd, "wb")
    return os.fdopen(fd, "w", encoding="utf-8", newline="")


def export(record: StudyRecord, fmt: str, out_dir: str | os.PathLike[str]) -> list[Path]:
    """Writes the study's tidy tables (:attr:`StudyView.tables`) to ``out_dir`` as
    ``<table>.<fmt>``.

    Args:
        record: The stored study.
        fmt: ``"csv"``, ``"json"`` (an array of records per table) or ``"parquet"`` (needs
            pyarrow).
        out_dir: The folder (created if missing).

    Returns:
        The files written.

    Raises:
        OutputError: Unknown format, pyarrow missing for Parquet, or an unwritable folder.
    """
    if fmt not in FORMATS:
        raise OutputError(f"unknown format {fmt!r}: use one of {', '.join(FORMATS)}")
    if fmt == "parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise OutputError(
                "--format parquet needs pyarrow: pip install pyarrow (or use csv or json)"
            ) from None
    out = check_output_dir(out_dir)
    frames = read(record).tables
    refuse_symlinks(out / f"{name}.{fmt}" for name in frames)  # before any file is written
    written = []
    for name, df in frames.items():
        path = out / f"{name}.{fmt}"
        try:
            with open_output(path, binary=fmt == "parquet") as f:
                if fmt == "csv":
                    df.to_csv(f, index=False)
                elif fmt == "json":
                    f.write(df.to_json(orient="records", indent=2) + "\n")
                else:
                    df.to_parquet(f, index=False)
        except OSError as exc:
            raise OutputError(f"cannot write {str(path)!r}: {exc.strerror or exc}") from None
        written.append(path)
    return written
