"""Storage: schema versions and passwords."""

from __future__ import annotations

from pathlib import Path

import pytest

from searchlab.config import validate_study
from searchlab.errors import StorageError
from searchlab.simulation import canonical_space
from searchlab.store import PREFIX, Storage, redact


def _config():
    return validate_study(
        {
            "name": "schema",
            "domains": [{"name": "cipher"}, {"name": "equations"}],
            "space": canonical_space(("cipher", "equations")),
            "backend": {"name": "simulated"},
            "rounds": {"candidates": 2, "count": 2},
            "external": {"per_round": 1, "total": 2},
        },
        source="test",
    )


def test_a_study_from_another_schema_gets_a_clear_message(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    record = Storage(url, create=True).create(_config())
    assert Storage(url).load("schema").get("schema") == 1
    record.study.set_user_attr(f"{PREFIX}schema", 99)
    with pytest.raises(StorageError, match=r"schema version 99.*reads version 1"):
        Storage(url).load("schema")


def test_an_optuna_study_that_is_not_searchlabs_is_named(tmp_path: Path) -> None:
    import optuna

    url = f"sqlite:///{tmp_path / 's.db'}"
    optuna.create_study(study_name="plain", storage=url)
    with pytest.raises(StorageError, match=r"'plain'.*not a searchlab study"):
        Storage(url).load("plain")
    assert Storage(url).names() == []


def test_passwords_are_redacted() -> None:
    assert redact("postgresql://u:hunter2@db:5432/x") == "postgresql://u:***@db:5432/x"
