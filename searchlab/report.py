"""A report of one stored study: an HTML page, PNG figures and a markdown summary.

It shows the four figures of :mod:`searchlab.figures` (the same on the dashboard,
:mod:`searchlab.dashboard`), the audit trail, the recommendation and the table of candidates;
the dashboard's study note is :func:`note_markdown`.

The HTML page is self-contained (plotly.js inline: it opens offline); the PNGs are the same
figures drawn by matplotlib. Reading only: nothing here writes to storage.
"""

from __future__ import annotations

import html
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from searchlab.export import check_output_dir, open_output, refuse_symlinks
from searchlab.figures import (
    FIGURES,
    PNG_NAMES,
    TITLES,
    domain_checks,
    figures,
    is_missing,
    specs,
    to_plotly,
    to_png,
)
from searchlab.readmodel import StudyView, read
from searchlab.store import AuditKind, CandidateState, Mode

if TYPE_CHECKING:
    from searchlab.store import StudyRecord

__all__ = ["FIGURES", "StudyView", "figures", "markdown_summary", "view", "write_report"]


def view(record: StudyRecord) -> StudyView:
    """Reads what the figures, the note and the report show (one fresh read of the study)."""
    return read(record)


# -- helpers ----------------------------------------------------------------------------------


def _num(v: Any) -> float | None:
    return None if is_missing(v) else float(v)


def _fmt(v: Any, digits: int = 3) -> str:
    if is_missing(v):
        return "n/a"
    if isinstance(v, float):
        tiny = v != 0 and abs(v) < 0.001
        return f"{v:.{digits}g}" if abs(v) >= 1000 or tiny else f"{v:.{digits}f}"
    return str(v)


# -- text -------------------------------------------------------------------------------------


def _domain_rows(v: StudyView) -> list[dict[str, str]]:
    rows = []
    for d in v.domains:
        ch = domain_checks(v, d)
        last = ch.iloc[-1] if len(ch) else None
        sw = [s for s in v.switches if s["domain"] == d]
        rows.append(
            {
                "domain": d,
                "mode now": v.modes.get(d, Mode.PROXY),
                "switches": "; ".join(
                    f"-> {s['to_mode']} after candidate {s['candidate']} (round "
                    f"{(s['round'] or 0) + 1}, pair {s['pair']}, E {_fmt(s['statistic'])} >= "
                    f"{_fmt(s['threshold'])})"
                    for s in sw
                )
                or "none",
                "last E / threshold": "n/a"
                if last is None
                else f"{_fmt(_num(last['statistic']))} / {_fmt(_num(last['threshold']))}",
            }
        )
    return rows


def _rec_lines(v: StudyView) -> list[str]:
    rec = (v.recommendation or {}).get("recommendation") or {}
    best = (v.recommendation or {}).get("best_dev_candidate") or {}
    if not rec:
        return ["No recommendation yet."]
    line = (
        f"Candidate **{rec.get('candidate')}**, modelled external "
        f"{_fmt(rec.get('modelled_external'))} (sd {_fmt(rec.get('modelled_external_sd'))}; "
        f"basis: {rec.get('basis', 'n/a')})"
    )
    if "true_external" in rec:
        line += f"; true external {_fmt(rec['true_external'])}, regret {_fmt(rec.get('regret'))}"
    lines = [line + "."]
    if best:
        b = f"Best-dev candidate: {best.get('candidate')} (mean dev {_fmt(best.get('mean_dev'))})"
        if "true_external" in best:
            b += f", true external {_fmt(best['true_external'])}, regret {_fmt(best['regret'])}"
        lines.append(b + ".")
    recipe = rec.get("recipe") or {}
    if recipe:
        lines.append("Recipe: " + ", ".join(f"`{k}` = {_fmt(val, 4)}" for k, val in recipe.items()))
    for f in v.floors:
        lines.append(
            f"Floor: {f['domain']} {f['task']} at least {_fmt(f['threshold'])} ({f['basis']})."
        )
    if rec.get("meets_floors") is False:
        lines.append("**No candidate meets the floors**: the recommendation is the least short.")
    members = [m for m in v.front if m.get("on_front", True)]
    if members:
        lines.append(
            f"Pareto front by modelled external: {len(members)} candidates "
            f"({', '.join(str(m['candidate']) for m in members)}); `study export` has them as "
            "the `pareto` table."
        )
    return lines


def _audit_details(e: dict[str, Any]) -> str:
    fields = {
        k: val for k, val in e.items() if k not in ("seq", "kind", "round", "candidate", "domain")
    }
    return json.dumps(fields, default=str, separators=(", ", ": "))


def _md_table(header: list[str], rows: list[list[Any]]) -> list[str]:
    def cell(x: Any) -> str:
        return str(x).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(x) for x in row) + " |" for row in rows]
    return lines


def _headline(v: StudyView) -> str:
    state = "finished" if v.finished else f"{v.rounds_done} of {v.rounds_total} rounds done"
    c = v.tables["candidates"]
    complete = int((c["state"] == CandidateState.COMPLETE).sum()) if "state" in c else 0
    failed = int((c["state"] == CandidateState.FAIL).sum()) if "state" in c else 0
    return (
        f"{state}; {complete} candidates evaluated ({failed} failed); external budget used "
        f"{v.budget_used} of {v.budget_total}; validity level alpha {_fmt(v.alpha)}"
    )


def note_markdown(v: StudyView, *, max_entries: int = 40) -> str:
    """The dashboard note: mode switches with their evidence, the recommendation, the decisions."""
    lines = [f"## searchlab: {v.name}", "", _headline(v) + ".", "", "### Domains", ""]
    lines += _md_table(
        ["domain", "mode now", "switches (evidence)", "last E / threshold"],
        [list(r.values()) for r in _domain_rows(v)],
    )
    lines += ["", "### Recommendation", "", "\n\n".join(_rec_lines(v)), "", "### Decisions", ""]
    key = [
        e for e in v.log if e.get("kind") not in (AuditKind.VALIDITY_CHECK, AuditKind.ROUND_DONE)
    ]
    shown = key[-max_entries:]
    if len(key) > len(shown):
        lines.append(f"(the last {len(shown)} of {len(key)}; `searchlab study audit` lists all)")
        lines.append("")
    rows = []
    for e in shown:
        details = _audit_details(e)
        rows.append(
            [
                e.get("seq"),
                "-" if e.get("round") is None else e["round"] + 1,
                e.get("kind"),
                e.get("candidate", ""),
                e.get("domain", ""),
                details if len(details) <= 160 else details[:157] + "...",
            ]
        )
    lines += _md_table(["seq", "round", "kind", "candidate", "domain", "numbers"], rows)
    return "\n".join(lines) + "\n"


def _candidate_rows(v: StudyView) -> tuple[list[str], list[list[Any]]]:
    c = v.tables["candidates"]
    header = ["candidate", "round", "state", "mean dev"]
    header += [f"dev {d}" for d in v.domains] + [f"ext {d}" for d in v.domains]
    header += ["decoupled at proposal"]
    rows = []
    for _, r in c.iterrows():
        # A candidate from outside the engine (enqueued, imported) may have no modes: NA.
        modes = {d: r.get(f"mode.{d}") for d in v.domains}
        decoupled = [d for d, m in modes.items() if not is_missing(m) and m == Mode.DECOUPLED]
        rows.append(
            [r["number"], r["round"] + 1, r["state"], _fmt(_num(r.get("mean_dev")))]
            + [_fmt(_num(r.get(f"dev.{d}"))) for d in v.domains]
            + [_fmt(_num(r.get(f"external.{d}")), 2) for d in v.domains]
            + [", ".join(decoupled) or "-"]
        )
    return header, rows


def markdown_summary(v: StudyView, pngs: list[str]) -> str:
    """``summary.md``: the headline, the domains, the recommendation, figures and tables."""
    lines = [f"# searchlab study {v.name}", "", _headline(v) + ".", "", "## Domains", ""]
    lines += _md_table(
        ["domain", "mode now", "switches (evidence)", "last E / threshold"],
        [list(r.values()) for r in _domain_rows(v)],
    )
    lines += ["", "## Recommendation", "", "\n\n".join(_rec_lines(v)), "", "## Figures", ""]
    lines += [f"![{Path(p).stem}]({p})" for p in pngs]
    lines += ["", "## Audit trail", ""]
    rows = _audit_rows(v)
    lines += _md_table(["seq", "round", "kind", "candidate", "domain", "numbers"], rows)
    lines += ["", "## Candidates", ""]
    header, crow = _candidate_rows(v)
    lines += _md_table(header, crow)
    return "\n".join(lines) + "\n"


def _audit_rows(v: StudyView) -> list[list[Any]]:
    """The audit trail as table rows: seq, round (1-based), kind, candidate, domain, numbers."""
    return [
        [
            e.get("seq"),
            "-" if e.get("round") is None else e["round"] + 1,
            e.get("kind"),
            e.get("candidate", ""),
            e.get("domain", ""),
            _audit_details(e),
        ]
        for e in v.log
    ]


def _html_table(header: list[str], rows: list[list[Any]], cls: str = "") -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(x))}</td>" for x in row) + "</tr>" for row in rows
    )
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _md_inline(text: str) -> str:
    """Escapes text for HTML and renders ``**bold**`` and ``code`` spans."""
    import re

    out = html.escape(text)
    out = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", out)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", out)


def html_page(v: StudyView, figs: dict[str, Any]) -> str:
    """One self-contained page: plotly.js inline once, then every figure and table."""
    from plotly.offline import get_plotlyjs

    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>searchlab study {html.escape(v.name)}</title>",
        "<style>body{font-family:sans-serif;margin:2em;max-width:1300px}"
        "table{border-collapse:collapse;font-size:12px;margin:1em 0}"
        "td,th{border:1px solid #ccc;padding:3px 6px;text-align:left;vertical-align:top}"
        "th{background:#f3f3f3}.audit td:last-child{font-family:monospace;font-size:11px;"
        "max-width:700px;word-break:break-all}</style>",
        f"<script type='text/javascript'>{get_plotlyjs()}</script></head><body>",
        f"<h1>searchlab study {html.escape(v.name)}</h1>",
        f"<p>{html.escape(_headline(v))}.</p>",
        "<h2>Domains</h2>",
    ]
    dom = _domain_rows(v)
    parts.append(_html_table(list(dom[0]) if dom else [], [list(r.values()) for r in dom]))
    parts.append("<h2>Recommendation</h2>")
    parts += [f"<p>{_md_inline(line)}</p>" for line in _rec_lines(v)]
    for gid, fig in figs.items():
        parts.append(f"<h2>{html.escape(TITLES[gid])}</h2>")
        parts.append(fig.to_html(full_html=False, include_plotlyjs=False, div_id=gid))
    parts.append("<h2>Audit trail</h2>")
    rows = _audit_rows(v)
    parts.append(
        _html_table(["seq", "round", "kind", "candidate", "domain", "numbers"], rows, "audit")
    )
    parts.append("<h2>Candidates</h2>")
    header, crow = _candidate_rows(v)
    parts.append(_html_table(header, crow))
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(record: StudyRecord, out_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Writes ``report.html``, the PNG figures and ``summary.md`` into ``out_dir``.

    Raises:
        OutputError: If ``out_dir`` cannot be created or written, or it or a file about to be
            written is a symbolic link (checked before any work).
    """
    out = check_output_dir(out_dir)
    page = out / "report.html"
    summary = out / "summary.md"
    # A symlinked output would overwrite its target: refuse before any file is written.
    refuse_symlinks([page, summary, *(out / name for name in PNG_NAMES.values())])
    v = view(record)
    drawn = specs(v)
    figs = {gid: to_plotly(spec) for gid, spec in drawn.items()}
    pngs = [to_png(spec, out / PNG_NAMES[gid]) for gid, spec in drawn.items()]
    with open_output(page) as f:
        f.write(html_page(v, figs))
    with open_output(summary) as f:
        f.write(markdown_summary(v, [p.name for p in pngs]))
    return {"html": page, "summary": summary, "png": pngs}
