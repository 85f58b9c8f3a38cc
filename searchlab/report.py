"""Figures and a report of one stored study: an HTML page, PNG figures and a markdown summary.

What is shown (the same on the dashboard, :mod:`searchlab.dashboard`):

- per domain, dev (every candidate) and external (submitted candidates) against the candidate
  number, with each mode switch marked where the audit trail records it;
- per domain, the validity statistic against its threshold at each check (one check per external
  score, the x axis counts them), the switch marked;
- the mode of each domain at the end of each round;
- the external budget: submissions per round and in all, against the total;
- the audit trail, the recommendation and the table of candidates (report only).

The HTML page is self-contained (plotly.js inline: it opens offline). PNGs are drawn with
matplotlib (plotly's static export needs kaleido and a Chrome; matplotlib needs neither).
Reading only: nothing here writes to storage.
"""

from __future__ import annotations

import html
import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from searchlab.export import check_output_dir, open_output, refuse_symlinks
from searchlab.readmodel import StudyView, read
from searchlab.store import AuditKind, Mode

if TYPE_CHECKING:
    import pandas as pd

    from searchlab.store import StudyRecord

__all__ = ["StudyView", "figures", "markdown_summary", "view", "write_report"]

FIGURES = {
    "searchlab-dev-external": "Dev and external per domain",
    "searchlab-validity": "Validity statistic against its threshold",
    "searchlab-modes": "Mode of each domain over the rounds",
    "searchlab-budget": "External budget",
}
_DEV, _EXT, _SWITCH, _BACK = "#4C72B0", "#DD8452", "#C44E52", "#55A868"


def view(record: StudyRecord) -> StudyView:
    """Reads what the figures, the note and the report show (one fresh read of the study)."""
    return read(record)


# -- helpers ----------------------------------------------------------------------------------


def _series(df: pd.DataFrame, column: str) -> list[Any]:
    """A column as a plain list, missing values as None."""
    if column not in df:
        return []
    return [None if _missing(v) else v for v in df[column].tolist()]


def _missing(v: Any) -> bool:
    if v is None:
        return True
    try:
        import pandas as pd

        return bool(pd.isna(v))
    except (TypeError, ValueError):
        return False


def _num(v: Any) -> float | None:
    return None if _missing(v) else float(v)


def _fmt(v: Any, digits: int = 3) -> str:
    if _missing(v):
        return "n/a"
    if isinstance(v, float):
        tiny = v != 0 and abs(v) < 0.001
        return f"{v:.{digits}g}" if abs(v) >= 1000 or tiny else f"{v:.{digits}f}"
    return str(v)


def _stat(v: Any) -> float | None:
    """A statistic for a log axis: None stays None, zero becomes a small floor."""
    x = _num(v)
    return None if x is None else max(x, 1e-3)


def _switch_label(s: dict[str, Any]) -> str:
    return f"{s['domain']} -> {s['to_mode']} after candidate {s['candidate']}"


def _checks(v: StudyView, domain: str) -> pd.DataFrame:
    ch = v.tables["checks"]
    if ch.empty:
        return ch
    return ch[ch["domain"] == domain]


# -- plotly figures ---------------------------------------------------------------------------


def figures(v: StudyView) -> dict[str, Any]:
    """The four figures as plotly ``Figure`` objects, keyed by a stable graph id."""
    return {
        "searchlab-dev-external": _fig_dev_external(v),
        "searchlab-validity": _fig_validity(v),
        "searchlab-modes": _fig_modes(v),
        "searchlab-budget": _fig_budget(v),
    }


def _fig_dev_external(v: StudyView) -> Any:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    c = v.tables["candidates"]
    c = c[c["state"] == "COMPLETE"] if "state" in c else c
    n = max(len(v.domains), 1)
    fig = make_subplots(
        rows=n, cols=1, shared_xaxes=True, vertical_spacing=0.04, subplot_titles=v.domains
    )
    for i, d in enumerate(v.domains, start=1):
        first = i == 1
        fig.add_trace(
            go.Scatter(
                x=_series(c, "number"),
                y=_series(c, f"dev.{d}"),
                mode="markers",
                name="dev",
                legendgroup="dev",
                showlegend=first,
                marker={"color": _DEV, "size": 6},
                hovertemplate="candidate %{x}<br>dev %{y:.3f}<extra>" + d + "</extra>",
            ),
            row=i,
            col=1,
        )
        ext = c[c[f"external.{d}"].notna()] if f"external.{d}" in c else c.iloc[:0]
        fig.add_trace(
            go.Scatter(
                x=_series(ext, "number"),
                y=_series(ext, f"external.{d}"),
                mode="markers",
                name="external",
                legendgroup="external",
                showlegend=first,
                marker={"color": _EXT, "size": 10, "symbol": "diamond"},
                hovertemplate="candidate %{x}<br>external %{y:.3f}<extra>" + d + "</extra>",
            ),
            row=i,
            col=1,
        )
        for s in v.switches:
            if s["domain"] != d or s["candidate"] is None:
                continue
            color = _SWITCH if s["to_mode"] == Mode.DECOUPLED else _BACK
            fig.add_vline(
                x=s["candidate"], line={"color": color, "dash": "dash", "width": 2}, row=i, col=1
            )
            fig.add_annotation(
                x=s["candidate"],
                y=1,
                yref=f"y{'' if i == 1 else i} domain",
                text=f"-> {s['to_mode']}",
                showarrow=False,
                xanchor="left",
                yanchor="top",
                font={"color": color},
                row=i,
                col=1,
            )
        fig.update_yaxes(title_text="accuracy", row=i, col=1)
    fig.update_xaxes(title_text="candidate", row=n, col=1)
    fig.update_layout(
        title=f"{v.name}: dev and external per domain (dashed: mode switch)",
        height=max(320, 220 * n),
        template="plotly_white",
        legend={"orientation": "h", "y": 1.02, "yanchor": "bottom", "x": 1, "xanchor": "right"},
    )
    return fig


def _fig_validity(v: StudyView) -> Any:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    n = max(len(v.domains), 1)
    fig = make_subplots(
        rows=n, cols=1, shared_xaxes=True, vertical_spacing=0.04, subplot_titles=v.domains
    )
    for i, d in enumerate(v.domains, start=1):
        first = i == 1
        ch = _checks(v, d)
        cands = _series(ch, "candidate")
        fig.add_trace(
            go.Scatter(
                x=_series(ch, "pair"),
                y=[_stat(s) for s in _series(ch, "statistic")],
                customdata=cands,
                mode="lines+markers",
                name="statistic E",
                legendgroup="stat",
                showlegend=first,
                line={"color": _DEV},
                hovertemplate="pair %{x} (candidate %{customdata})<br>E %{y:.3g}<extra>"
                + d
                + "</extra>",
            ),
            row=i,
            col=1,
        )
        fig.add_trace(
            go.Scatter(
                x=_series(ch, "pair"),
                y=_series(ch, "threshold"),
                mode="lines",
                name="threshold",
                legendgroup="thr",
                showlegend=first,
                line={"color": "black", "dash": "dot", "shape": "hv"},
                hoverinfo="skip",
            ),
            row=i,
            col=1,
        )
        sw = [s for s in v.switches if s["domain"] == d and s["pair"] is not None]
        if sw:
            fig.add_trace(
                go.Scatter(
                    x=[s["pair"] for s in sw],
                    y=[_stat(s["statistic"]) for s in sw],
                    mode="markers+text",
                    text=[f"-> {s['to_mode']} (cand. {s['candidate']})" for s in sw],
                    textposition="top left",
                    name="switch",
                    legendgroup="switch",
                    showlegend=first,
                    marker={"color": _SWITCH, "size": 16, "symbol": "star"},
                ),
                row=i,
                col=1,
            )
        fig.update_yaxes(type="log", title_text="E", row=i, col=1)
    fig.update_xaxes(title_text="external scores so far (pairs)", row=n, col=1)
    fig.update_layout(
        title=f"{v.name}: validity statistic against its threshold (star: switch; after a switch "
        "the return test)",
        height=max(320, 220 * n),
        template="plotly_white",
        legend={"orientation": "h", "y": 1.02, "yanchor": "bottom", "x": 1, "xanchor": "right"},
    )
    return fig


def _mode_matrix(v: StudyView) -> tuple[list[int], list[list[float | None]]]:
    """Mode per domain (rows) at the end of each round (columns, 1-based round numbers).

    From the ``round_done`` audit records; a round still running shows the modes its
    candidates were proposed in.
    """
    at_end: dict[int, dict[str, str]] = {}
    for e in v.log:
        if e.get("kind") == AuditKind.ROUND_DONE and e.get("round") is not None:
            at_end[int(e["round"])] = dict(e.get("modes") or {})
    c = v.tables["candidates"]
    for r, n in zip(_series(c, "round"), range(len(c)), strict=False):
        if r is None or int(r) in at_end:
            continue
        row = c.iloc[n]
        at_end[int(r)] = {d: row.get(f"mode.{d}") for d in v.domains}
    rounds = sorted(r for r in at_end if r >= 0)
    z = []
    for d in v.domains:
        modes = [at_end[r].get(d) for r in rounds]
        z.append([None if _missing(m) else (1.0 if m == Mode.DECOUPLED else 0.0) for m in modes])
    return [r + 1 for r in rounds], z


def _fig_modes(v: StudyView) -> Any:
    import plotly.graph_objects as go

    numbers, z = _mode_matrix(v)
    text = [
        ["n/a" if m is None else (Mode.DECOUPLED if m else Mode.PROXY) for m in row] for row in z
    ]
    fig = go.Figure(
        go.Heatmap(
            x=numbers,
            y=v.domains,
            z=z,
            text=text,
            zmin=0,
            zmax=1,
            colorscale=[[0, "#DDE6F3"], [0.5, "#DDE6F3"], [0.5, _SWITCH], [1, _SWITCH]],
            colorbar={"tickvals": [0.25, 0.75], "ticktext": [Mode.PROXY, Mode.DECOUPLED]},
            xgap=1,
            ygap=2,
            hovertemplate="end of round %{x}<br>%{y}: %{text}<extra></extra>",
        )
    )
    fig.update_layout(
        title=f"{v.name}: mode of each domain at the end of each round",
        xaxis={"title": "round", "dtick": 1},
        height=max(260, 60 * len(v.domains) + 140),
        template="plotly_white",
    )
    return fig


def _budget(v: StudyView) -> tuple[list[int], list[int], list[int]]:
    s = v.tables["submissions"]
    rounds = list(range(max(v.rounds_total, 1)))
    per = [0] * len(rounds)
    for r in _series(s, "round"):
        if r is not None and 0 <= int(r) < len(per):
            per[int(r)] += 1
    cum, total = [], 0
    for p in per:
        total += p
        cum.append(total)
    return rounds, per, cum


def _fig_budget(v: StudyView) -> Any:
    import plotly.graph_objects as go

    rounds, per, cum = _budget(v)
    x = [r + 1 for r in rounds]
    fig = go.Figure()
    fig.add_trace(go.Bar(x=x, y=per, name="submissions this round", marker_color=_EXT))
    fig.add_trace(
        go.Scatter(x=x, y=cum, mode="lines+markers", name="used so far", line={"color": _DEV})
    )
    fig.add_hline(
        y=v.budget_total,
        line={"color": "black", "dash": "dot"},
        annotation_text=f"budget {v.budget_total}",
        annotation_position="top left",
    )
    fig.update_layout(
        title=f"{v.name}: external budget ({cum[-1] if cum else 0} of {v.budget_total} used)",
        xaxis_title="round",
        yaxis_title="submissions",
        height=320,
        template="plotly_white",
    )
    return fig


# -- matplotlib PNGs --------------------------------------------------------------------------


def _pngs(v: StudyView, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    written = []
    n = max(len(v.domains), 1)
    c = v.tables["candidates"]
    c = c[c["state"] == "COMPLETE"] if "state" in c else c

    fig, axes = plt.subplots(n, 1, figsize=(10, 2.2 * n + 0.8), sharex=True, squeeze=False)
    for ax, d in zip(axes[:, 0], v.domains, strict=False):
        ax.scatter(_series(c, "number"), _series(c, f"dev.{d}"), s=14, c=_DEV, label="dev")
        ext = c[c[f"external.{d}"].notna()] if f"external.{d}" in c else c.iloc[:0]
        ax.scatter(
            _series(ext, "number"),
            _series(ext, f"external.{d}"),
            s=40,
            c=_EXT,
            marker="D",
            label="external",
        )
        for s in v.switches:
            if s["domain"] == d and s["candidate"] is not None:
                color = _SWITCH if s["to_mode"] == Mode.DECOUPLED else _BACK
                ax.axvline(s["candidate"], color=color, ls="--", lw=2)
                right = s["candidate"] > 0.6 * max(_series(c, "number") or [0])
                ax.annotate(
                    f" -> {s['to_mode']} (after cand. {s['candidate']}) ",
                    (s["candidate"], 0.95),
                    xycoords=("data", "axes fraction"),
                    color=color,
                    va="top",
                    ha="right" if right else "left",
                    fontsize=9,
                )
        ax.set_ylabel(d, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0, 0].legend(loc="lower right", fontsize=8, ncol=2)
    axes[-1, 0].set_xlabel("candidate")
    fig.suptitle(f"{v.name}: dev and external per domain (dashed: mode switch)")
    fig.tight_layout()
    written.append(_save(fig, out / "dev_external.png"))

    fig, axes = plt.subplots(n, 1, figsize=(10, 2.2 * n + 0.8), sharex=True, squeeze=False)
    for ax, d in zip(axes[:, 0], v.domains, strict=False):
        ch = _checks(v, d)
        pairs = _series(ch, "pair")
        stats = [_stat(s) for s in _series(ch, "statistic")]
        ax.plot(pairs, [math.nan if s is None else s for s in stats], "o-", c=_DEV, ms=3)
        ax.step(pairs, _series(ch, "threshold"), where="post", c="black", ls=":", label="threshold")
        for s in v.switches:
            if s["domain"] == d and s["pair"] is not None:
                y = _stat(s["statistic"]) or 1.0
                ax.plot([s["pair"]], [y], "*", c=_SWITCH, ms=16)
                ax.annotate(
                    f"-> {s['to_mode']} (cand. {s['candidate']})  ",
                    (s["pair"], y),
                    color=_SWITCH,
                    ha="right",
                    va="center",
                    fontsize=9,
                )
        if pairs:
            ax.set_yscale("log")
        ax.set_ylabel(f"{d}\nE", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0, 0].legend(loc="upper left", fontsize=8)
    axes[-1, 0].set_xlabel("external scores so far (pairs)")
    fig.suptitle(
        f"{v.name}: validity statistic against its threshold (star: switch; after a switch "
        "the return test)"
    )
    fig.tight_layout()
    written.append(_save(fig, out / "validity.png"))

    numbers, z = _mode_matrix(v)
    fig, ax = plt.subplots(figsize=(10, 0.45 * n + 1.4))
    from matplotlib.colors import ListedColormap

    grid = [[math.nan if m is None else m for m in row] for row in z]
    if numbers:
        lo, hi = min(numbers) - 0.5, max(numbers) + 0.5
        ax.imshow(
            grid,
            aspect="auto",
            cmap=ListedColormap(["#DDE6F3", _SWITCH]),
            vmin=0,
            vmax=1,
            interpolation="nearest",
            extent=(lo, hi, n - 0.5, -0.5),
        )
    ax.set_yticks(range(n), v.domains, fontsize=9)
    ax.set_xlabel("round (red: decoupled at the end of the round)")
    ax.set_xticks(numbers)
    ax.set_title(f"{v.name}: mode of each domain at the end of each round")
    fig.tight_layout()
    written.append(_save(fig, out / "modes.png"))

    rounds, per, cum = _budget(v)
    x = [r + 1 for r in rounds]
    fig, ax = plt.subplots(figsize=(8, 3.2))
    ax.bar(x, per, color=_EXT, label="submissions this round")
    ax.plot(x, cum, "o-", c=_DEV, label="used so far")
    ax.axhline(v.budget_total, c="black", ls=":", label=f"budget {v.budget_total}")
    ax.set_xlabel("round")
    ax.set_ylabel("submissions")
    ax.set_title(f"{v.name}: external budget ({cum[-1] if cum else 0} of {v.budget_total} used)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    written.append(_save(fig, out / "budget.png"))
    return written


PNG_NAMES = ("dev_external.png", "validity.png", "modes.png", "budget.png")  # _pngs' files


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    try:
        with open_output(path, binary=True) as f:  # never through a symlink
            fig.savefig(f, format="png", dpi=110)
    finally:
        plt.close(fig)
    return path


# -- text -------------------------------------------------------------------------------------


def _domain_rows(v: StudyView) -> list[dict[str, str]]:
    rows = []
    for d in v.domains:
        ch = _checks(v, d)
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
    s = v.tables["submissions"]
    state = "finished" if v.finished else f"{v.rounds_done} of {v.rounds_total} rounds done"
    c = v.tables["candidates"]
    complete = int((c["state"] == "COMPLETE").sum()) if "state" in c else 0
    failed = int((c["state"] == "FAIL").sum()) if "state" in c else 0
    return (
        f"{state}; {complete} candidates evaluated ({failed} failed); external budget used "
        f"{len(s)} of {v.budget_total}; validity level alpha {_fmt(v.alpha)}"
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
        decoupled = [d for d in v.domains if r.get(f"mode.{d}") == Mode.DECOUPLED]
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
        parts.append(f"<h2>{html.escape(FIGURES[gid])}</h2>")
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
    refuse_symlinks([page, summary, *(out / name for name in PNG_NAMES)])
    v = view(record)
    figs = figures(v)
    pngs = _pngs(v, out)
    with open_output(page) as f:
        f.write(html_page(v, figs))
    with open_output(summary) as f:
        f.write(markdown_summary(v, [p.name for p in pngs]))
    return {"html": page, "summary": summary, "png": pngs}
