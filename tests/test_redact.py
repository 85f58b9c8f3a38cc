"""Storage URLs are shown with no part of a password: in every URL form, and in driver errors."""

from __future__ import annotations

import pytest
from conftest import run_cli

from searchlab.errors import StorageError
from searchlab.store import _storage_errors, redact

PG = "postgresql+psycopg"


@pytest.mark.parametrize(
    ("url", "shown", "hidden"),
    [
        (f"{PG}://alice:pw1234@db.example:5432/s", f"{PG}://alice:***@db.example:5432/s", []),
        # SQLAlchemy splits at the first '@': the password runs to the last one before the host.
        (
            f"{PG}://alice:Hunter2@Secret@127.0.0.1:1/db",
            f"{PG}://alice:***@127.0.0.1:1/db",
            ["Hunter2", "Secret"],
        ),
        ("mysql://u:p@ss:w@rd@[::1]:3306/db", "mysql://u:***@[::1]:3306/db", ["ss:w", "rd@"]),
        (f"{PG}://a:b%40cdef@h/db", f"{PG}://a:***@h/db", ["cdef", "%40"]),
        (f"{PG}://a:with/slash?q@h/db", f"{PG}://a:***@h/db", ["slash", "with"]),
        (
            f"{PG}://alice:pw1234@127.0.0.1:1/db?password=Hunter2Secret&x=1",
            f"{PG}://alice:***@127.0.0.1:1/db?password=***&x=1",
            ["Hunter2", "Secret"],
        ),
        (
            f"{PG}://alice@h/db?PassWord=Hunter2&Token=abcdef&PWD=zzz9&passwd=q1q1&secret=s3cr"
            "&sslmode=require",
            f"{PG}://alice@h/db?PassWord=***&Token=***&PWD=***&passwd=***&secret=***"
            "&sslmode=require",
            ["Hunter2", "abcdef", "zzz9", "q1q1", "s3cr"],
        ),
        ("sqlite:////tmp/a@b.db", "sqlite:////tmp/a@b.db", []),  # no userinfo: kept as typed
        ("sqlite:///searchlab.db", "sqlite:///searchlab.db", []),
    ],
)
def test_redact_hides_every_part_of_the_password(url: str, shown: str, hidden: list[str]) -> None:
    assert redact(url) == shown
    for part in hidden:
        assert part not in redact(url)


def test_driver_messages_are_scrubbed() -> None:
    url = f"{PG}://alice:Hunter2@Secret@db.invalid:1/db"
    with pytest.raises(StorageError) as info, _storage_errors(url, "open"):
        # What psycopg says when SQLAlchemy gave it host 'Secret@db.invalid'.
        raise OSError(f"failed to resolve host 'Secret@db.invalid' for {url} (user alice:Hunter2)")
    message = str(info.value)
    assert "Hunter2" not in message and "Secret" not in message
    assert message.startswith(f"storage {PG}://alice:***@db.invalid:1/db: cannot open:")
    assert "'***@db.invalid'" in message


@pytest.mark.parametrize(
    "url",
    [
        f"{PG}://alice:Hunter2@Secret@127.0.0.1:1/db",
        f"{PG}://alice:pw1234@127.0.0.1:1/db?password=Hunter2Secret",
    ],
)
def test_cli_with_an_unreachable_postgres_never_shows_the_password(url: str) -> None:
    r = run_cli("study", "list", "--storage", url, timeout=120)
    assert r.returncode == 2, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: storage "), r.stderr
    for text in (r.stdout, r.stderr):
        assert "Hunter2" not in text and "Secret" not in text
