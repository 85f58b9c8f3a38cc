"""The end-to-end null corpus and its replay (searchlab.calibration)."""

from __future__ import annotations

from pathlib import Path

from searchlab.calibration import false_alarms, make_corpus
from searchlab.store import Storage


def _ignored_alarms(storage: str, name: str) -> dict[str, int]:
    """First alarm per domain the study itself recorded (switch disabled: alarm_ignored)."""
    first: dict[str, int] = {}
    for e in Storage(storage).load(name).audit_log():
        if e["kind"] == "alarm_ignored":
            first.setdefault(e["domain"], e["candidate"])
    return first


def test_replay_of_the_studies_own_setting_is_what_the_studies_recorded(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'corpus.db'}"
    # A small budget and a low threshold so that some (ignored) alarms happen at all.
    names = make_corpus(
        url, instances=["null"], seeds=[3, 4], rounds=(5, 3), external=(3, 9), threshold=1.5
    )
    assert len(names) == 2
    # Built again: finished studies are kept, not rerun.
    n_audit = len(Storage(url).load(names[0]).audit_log())
    make_corpus(url, instances=["null"], seeds=[3], rounds=(5, 3), external=(3, 9))
    assert len(Storage(url).load(names[0]).audit_log()) == n_audit

    same = false_alarms(url, threshold=1.5)
    assert same["studies"] == 2
    recorded = {n: _ignored_alarms(url, n) for n in names}
    replayed = {
        n: {a.split("@")[0]: int(a.split("@")[1]) for a in same["alarms"].get(n, [])}
        for n in names
    }
    assert replayed == recorded
    assert same["with_alarm"] == sum(1 for r in recorded.values() if r)
    # A stricter setting can only remove alarms.
    strict = false_alarms(url, threshold=1e9)
    assert strict["with_alarm"] == 0 and strict["ci95"][0] == 0.0
