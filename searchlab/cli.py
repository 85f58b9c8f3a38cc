"""The ``searchlab`` command line.

Every expected failure (a bad study file, unreachable storage, a broken back end) prints one
line, ``error: <what> ...``, on standard error and exits with status 2. Thread settings are made
here, before torch is imported: on small shared CPUs torch's default thread pool spin-waits
(docs/FACTS.md: a GP fit took 94 s with two threads and 8.8 s with one). Set ``OMP_NUM_THREADS``
yourself to override, on a GPU box say.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", os.environ["OMP_NUM_THREADS"])

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from searchlab.errors import SearchlabError
from searchlab.objective import ObjectiveType
from searchlab.store import AuditKind, Mode
from searchlab.surrogate import SurrogateForm

app = typer.Typer(
    help="Bayesian search for post-training recipes that sees through a proxy.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
study_app = typer.Typer(help="Create, run, resume and inspect studies.", no_args_is_help=True)
validity_app = typer.Typer(help="The proxy-validity test.", no_args_is_help=True)
app.add_typer(study_app, name="study")
app.add_typer(validity_app, name="validity")

# Text from data (names, reasons, paths) is printed as text: no emoji codes here, and markup
# only where searchlab writes it, with the data escaped (_esc) or markup=False.
err = Console(stderr=True, highlight=False, emoji=False)
out = Console(highlight=False, emoji=False)


def _esc(value: Any) -> str:
    """``value`` as text that rich prints verbatim (markup such as ``[/x]`` escaped)."""
    from rich.markup import escape

    return escape(str(value))


StorageOpt = Annotated[
    str | None,
    typer.Option(
        "--storage",
        help="Optuna storage URL (default: $SEARCHLAB_STORAGE, else sqlite:///searchlab.db).",
    ),
]

LeaseOpt = Annotated[
    float,
    typer.Option(
        "--lease",
        min=1.0,
        help="Seconds without a heartbeat after which a worker's candidate is given away.",
    ),
]


TrustOpt = Annotated[
    bool,
    typer.Option(
        "--trust-backend",
        help="Allow backend.name 'module:Class' to import that module, which runs its code "
        "(also $SEARCHLAB_TRUST_BACKEND=1). Only for study files you trust.",
    ),
]

# The settings a stored corpus is replayed with (validity replay, power, peers); None: the
# studies' own. Checked by _replay_settings, so that a bad value is one line.
ThresholdOpt = Annotated[
    float | None, typer.Option(help="Per-domain e-value threshold of the validity test.")
]
TrackingOpt = Annotated[float | None, typer.Option(help="kappa, in (0, 1).")]
HingeFormOpt = Annotated[str | None, typer.Option(help="linear, quad or local.")]


def _trust(flag: bool) -> bool | None:
    # The flag opts in; without it None lets the loader read $SEARCHLAB_TRUST_BACKEND.
    return True if flag else None


def _storage_url(storage: str | None) -> str:
    from searchlab.store import storage_url

    return storage_url(storage)


class _Display:
    """Live progress: a status line while candidates run, one table row per finished round."""

    def __init__(self, domains: list[str], quiet: bool) -> None:
        self.domains = domains
        self.quiet = quiet
        self.status = None if quiet else err.status("starting")
        if self.status is not None:
            self.status.start()

    def __call__(self, event: str, data: dict[str, Any]) -> None:
        if self.quiet:
            return
        if event == "round_start":
            self.status.update(f"round {data['round'] + 1}/{data['rounds']}: proposing")
        elif event == "candidate_start":
            self.status.update(f"round {data['round'] + 1}: candidate {data['candidate']}")
        elif event == "candidate_failed":
            err.print(
                f"  candidate {data['candidate']} failed: {data['reason']}",
                markup=False,
                soft_wrap=True,
            )
        elif event == "mode_switch":
            err.print(
                f"  [bold]{_esc(data['domain'])}[/bold] -> {_esc(data['to'])} "
                f"(after candidate {_esc(data['candidate'])}'s external score)"
            )
        elif event == "round_done":
            modes = data["modes"]
            decoupled = [d for d, m in modes.items() if m == Mode.DECOUPLED]
            err.print(
                f"round {data['round'] + 1}: {data['candidates']} candidates, "
                f"best dev {data['best_dev']:.3f}, "
                f"best modelled external {_fmt(data['modelled_external'])}, "
                f"decoupled: {', '.join(decoupled) or 'none'}, alarms {data['alarms']}, "
                f"external budget left {data['budget_left']}",
                markup=False,
            )
        elif event == "study_done":
            self.close()

    def close(self) -> None:
        if self.status is not None:
            self.status.stop()
            self.status = None


def _fmt(value: Any) -> str:
    return "n/a" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


def _load_backend(config: Any, trust: bool | None = None) -> Any:
    from searchlab.backends import backend_for

    return backend_for(config, trust=trust)


def _run(
    record: Any,
    config: Any,
    quiet: bool,
    backend: Any = None,
    *,
    external_workers: bool = False,
    lease_s: float = 60.0,
    trust: bool | None = None,
    study_lease: Any = None,
) -> None:
    import contextlib

    # One engine per study: the study lease is held while the engine runs (a second create,
    # resume or coordinator exits 2 naming the holder), taken before the engine (torch) and the
    # back end are loaded. `study create` passes the lease it took before the study existed.
    held = study_lease if study_lease is not None else record.lease()
    with contextlib.nullcontext(held) if study_lease is not None else held:
        # What was read before the lease was taken may be stale: the last holder wrote on.
        record.refresh()
        if study_lease is None and held.taken_over is not None:
            _audit_takeover(record, held)
        from searchlab.dashboard import round_publisher
        from searchlab.engine import Engine
        from searchlab.readmodel import status

        backend = backend if backend is not None else _load_backend(config, trust)
        display = _Display(config.domain_names, quiet)
        try:
            Engine(
                record=record,
                config=config,
                backend=backend,
                progress=display,
                external_workers=external_workers,
                lease_s=lease_s,
                guard=held.check,
                after_round=[round_publisher],
            ).run()
        finally:
            display.close()
    _print_summary(status(record))


def _audit_takeover(record: Any, held: Any) -> None:
    """Records (and says) that this process took the study over from a holder that stopped."""
    fields = held.takeover_fields()
    record.audit(AuditKind.LEASE_TAKEOVER, round=None, **fields)
    err.print(
        f"took study {record.name!r} over from {held.taken_over.describe()}: {fields['reason']}",
        markup=False,
        soft_wrap=True,
    )


def _print_summary(s: dict[str, Any]) -> None:
    rec = s["recommendation"] or {}
    best = s["best_dev_candidate"] or {}
    out.print(
        f"study {s['name']}: {s['rounds_done']}/{s['rounds_total']} rounds, "
        f"{s['candidates']} candidates, external budget used {s['external_budget']['used']}"
        f"/{s['external_budget']['total']}",
        markup=False,
    )
    alarms = ", ".join(f"{a['domain']} (candidate {a['candidate']})" for a in s["alarms"])
    out.print(f"alarms: {alarms or 'none'}", markup=False)
    out.print(
        f"recommendation: candidate {rec.get('candidate')}, modelled external "
        f"{_fmt(rec.get('modelled_external'))}"
        + (
            f", true external {_fmt(rec.get('true_external'))}, regret {_fmt(rec.get('regret'))}"
            if "regret" in rec
            else ""
        ),
        markup=False,
    )
    if "regret" in best:
        out.print(
            f"best-dev candidate: {best.get('candidate')}, true external "
            f"{_fmt(best.get('true_external'))}, regret {_fmt(best.get('regret'))}",
            markup=False,
        )
    objective = s.get("objective") or {}
    for f in objective.get("floors") or []:
        out.print(
            f"floor: {f['domain']} {f['task']} >= {_fmt(f['threshold'])} ({f['basis']})",
            markup=False,
        )
    if rec.get("meets_floors") is False:
        out.print("warning: no candidate meets the floors (the least short is shown)", markup=False)
    if objective.get("front"):
        members = ", ".join(str(m["candidate"]) for m in objective["front"])
        out.print(f"pareto front: {len(objective['front'])} candidates ({members})", markup=False)


@study_app.command("create")
def study_create(
    file: Annotated[str, typer.Argument(help="The study file (YAML).")],
    storage: StorageOpt = None,
    name: Annotated[str | None, typer.Option(help="Override the study name.")] = None,
    seed: Annotated[int | None, typer.Option(help="Override the seed.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No live progress.")] = False,
    external_workers: Annotated[
        bool,
        typer.Option(
            "--external-workers",
            help="Only coordinate: 'searchlab worker' processes train the candidates.",
        ),
    ] = False,
    lease: LeaseOpt = 60.0,
    trust_backend: TrustOpt = False,
) -> None:
    """Create a study from FILE and run it to the end."""
    from searchlab.config import load_study_file
    from searchlab.store import Storage

    config = load_study_file(file)
    if name is not None or seed is not None:
        config = config.with_overrides(name=name, seed=seed)
    # Load the back end before storing anything: a broken back end must not leave a study behind.
    backend = _load_backend(config, _trust(trust_backend))
    store = Storage(_storage_url(storage), create=True)
    # The lease first: the study is run by this process from the moment it exists.
    with store.lease(config.name) as held:
        record = store.create(config)
        _run(
            record,
            config,
            quiet,
            backend,
            external_workers=external_workers,
            lease_s=lease,
            study_lease=held,
        )


@study_app.command("resume")
def study_resume(
    name: Annotated[str, typer.Argument(help="The study name.")],
    storage: StorageOpt = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No live progress.")] = False,
    trust_backend: TrustOpt = False,
) -> None:
    """Continue an interrupted study at its first unfinished step."""
    from searchlab.config import stored_config
    from searchlab.store import Storage

    record = Storage(_storage_url(storage)).load(name)
    config = stored_config(record.config_data)
    _run(record, config, quiet, trust=_trust(trust_backend))


@app.command("coordinator")
def coordinator(
    name: Annotated[str, typer.Argument(help="The study name.")],
    storage: StorageOpt = None,
    lease: LeaseOpt = 60.0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No live progress.")] = False,
    trust_backend: TrustOpt = False,
) -> None:
    """Run (or resume) a study whose candidates 'searchlab worker' processes train."""
    from searchlab.config import stored_config
    from searchlab.store import Storage

    record = Storage(_storage_url(storage)).load(name)
    config = stored_config(record.config_data)
    _run(record, config, quiet, external_workers=True, lease_s=lease, trust=_trust(trust_backend))


@app.command("worker")
def worker(
    name: Annotated[str, typer.Argument(help="The study name.")],
    storage: StorageOpt = None,
    lease: LeaseOpt = 60.0,
    heartbeat: Annotated[
        float | None,
        typer.Option(help="Seconds between heartbeats (default: lease / 12, at most 5)."),
    ] = None,
    idle_exit: Annotated[
        float | None,
        typer.Option("--idle-exit", help="Stop after this many seconds without work."),
    ] = None,
    max_candidates: Annotated[
        int | None, typer.Option("--max-candidates", min=1, help="Stop after this many.")
    ] = None,
    trust_backend: TrustOpt = False,
) -> None:
    """Train and evaluate the study's proposed candidates until it is finished."""
    import logging

    from searchlab.worker import run_worker

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    counts = run_worker(
        _storage_url(storage),
        name,
        lease_s=lease,
        heartbeat_s=heartbeat if heartbeat is not None else min(5.0, lease / 12),
        idle_exit_s=idle_exit,
        max_candidates=max_candidates,
        trust=_trust(trust_backend),
    )
    out.print(
        f"worker: {counts['done']} candidates done, {counts['failed']} failed, "
        f"{counts['discarded']} discarded (lease expired)"
    )


# -- your own loop: the searchlab.loop API in JSON -------------------------------------------

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object.")]


def _driven(name: str, storage: str | None) -> Any:
    from searchlab.loop import Study

    return Study.open(name, storage=_storage_url(storage))


def _read_json(source: str, option: str) -> Any:
    """The JSON value in file ``source`` (``-``: standard input), or one line naming it."""
    where = "standard input" if source == "-" else source
    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SearchlabError(f"{option} {where}: cannot read it ({exc})") from None
    try:
        return json.loads(text)
    except ValueError as exc:  # JSONDecodeError, and integers longer than Python converts
        raise SearchlabError(f"{option} {where}: not JSON ({exc})") from None


def _emit(data: Any, as_json: bool, line: str) -> None:
    from searchlab.readmodel import finite

    if as_json:
        print(json.dumps(finite(data), sort_keys=True))
    else:
        out.print(line, markup=False, soft_wrap=True)


@study_app.command("init")
def study_init(
    file: Annotated[str, typer.Argument(help="The study file (YAML).")],
    storage: StorageOpt = None,
    name: Annotated[str | None, typer.Option(help="Override the study name.")] = None,
    seed: Annotated[int | None, typer.Option(help="Override the seed.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Create a study from FILE without running it: your loop drives it (study ask ...)."""
    from searchlab.loop import Study

    study = Study.create(file, storage=_storage_url(storage), name=name, seed=seed)
    _emit({"study": study.record.name}, as_json, f"created study {study.record.name}")


@study_app.command("ask")
def study_ask(
    name: Annotated[str, typer.Argument(help="The study name.")],
    storage: StorageOpt = None,
    count: Annotated[int, typer.Option(min=1, help="Candidates wanted at most.")] = 1,
    as_json: JsonOpt = False,
) -> None:
    """Candidates to train now (fewer, or none, while the round waits: see 'next')."""
    study = _driven(name, storage)
    asked = study.ask(count)
    data = {
        "candidates": [vars(a) for a in asked],
        "next": study.next_step(),
        "finished": study.finished,
    }
    lines = [
        f"candidate {a.number} (round {a.round}, {a.source}): {json.dumps(a.recipe)}" for a in asked
    ]
    _emit(data, as_json, "\n".join([*lines, f"next: {data['next']}"]))


@study_app.command("tell")
def study_tell(
    name: Annotated[str, typer.Argument(help="The study name.")],
    number: Annotated[int, typer.Argument(help="The candidate.")],
    dev: Annotated[
        str | None,
        typer.Option(
            help="JSON file (- for standard input): per domain, the dev accuracy or "
            "[accuracy, items]."
        ),
    ] = None,
    failed: Annotated[str | None, typer.Option(help="It could not be trained: why.")] = None,
    storage: StorageOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Store an asked candidate's dev scores (or that it failed)."""
    if (dev is None) == (failed is None):
        raise SearchlabError("study tell: give --dev FILE or --failed REASON")
    study = _driven(name, storage)
    if failed is not None:
        study.tell_failed(number, failed)
    else:
        study.tell(number, dev=_read_json(dev, "--dev"))
    data = {"candidate": number, "next": study.next_step()}
    _emit(data, as_json, f"candidate {number} stored; next: {data['next']}")


@study_app.command("plan")
def study_plan(
    name: Annotated[str, typer.Argument(help="The study name.")],
    storage: StorageOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Where the external budget goes now, with the policy's reasons."""
    study = _driven(name, storage)
    plan = study.plan_submissions()
    data = {
        "round": plan.round,
        "submissions": [vars(s) for s in plan.submissions],
        "waiting_for": plan.waiting_for,
        "budget_left": plan.budget_left,
        "modes": {d: v["mode"] for d, v in study.modes().items()},
        "next": study.next_step(),
    }
    lines = [
        f"candidate {s.number} (submission {s.submission}): {s.reason}" for s in plan.submissions
    ]
    _emit(data, as_json, "\n".join([*lines, f"next: {data['next']}"]))


@study_app.command("tell-external")
def study_tell_external(
    name: Annotated[str, typer.Argument(help="The study name.")],
    number: Annotated[int, typer.Argument(help="The candidate.")],
    external: Annotated[
        str | None,
        typer.Option(help="JSON file (- for standard input): per domain, the external score."),
    ] = None,
    failed: Annotated[str | None, typer.Option(help="The submission failed: why.")] = None,
    storage: StorageOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Store one submission's external scores; the validity test runs on them at once."""
    if (external is None) == (failed is None):
        raise SearchlabError("study tell-external: give --external FILE or --failed REASON")
    study = _driven(name, storage)
    scores = None if external is None else _read_json(external, "--external")
    study.tell_external(number, external=scores, error=failed)
    data = {
        "candidate": number,
        "modes": {d: v["mode"] for d, v in study.modes().items()},
        "next": study.next_step(),
    }
    _emit(data, as_json, f"candidate {number}: external stored; next: {data['next']}")


@study_app.command("enqueue")
def study_enqueue(
    name: Annotated[str, typer.Argument(help="The study name.")],
    recipe: Annotated[str, typer.Option(help="JSON file (- for standard input): the recipe.")],
    source: Annotated[str, typer.Option(help="Where it came from (kept in the audit).")] = "user",
    storage: StorageOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Add a candidate of your own to the round being filled."""
    study = _driven(name, storage)
    number = study.enqueue(_read_json(recipe, "--recipe"), source=source)
    _emit({"candidate": number}, as_json, f"enqueued candidate {number}")


@study_app.command("import")
def study_import(
    name: Annotated[str, typer.Argument(help="The study name (before its first round).")],
    file: Annotated[str, typer.Argument(help="Past runs: .csv, .jsonl or .parquet.")],
    storage: StorageOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Warm-start a study with past runs: recipe columns, dev.<domain>, external.<domain>."""
    study = _driven(name, storage)
    numbers = study.import_runs(file)
    status = study.status()
    data = {"candidates": numbers, "external_budget": status["external_budget"]}
    used = status["external_budget"]["used"]
    _emit(data, as_json, f"imported {len(numbers)} runs; external budget used {used}")


@study_app.command("status")
def study_status(
    name: Annotated[str, typer.Argument(help="The study name.")],
    storage: StorageOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object.")] = False,
) -> None:
    """Rounds, candidates, budget, modes, alarms and the recommendation."""
    from searchlab.readmodel import status
    from searchlab.store import Storage

    s = status(Storage(_storage_url(storage)).load(name))
    if as_json:
        print(json.dumps(s, indent=2, sort_keys=True))
        return
    table = Table("domain", "mode", "statistic", "threshold", title=f"study {_esc(name)}")
    for d, v in s["domains"].items():
        table.add_row(_esc(d), _esc(v["mode"]), _fmt(v["statistic"]), _fmt(v["threshold"]))
    out.print(table)
    _print_summary(s)


@study_app.command("list")
def study_list(storage: StorageOpt = None) -> None:
    """The searchlab studies in the storage."""
    from searchlab.readmodel import status
    from searchlab.store import Storage, redact

    store = Storage(_storage_url(storage))
    names = store.names()
    if not names:
        err.print(f"no searchlab studies in {redact(store.url)}", markup=False, soft_wrap=True)
    for name in names:
        s = status(store.load(name))
        state = "finished" if s["finished"] else f"{s['rounds_done']}/{s['rounds_total']} rounds"
        out.print(
            f"{name}\t{state}\t{s['candidates']} candidates\t{len(s['alarms'])} alarm(s)",
            markup=False,
        )


@study_app.command("audit")
def study_audit(
    name: Annotated[str, typer.Argument(help="The study name.")],
    storage: StorageOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="A JSON list of decisions.")] = False,
) -> None:
    """Every decision with its numbers, in order."""
    from searchlab.store import Storage

    log = Storage(_storage_url(storage)).load(name).audit_log()
    if as_json:
        print(json.dumps(log, indent=2))
        return
    for e in log:
        fields = {k: v for k, v in e.items() if k not in ("seq", "kind", "round")}
        r = "-" if e.get("round") is None else e["round"] + 1
        out.print(
            f"[{e['seq']:4d}] round {r} {e['kind']}: {json.dumps(fields, default=str)}",
            soft_wrap=True,
            markup=False,
        )


@study_app.command("validate")
def study_validate(
    file: Annotated[str, typer.Argument(help="The study file (YAML).")],
    trust_backend: TrustOpt = False,
) -> None:
    """Check a study file without running it (the back end is loaded, not run)."""
    from searchlab.config import load_study_file

    config = load_study_file(file)
    # Constructs only what the loader allows: a 'module:Class' without the opt-in is refused
    # before its module is imported.
    backend = _load_backend(config, _trust(trust_backend))
    check = getattr(backend, "check_recipe", None)
    if check is not None:  # one recipe of the space through the back end, before any run
        from searchlab.space import SearchSpace

        (recipe,) = SearchSpace(config.space).quasi_random(1, seed=config.seed)
        check(recipe)
    # A back end may report what only a run would find (data or model files not there yet).
    for problem in getattr(backend, "preflight", list)():
        out.print(f"warning: {problem}", soft_wrap=True, markup=False)
    out.print(
        f"{file}: ok ({config.name}: {len(config.domains)} domains, "
        f"{config.total_candidates} candidates, external budget {config.external.total})",
        markup=False,
    )


@study_app.command("export")
def study_export(
    name: Annotated[str, typer.Argument(help="The study name.")],
    out_dir: Annotated[str, typer.Option("--out", help="Folder for the tables.")],
    fmt: Annotated[str, typer.Option("--format", help="csv, json or parquet.")] = "csv",
    storage: StorageOpt = None,
) -> None:
    """Tidy tables: candidates, decisions, submissions and validity checks."""
    from searchlab.export import FORMATS, OutputError, export
    from searchlab.store import Storage

    if fmt not in FORMATS:
        raise OutputError(f"unknown format {fmt!r}: use one of {', '.join(FORMATS)}")
    record = Storage(_storage_url(storage)).load(name)
    for path in export(record, fmt, out_dir):
        out.print(str(path), markup=False, soft_wrap=True)


def _floats(text: str | None, option: str) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(v) for v in text.replace(",", " ").split()]
    except ValueError:
        raise SearchlabError(f"{option} takes numbers separated by commas, got {text!r}") from None


@study_app.command("analyze")
def study_analyze(
    name: Annotated[str, typer.Argument(help="The study name.")],
    storage: StorageOpt = None,
    alpha: Annotated[
        float | None, typer.Option(help="False-alarm level: threshold n_domains / alpha.")
    ] = None,
    threshold: Annotated[
        float | None, typer.Option(help="Per-domain e-value threshold (a calibrated one).")
    ] = None,
    knot_offsets: Annotated[
        str | None, typer.Option(help="Knots at warm-up max + c sd, e.g. '-1,0,1'.")
    ] = None,
    knot_quantiles: Annotated[
        str | None, typer.Option(help="Knots at warm-up dev quantiles, e.g. '0.5,0.8'.")
    ] = None,
    prior_scale: Annotated[float | None, typer.Option(help="g, the slope prior scale.")] = None,
    hinge_form: Annotated[str | None, typer.Option(help="quad, linear or local.")] = None,
    min_pairs: Annotated[int | None, typer.Option(help="No test before this many pairs.")] = None,
    return_alpha: Annotated[float | None, typer.Option(help="Level of the return.")] = None,
    min_dwell: Annotated[int | None, typer.Option(help="Pairs before a return.")] = None,
    tracking: Annotated[
        float | None, typer.Option(help="kappa in [0, 1): H0 'slope above >= kappa * below'.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object.")] = False,
) -> None:
    """Re-run the validity test over the stored history with other settings."""
    from searchlab.analysis import describe_switch, reanalyze
    from searchlab.store import Storage

    record = Storage(_storage_url(storage)).load(name)
    result = reanalyze(
        record,
        alpha=alpha,
        threshold=threshold,
        knot_offsets=_floats(knot_offsets, "--knot-offsets"),
        knot_quantiles=_floats(knot_quantiles, "--knot-quantiles"),
        prior_scale=prior_scale,
        hinge_form=hinge_form,
        min_pairs=min_pairs,
        return_alpha=return_alpha,
        min_dwell=min_dwell,
        tracking=tracking,
    )
    if as_json:
        print(json.dumps(result, indent=2, sort_keys=True))
        return
    out.print(
        f"study {name}: {result['pairs']} (dev, external) pairs in submission order",
        markup=False,
    )
    out.print(f"dev used: {result['dev_source_note']}", markup=False, soft_wrap=True)
    base = result["study_settings"]
    changed = ", ".join(f"{k} {v} (study {base.get(k)})" for k, v in result["changed"].items())
    out.print(f"settings: {changed or 'as in the study'}", markup=False, soft_wrap=True)
    out.print(
        "first switch to decoupled, as candidate (pair): in the study (its audit), replayed "
        "with the study's settings on the dev above, and with the new settings"
    )
    table = Table("domain", "study", "replay", "new settings", "max E / threshold", "new vs replay")
    for d, v in result["domains"].items():
        new = v["reanalysis"]
        table.add_row(
            _esc(d),
            _esc(describe_switch(v["study"]["first_switch"])),
            _esc(describe_switch(v["replay"]["first_switch"])),
            _esc(describe_switch(new["first_switch"])),
            f"{_fmt(new['max_statistic'])} / {_fmt(v['threshold'])}",
            _esc(v["change"]),
        )
    out.print(table, soft_wrap=True)


@study_app.command("report")
def study_report(
    name: Annotated[str, typer.Argument(help="The study name.")],
    out_dir: Annotated[str, typer.Option("--out", help="Folder for the report.")],
    storage: StorageOpt = None,
) -> None:
    """One self-contained HTML page, PNG figures and summary.md."""
    from searchlab.export import check_output_dir
    from searchlab.report import write_report
    from searchlab.store import Storage

    record = Storage(_storage_url(storage)).load(name)
    check_output_dir(out_dir)
    written = write_report(record, out_dir)
    for path in [written["html"], *written["png"], written["summary"]]:
        out.print(str(path), markup=False, soft_wrap=True)


@app.command("dashboard")
def dashboard(
    storage: StorageOpt = None,
    # Range checked by searchlab.dashboard.access: one 'error:' line, not a usage box.
    port: Annotated[int, typer.Option(help="Port to listen on (1-65535).")] = 8080,
    host: Annotated[
        str, typer.Option(help="Address to listen on (default loopback: the dashboard can edit).")
    ] = "127.0.0.1",
    publish: Annotated[
        bool, typer.Option(help="First write the searchlab figures and note into every study.")
    ] = True,
    allow_remote: Annotated[
        bool,
        typer.Option(
            "--allow-remote",
            help="Allow a host other than loopback. There is no authentication: anyone who "
            "reaches the port can read the studies.",
        ),
    ] = False,
    allow_writes: Annotated[
        bool | None,
        typer.Option(
            "--allow-writes/--read-only",
            help="Serve requests other than GET and HEAD (edits, deletions). Default: allowed on "
            "loopback, refused (405) elsewhere.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Serve optuna-dashboard on the study storage, with searchlab's figures and notes."""
    from searchlab.dashboard import access, serve
    from searchlab.store import Storage

    # Host and port first: a refused address must not wait for the storage.
    access(host, port, allow_remote=allow_remote, allow_writes=allow_writes)
    store = Storage(_storage_url(storage))
    serve(
        store,
        host=host,
        port=port,
        publish_first=publish,
        allow_remote=allow_remote,
        allow_writes=allow_writes,
        on_warning=lambda line: err.print(line, markup=False, soft_wrap=True),
        on_ready=lambda url: err.print(
            f"optuna-dashboard on {url} (Ctrl-C stops it)", markup=False, soft_wrap=True
        ),
    )


@validity_app.command("calibrate")
def validity_calibrate(
    streams: Annotated[int, typer.Option(min=10, help="Simulated streams of each kind.")] = 200,
    horizon: Annotated[int, typer.Option(min=20, help="Candidates per stream.")] = 100,
    domains: Annotated[int, typer.Option(min=1, help="Domains corrected for (Bonferroni).")] = 6,
    alpha: Annotated[float, typer.Option(help="Study-wide false-alarm level.")] = 0.05,
    threshold: Annotated[
        float | None,
        typer.Option(help="A per-domain e-value threshold to measure (default domains/alpha)."),
    ] = None,
    tracking: Annotated[
        float, typer.Option(help="kappa: H0 is 'slope above >= kappa * slope below'.")
    ] = 0.25,
    hinge_form: Annotated[str, typer.Option(help="linear, quad or local.")] = "linear",
    seed: int = 0,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object.")] = False,
) -> None:
    """Measure the validity test's false-alarm and detection rates by simulation."""
    from searchlab.streams import calibrate
    from searchlab.validity import DetectorSettings

    if not 0 < alpha < 1:
        raise SearchlabError(f"--alpha must be in (0, 1), got {alpha}")
    if not 0 <= tracking < 1:
        raise SearchlabError(f"--tracking must be in [0, 1), got {tracking}")
    _replay_settings(threshold, None, hinge_form)  # one-line errors for the shared options
    result = calibrate(
        streams=streams,
        horizon=horizon,
        seed=seed,
        settings=DetectorSettings(
            alpha=alpha,
            n_domains=domains,
            threshold_override=threshold,
            tracking=tracking,
            hinge_form=hinge_form,
        ),
    )
    if as_json:
        print(json.dumps(result, indent=2, sort_keys=True))
        return
    for key, value in result.items():
        out.print(f"{key}: {value}", markup=False)


@validity_app.command("corpus")
def validity_corpus(
    storage: StorageOpt = None,
    instance: Annotated[
        list[str] | None,
        typer.Option(
            help="Null or alternative instance (repeatable; default: every null instance)."
        ),
    ] = None,
    seeds: Annotated[int, typer.Option(min=1, help="Studies per instance.")] = 10,
    first_seed: Annotated[int, typer.Option(min=0, help="The first seed.")] = 0,
    rounds: Annotated[
        int, typer.Option(min=2, max=64, help="Rounds of 8 candidates (the study file: 8).")
    ] = 8,
    submissions: Annotated[
        int, typer.Option(min=2, max=512, help="External submissions in all (the study file: 16).")
    ] = 16,
) -> None:
    """Run (or finish) the engine's studies that `validity replay` and `validity power` measure."""
    from searchlab.calibration import ALTERNATIVE_INSTANCES, NULL_INSTANCES, make_corpus

    names = list(instance or NULL_INSTANCES)
    known = [*NULL_INSTANCES, *ALTERNATIVE_INSTANCES]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SearchlabError(f"--instance {unknown[0]!r}: not one of {sorted(known)}")
    make_corpus(
        _storage_url(storage),
        instances=names,
        seeds=range(first_seed, first_seed + seeds),
        rounds=(8, rounds),
        external=(-(-submissions // rounds), submissions),
        progress=lambda line: err.print(line, markup=False),
    )


@validity_app.command("merge")
def validity_merge(
    sources: Annotated[
        list[str], typer.Option("--from", help="A storage to copy finished studies from.")
    ],
    storage: StorageOpt = None,
) -> None:
    """Join a corpus built over processes: copy finished studies the storage lacks."""
    from searchlab.calibration import merge_corpus

    copied = merge_corpus(
        _storage_url(storage), sources, progress=lambda line: err.print(line, markup=False)
    )
    out.print(f"copied {len(copied)} studies", markup=False)


@app.command("monitor")
def monitor(
    log_file: Annotated[
        str | None, typer.Argument(help="The score log: .csv, .jsonl or .parquet.")
    ] = None,
    optuna_storage: Annotated[
        str | None,
        typer.Option(help="Read a plain Optuna study instead: its storage URL (with --study)."),
    ] = None,
    study: Annotated[str | None, typer.Option(help="The Optuna study's name.")] = None,
    dev_key: Annotated[
        str, typer.Option(help="User attribute of a trial's dev score; {domain} is the domain.")
    ] = "dev.{domain}",
    external_key: Annotated[
        str, typer.Option(help="User attribute of its external score (absent: not measured).")
    ] = "external.{domain}",
    domains: Annotated[
        str | None, typer.Option(help="Comma-separated domains (default: every dev.<domain>).")
    ] = None,
    warmup: Annotated[
        int, typer.Option(min=2, help="Candidates whose dev fixes the knots; checks start after.")
    ] = 8,
    alpha: Annotated[float, typer.Option(help="False-alarm level over all domains.")] = 0.05,
    threshold: ThresholdOpt = None,
    tracking: TrackingOpt = None,
    hinge_form: HingeFormOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object.")] = False,
) -> None:
    """The validity test on any log of candidates: per domain, whether dev still tracks
    external, when that stopped, and the evidence. Columns dev.<domain>, external.<domain>
    (empty where not measured), optional candidate; rows in the order they happened. Or a
    study written by plain Optuna: its COMPLETE trials in number order, the scores in user
    attributes (--dev-key, --external-key)."""
    from searchlab.monitor import monitor_log, read_log, read_optuna
    from searchlab.validity import DetectorSettings

    if not 0 < alpha < 1:
        raise SearchlabError(f"--alpha must be in (0, 1), got {alpha}")
    if (log_file is None) == (optuna_storage is None) or (optuna_storage is None) != (
        study is None
    ):
        raise SearchlabError("monitor: give a LOG file, or --optuna-storage URL with --study NAME")
    chosen = [d.strip() for d in domains.split(",") if d.strip()] if domains else None
    if optuna_storage is not None:
        log = read_optuna(
            optuna_storage, study, dev_key=dev_key, external_key=external_key, domains=chosen
        )
    else:
        log = read_log(log_file, domains=chosen)
    given = _replay_settings(threshold, tracking, hinge_form)
    settings = DetectorSettings(
        alpha=alpha,
        n_domains=len(log.domains),
        threshold_override=given["threshold"],
        **{k: v for k, v in given.items() if k != "threshold" and v is not None},
    )
    result = monitor_log(log, settings=settings, warmup=warmup)
    if as_json:
        print(json.dumps(result, indent=2, sort_keys=True))
        return
    for d, v in result["domains"].items():
        fired = next((s for s in v["switches"] if s["to_mode"] == Mode.DECOUPLED), None)
        when = (
            f"fired after candidate {fired['candidate']} (pair {fired['pair']}, E "
            f"{_fmt(fired['statistic'])} >= {_fmt(fired['threshold'])})"
            if fired
            else f"largest E {_fmt(v['max_statistic'])} of threshold {_fmt(settings.threshold)}"
        )
        out.print(f"{d}: {v['verdict']} ({v['pairs']} pairs; {when})", markup=False)


@validity_app.command("replay")
def validity_replay(
    storage: StorageOpt = None,
    threshold: ThresholdOpt = None,
    tracking: TrackingOpt = None,
    hinge_form: HingeFormOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object.")] = False,
) -> None:
    """End-to-end false alarms: a setting replayed over every stored null study."""
    from searchlab.calibration import false_alarms

    settings = _replay_settings(threshold, tracking, hinge_form)
    result = false_alarms(_storage_url(storage), **settings)
    if as_json:
        print(json.dumps(result, indent=2, sort_keys=True))
        return
    for key, value in result.items():
        out.print(f"{key}: {value}", markup=False)


def _replay_settings(
    threshold: float | None, tracking: float | None, hinge_form: str | None
) -> dict[str, Any]:
    from searchlab.validity import HingeForm

    if threshold is not None and not threshold > 1:
        raise SearchlabError(f"--threshold must be > 1, got {threshold}")
    if tracking is not None and not 0 < tracking < 1:
        raise SearchlabError(f"--tracking must be in (0, 1), got {tracking}")
    forms = [f.value for f in HingeForm]
    if hinge_form is not None and hinge_form not in forms:
        raise SearchlabError(f"--hinge-form must be one of {forms}, got {hinge_form!r}")
    return {"threshold": threshold, "tracking": tracking, "hinge_form": hinge_form}


@validity_app.command("power")
def validity_power(
    storage: StorageOpt = None,
    threshold: ThresholdOpt = None,
    tracking: TrackingOpt = None,
    hinge_form: HingeFormOpt = None,
) -> None:
    """Power end to end: a setting replayed over the stored alternative studies (JSON)."""
    from searchlab.calibration import power

    settings = _replay_settings(threshold, tracking, hinge_form)
    print(json.dumps(power(_storage_url(storage), **settings), indent=2, sort_keys=True))


@validity_app.command("peers")
def validity_peers(
    storage: StorageOpt = None,
    threshold: ThresholdOpt = None,
    tracking: TrackingOpt = None,
    hinge_form: HingeFormOpt = None,
) -> None:
    """The validity test and the peer detectors at equal false alarms on the corpus (JSON)."""
    from searchlab.calibration import compare_peers

    settings = _replay_settings(threshold, tracking, hinge_form)
    print(json.dumps(compare_peers(_storage_url(storage), **settings), indent=2, sort_keys=True))


@validity_app.command("ceiling")
def validity_ceiling(
    storage: StorageOpt = None,
    tracking: TrackingOpt = None,
    hinge_form: HingeFormOpt = None,
) -> None:
    """Evidence of decoupling in each alternative study's pairs, against the most that as many
    pairs of its own candidates could hold (JSON; simulated studies only)."""
    from searchlab.calibration import evidence_ceiling

    settings = _replay_settings(None, tracking, hinge_form)
    try:
        result = evidence_ceiling(_storage_url(storage), **settings)
    except ValueError as exc:
        raise SearchlabError(str(exc)) from None
    print(json.dumps(result, indent=2, sort_keys=True))


bench_app = typer.Typer(help="Benchmarks that print figures.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")


@bench_app.command("overhead")
def bench_overhead(
    repeats: Annotated[int, typer.Option(min=1, help="Repetitions per size (median).")] = 3,
    objective: Annotated[
        ObjectiveType,
        typer.Option(help="weighted (qLogNEI) or pareto (qLogNParEGO, one objective a domain)."),
    ] = ObjectiveType.WEIGHTED,
    candidates: Annotated[
        list[int] | None,
        typer.Option(min=2, help="History size (repeatable; default: 25, 50 and 100)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="A JSON list of rows.")] = False,
) -> None:
    """Seconds per proposal (25, 50 and 100 candidates by default), next to Optuna's GPSampler."""
    from searchlab.bench import OVERHEAD_SIZES, overhead

    sizes = tuple(candidates) if candidates else OVERHEAD_SIZES
    rows = overhead(candidates=sizes, repeats=repeats, objective=objective)
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table(
        "candidates",
        "searchlab warm (s)",
        "searchlab cold (s)",
        "GPSampler (s)",
        "warm / GPSampler",
    )
    for r in rows:
        table.add_row(
            str(r["candidates"]),
            f"{r['searchlab_s']:.2f}",
            f"{r['searchlab_cold_s']:.2f}",
            "-" if r["optuna_gp_s"] is None else f"{r['optuna_gp_s']:.2f}",
            "out of memory" if r["ratio"] is None else f"{r['ratio']:.1f}",
        )
    out.print(table)


@bench_app.command("surrogate")
def bench_surrogate(
    storage: StorageOpt = None,
    study: Annotated[
        list[str] | None, typer.Option(help="Study to replay (repeatable; default: all).")
    ] = None,
    form: Annotated[
        list[SurrogateForm] | None,
        typer.Option(help="Surrogate form to score (repeatable; default: every form)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object.")] = False,
) -> None:
    """External predicted where it was not shown: RMSE and 90 % coverage, each surrogate form."""
    from searchlab.model_accuracy import surrogate_accuracy

    result = surrogate_accuracy(
        _storage_url(storage),
        names=study,
        forms=form or list(SurrogateForm),
        progress=lambda line: err.print(line, markup=False),
    )
    if as_json:
        print(json.dumps(result, indent=2, sort_keys=True))
        return
    table = Table("form", "phase", "RMSE", "90 % coverage", "points", "studies")
    for r in result["table"]:
        table.add_row(
            r["form"],
            r["phase"],
            "-" if r["rmse"] is None else f"{r['rmse']:.4f}",
            "-" if r["coverage90"] is None else f"{r['coverage90']:.2f}",
            str(r["points"]),
            str(r["studies"]),
        )
    out.print(table)
    for f in result["fit_failures"]:
        out.print(f"fit: {f}", markup=False)


def _known(what: str, given: list[str] | None, known: Any) -> None:
    """Refuses a benchmark option value that is not one of ``known`` (one line)."""
    unknown = [g for g in given or [] if g not in known]
    if unknown:
        raise SearchlabError(f"unknown {what}(s) {unknown}; known: {list(known)}")


@bench_app.command("search")
def bench_search(
    quick: Annotated[
        bool, typer.Option("--quick", help="A small preset (checks the harness).")
    ] = False,
    seeds: Annotated[int | None, typer.Option(min=1, help="Seeds per instance.")] = None,
    first_seed: Annotated[int, typer.Option(min=0, help="First seed (split runs).")] = 0,
    rounds: Annotated[
        int,
        typer.Option(
            min=3,  # 6 submissions: the fewest the validity test needs
            max=64,
            help="Rounds of 8 candidates, 2 submissions each (paper: 4; not with --quick).",
        ),
    ] = 8,
    method: Annotated[
        list[str] | None, typer.Option(help="Method(s) to run (default: all).")
    ] = None,
    instance: Annotated[
        list[str] | None, typer.Option(help="Instance(s) to run (default: all).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="A JSON list of rows.")] = False,
    threshold: ThresholdOpt = None,  # None: the study file's (searchlab.bench.THRESHOLD)
    keep: Annotated[
        Path | None,
        typer.Option(
            help="A folder that keeps each engine method's study "
            "(INSTANCE-SEED-METHOD.db, study bench-INSTANCE-SEED)."
        ),
    ] = None,
) -> None:
    """True external regret of each method's recommendation, median and IQR over seeds."""
    from searchlab.bench import INSTANCES, METHODS, THRESHOLD, search

    _known("instance", instance, INSTANCES)
    _known("method", method, METHODS)
    _replay_settings(threshold, None, None)  # one line for a threshold <= 1
    rows = search(
        instances=tuple(instance or INSTANCES),
        methods=tuple(method or METHODS),
        seeds=seeds or (1 if quick else 10),
        first_seed=first_seed,
        quick=quick,
        rounds=rounds,
        threshold=THRESHOLD if threshold is None else threshold,
        keep=keep,
        # One line per finished run on stderr: a long benchmark shows where it is.
        progress=lambda line: print(line, file=sys.stderr, flush=True),
    )
    if as_json:
        print(
            json.dumps(
                [
                    {
                        k: v
                        for k, v in r.items()
                        if k not in ("regrets", "alarms", "regrets_best_observed")
                    }
                    for r in rows
                ],
                indent=2,
            )
        )
        return
    import statistics

    table = Table(
        "instance", "method", "median regret", "IQR", "seeds", "peer: best observed, median"
    )
    for r in rows:
        observed = r["regrets_best_observed"]
        table.add_row(
            _esc(r["instance"]),
            _esc(r["method"]),
            f"{r['median_regret']:.4f}",
            f"{r['iqr']:.4f}",
            str(r["seeds"]),
            f"{statistics.median(observed):.4f}" if observed else "-",
        )
    out.print(table)


@bench_app.command("front")
def bench_front(
    quick: Annotated[
        bool, typer.Option("--quick", help="A small preset (checks the harness).")
    ] = False,
    seeds: Annotated[int, typer.Option(min=1, help="Seeds per instance.")] = 10,
    first_seed: Annotated[int, typer.Option(min=0, help="First seed (split runs).")] = 10,
    method: Annotated[
        list[str] | None, typer.Option(help="Method(s) to run (default: all).")
    ] = None,
    instance: Annotated[
        list[str] | None, typer.Option(help="Instance(s) (default: goodhart and null).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Rows and summary as JSON.")] = False,
) -> None:
    """Hypervolume of the true external front each method reaches at equal budget (Pareto
    mode against Optuna's multi-objective samplers and random search)."""
    from searchlab.bench import INSTANCES
    from searchlab.bench_front import METHODS, front_benchmark, summarise

    _known("instance", instance, INSTANCES)
    _known("method", method, METHODS)
    rows = front_benchmark(
        instance or ["goodhart", "null"],
        range(first_seed, first_seed + seeds),
        methods=method or METHODS,
        quick=quick,
        # One JSON line per finished run on stderr: a long benchmark keeps what it has.
        progress=lambda line: print(line, file=sys.stderr, flush=True),
    )
    summary = summarise(rows)
    if as_json:
        print(json.dumps({"rows": rows, "summary": summary}, indent=2))
        return
    table = Table(
        "instance", "method", "median hypervolume", "IQR", "seeds", "/ best Optuna", "floor met"
    )
    for r in summary:
        ratio, met = r["ratio_to_best_optuna_median"], r["floor_met_in_truth"]
        table.add_row(
            _esc(r["instance"]),
            _esc(r["method"]),
            f"{r['median']:.5f}",
            f"{r['iqr'][0]:.5f} - {r['iqr'][1]:.5f}",
            str(r["seeds"]),
            "-" if ratio is None else f"{ratio:.3f}",
            "-" if met is None else f"{met:.0%}",
        )
    out.print(table)


def _one_line(text: str) -> str:
    return " | ".join(p.strip() for p in text.splitlines() if p.strip())


def _interrupted_code() -> int:
    """130 after SIGINT (Ctrl-C), 143 after SIGTERM: 128 + the signal, as shells report it."""
    import signal

    from searchlab.interrupt import received

    return 143 if received() == signal.SIGTERM else 130


def _ignore_further_signals() -> None:
    # What was interrupted is stored; a second Ctrl-C during the exit must not kill the process
    # by the signal (exit -2 instead of 130): Python puts SIGINT back to its default action while
    # it shuts down, but leaves an ignored signal ignored.
    import signal

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)


def main() -> None:
    """Console entry point: one-line errors, exit status 2; 130 on interrupt, 143 on SIGTERM."""
    from searchlab.interrupt import install_signal_handlers

    # SIGTERM unwinds like Ctrl-C (the study lease is released, the candidate re-proposed), and
    # neither lands inside a database call or cuts a clean-up short.
    install_signal_handlers()
    try:
        code = app(standalone_mode=False)
    except SearchlabError as exc:
        # One line, whatever the culprit's message looks like (a CUDA error spans many).
        err.print(f"error: {_one_line(str(exc))}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(2)
    except (KeyboardInterrupt, typer.Abort):
        _ignore_further_signals()
        err.print("interrupted: what finished is stored; continue with 'searchlab study resume'")
        sys.exit(_interrupted_code())
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except Exception as exc:
        # Typer's own copy of Click raises these, so they are known by their attributes.
        if type(exc).__name__ == "NoArgsIsHelpError" and hasattr(exc, "show"):
            exc.show()  # a command group given no command: its help
            sys.exit(exc.exit_code)
        # Click's usage errors (unknown option, bad value, missing argument): one line, as every
        # other error, instead of Click's usage box.
        if hasattr(exc, "format_message") and hasattr(exc, "exit_code"):
            message = f"{_one_line(exc.format_message())} (see --help)"
            err.print(f"error: {message}", markup=False, highlight=False, soft_wrap=True)
            sys.exit(exc.exit_code)
        raise
    if code == 130:  # Typer turns KeyboardInterrupt into exit code 130
        _ignore_further_signals()
        err.print("interrupted: what finished is stored; continue with 'searchlab study resume'")
        code = _interrupted_code()
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
