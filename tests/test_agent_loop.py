"""A loop that is not searchlab's own: a scripted agent drives a whole simulated study through
the CLI's JSON commands only (tests/agent_loop.py), with its ideas enqueued among searchlab's
proposals; then the study reads like any other (status, audit, report, resume, dashboard)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from agent_loop import run_agent
from conftest import run_cli, simulated_study, sqlite_url, write_yaml

from searchlab.backends import SimulatedBackend
from searchlab.config import validate_study
from searchlab.store import AuditKind, Storage

_DOMAINS = ["bit_manipulation", "gravity", "equations"]
WEAK = "equations"


def _study(seed: int) -> dict[str, Any]:
    # A strong trap: template share inflates equations' dev while its external falls soon, so
    # that 18 submissions are enough for the test to see it in any seed.
    return simulated_study(
        "agent",
        seed,
        _DOMAINS,
        options={"variant": "goodhart", "weak_domains": [WEAK], "b_g": 3.0, "a_p": 2.0},
        rounds={"candidates": 6, "count": 6},
        external={"per_round": 3, "total": 18},
        policy={"warmup_rounds": 1, "threshold": 20, "hinge_form": "linear"},
    )


@pytest.mark.parametrize("seed", [3])
def test_an_agent_drives_a_study_through_the_cli(tmp_path: Path, seed: int) -> None:
    data = _study(seed)
    path = write_yaml(tmp_path / "agent.yaml", data)
    url = sqlite_url(tmp_path / "agent.db")
    calls: list[list[str]] = []

    def cli(*args: str, stdin: str | None = None) -> Any:
        calls.append(list(args))
        done = run_cli(*args, "--storage", url, "--json", stdin=stdin)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    cli("study", "init", str(path))
    config = validate_study(data, source="test")
    backend = SimulatedBackend(
        domains=config.domain_names, weights=config.weights, seed=seed, **config.backend.options
    )
    log = run_agent(cli, "agent", data, backend, ideas=2, seed=seed)
    assert {c[1] for c in calls} <= {
        "init",
        "ask",
        "tell",
        "plan",
        "tell-external",
        "enqueue",
        "status",
    }

    record = Storage(url).load("agent")
    audit = record.audit_log()
    # Sources: the agent's ideas are audited with their source and were trained among
    # searchlab's own proposals.
    enqueued = [e for e in audit if e["kind"] == AuditKind.CANDIDATE_ENQUEUED]
    assert [e["candidate"] for e in enqueued] == log["enqueued"] and len(enqueued) == 10
    assert {e["source"] for e in enqueued} == {"agent"}
    sources = {c.number: c.proposal.get("source", "searchlab") for c in record.candidates()}
    assert set(log["asked"]) == set(sources) and len(log["asked"]) == len(sources) == 36
    assert {sources[n] for n in log["asked"]} == {"agent", "searchlab"}
    # Submissions: never twice, within the budget, each answered as told.
    submitted = [e["candidate"] for e in audit if e["kind"] == AuditKind.SUBMISSION]
    assert submitted == log["told_external"]
    assert len(submitted) == len(set(submitted)) <= 18
    # The switch fired on the weak domain, and on no other.
    switches = [e for e in audit if e["kind"] == AuditKind.MODE_SWITCH]
    assert {e["domain"] for e in switches} == {WEAK}
    assert audit[-1]["kind"] == AuditKind.RECOMMENDATION

    # Read like any other study.
    status = json.loads(run_cli("study", "status", "agent", "--storage", url, "--json").stdout)
    assert status["finished"] and [a["domain"] for a in status["alarms"]] == [WEAK]
    report = run_cli("study", "report", "agent", "--storage", url, "--out", str(tmp_path / "r"))
    assert report.returncode == 0, report.stderr
    assert "decoupled" in (tmp_path / "r" / "summary.md").read_text()
    resumed = run_cli("study", "resume", "agent", "--storage", url, "-q")
    assert resumed.returncode == 0, resumed.stderr
    assert f"alarms: {WEAK}" in resumed.stdout
    import optuna_dashboard

    note = optuna_dashboard.get_note(record.study)
    assert note.startswith("## searchlab: agent") and f"| {WEAK} | decoupled |" in note
    attrs = record.study._storage.get_study_system_attrs(record.study._study_id)
    assert any("searchlab-validity" in k for k in attrs)
