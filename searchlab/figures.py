"""The four figures of a study, each defined once as data and drawn by plotly or matplotlib.

- ``searchlab-dev-external``: per domain, dev (every candidate) and external (submitted
  candidates) against the candidate number, each mode switch a dashed line where the audit
  records it;
- ``searchlab-validity``: per domain, the validity statistic against its threshold at each check
  (one check per external score), the switch a star;
- ``searchlab-modes``: the mode of each domain at the end of each round;
- ``searchlab-budget``: submissions per round and in all, against the budget;

and, in a Pareto study (:data:`FRONT_FIGURES`):

- ``searchlab-front``: the front's modelled external in every pair of domains, the
  recommendation a star, each external floor a dotted line;
- ``searchlab-front-parallel``: the same members in parallel coordinates, one line each.

:func:`specs` reads them off a :class:`~searchlab.readmodel.StudyView` as :class:`FigureSpec`
values; :func:`to_plotly` draws one for the report page and optuna-dashboard, :func:`to_png`
for the PNG files (plotly's static export needs kaleido and a Chrome; matplotlib needs neither).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from searchlab.store import AuditKind, CandidateState, Mode

if TYPE_CHECKING:
    import pandas as pd

    from searchlab.readmodel import StudyView

__all__ = ["FIGURES", "FRONT_FIGURES", "FigureSpec", "figures", "specs", "to_plotly", "to_png"]

FIGURES = {
    "searchlab-dev-external": "Dev and external per domain",
    "searchlab-validity": "Validity statistic against its threshold",
    "searchlab-modes": "Mode of each domain over the rounds",
    "searchlab-budget": "External budget",
}
# Drawn only where the study has a front (objective type pareto).
FRONT_FIGURES = {
    "searchlab-front": "The Pareto front: modelled external, domain against domain",
    "searchlab-front-parallel": "The Pareto front in parallel coordinates",
}
TITLES = {**FIGURES, **FRONT_FIGURES}
PNG_NAMES = {
    "searchlab-dev-external": "dev_external.png",
    "searchlab-validity": "validity.png",
    "searchlab-modes": "modes.png",
    "searchlab-budget": "budget.png",
    "searchlab-front": "front.png",
    "searchlab-front-parallel": "front_parallel.png",
}
_DEV, _EXT, _SWITCH, _BACK, _PROXY = "#4C72B0", "#DD8452", "#C44E52", "#55A868", "#DDE6F3"
_MARKERS = {"circle": "o", "diamond": "D", "star": "*"}


@dataclass(frozen=True)
class Trace:
    """One series of points: ``markers``, ``lines`` (with markers), a ``step`` line or ``bars``."""

    kind: Literal["markers", "lines", "step", "bars"]
    x: list[Any]
    y: list[Any]
    name: str
    color: str
    size: float = 6
    symbol: str = "circle"
    dash: bool = False
    labels: list[str] | None = None  # drawn beside each point
    hover: str | None = None  # plotly's hovertemplate
    customdata: list[Any] | None = None


@dataclass(frozen=True)
class Mark:
    """A dashed vertical line at ``x`` with a label (a mode switch)."""

    x: float
    label: str
    color: str


@dataclass(frozen=True)
class Panel:
    """One row of a figure: one domain, or the whole study."""

    title: str
    ylabel: str
    traces: list[Trace] = field(default_factory=list)
    marks: list[Mark] = field(default_factory=list)
    log_y: bool = False
    hline: tuple[float, str] | None = None  # y and label of a dotted horizontal line
    vline: tuple[float, str] | None = None  # x and label of a dotted vertical line
    xlabel: str = ""  # in a grid (FigureSpec.columns > 1) each panel has its own x
    xticks: list[str] | None = None  # names of the x positions 0, 1, ...


@dataclass(frozen=True)
class Heat:
    """A two-colour grid: ``z[row][column]`` 0 (first colour), 1 (second) or None."""

    x: list[int]
    rows: list[str]
    z: list[list[float | None]]
    names: tuple[str, str]
    colors: tuple[str, str]
    hover: str


@dataclass(frozen=True)
class FigureSpec:
    """One figure: panels stacked on a shared x axis, or a grid."""

    title: str
    xlabel: str
    panels: list[Panel] = field(default_factory=list)
    heat: Heat | None = None
    height: int = 320
    integer_x: bool = False
    columns: int = 1  # > 1: a grid of panels, row by row, each with its own x axis


# -- the figures, once ------------------------------------------------------------------------


def specs(v: StudyView) -> dict[str, FigureSpec]:
    """The figures of a study, keyed by their graph ids (:data:`FIGURES`, and
    :data:`FRONT_FIGURES` where the study has a front)."""
    out = {
        "searchlab-dev-external": _dev_external(v),
        "searchlab-validity": _validity(v),
        "searchlab-modes": _modes(v),
        "searchlab-budget": _budget(v),
    }
    if v.front:
        out["searchlab-front"] = _front_pairs(v)
        out["searchlab-front-parallel"] = _front_parallel(v)
    return out


def _series(df: pd.DataFrame, column: str) -> list[Any]:
    """A column as a plain list, missing values as None."""
    if column not in df:
        return []
    return [None if is_missing(x) else x for x in df[column].tolist()]


def is_missing(x: Any) -> bool:
    if x is None:
        return True
    try:
        import pandas as pd

        return bool(pd.isna(x))
    except (TypeError, ValueError):
        return False


def _stat(x: Any) -> float | None:
    """A statistic for a log axis: None stays None, zero becomes a small floor."""
    return None if is_missing(x) else max(float(x), 1e-3)


def domain_checks(v: StudyView, domain: str) -> pd.DataFrame:
    """The rows of the ``checks`` table of one domain."""
    checks = v.tables["checks"]
    return checks if checks.empty else checks[checks["domain"] == domain]


def _stacked_height(v: StudyView) -> int:
    return max(320, 220 * max(len(v.domains), 1))


def _dev_external(v: StudyView) -> FigureSpec:
    c = v.tables["candidates"]
    c = c[c["state"] == CandidateState.COMPLETE] if "state" in c else c
    panels = []
    for d in v.domains:
        ext = c[c[f"external.{d}"].notna()] if f"external.{d}" in c else c.iloc[:0]
        marks = [
            Mark(
                x=s["candidate"],
                label=f"-> {s['to_mode']}",
                color=_SWITCH if s["to_mode"] == Mode.DECOUPLED else _BACK,
            )
            for s in v.switches
            if s["domain"] == d and s["candidate"] is not None
        ]
        panels.append(
            Panel(
                title=d,
                ylabel="accuracy",
                traces=[
                    Trace(
                        "markers",
                        _series(c, "number"),
                        _series(c, f"dev.{d}"),
                        "dev",
                        _DEV,
                        hover="candidate %{x}<br>dev %{y:.3f}<extra>" + d + "</extra>",
                    ),
                    Trace(
                        "markers",
                        _series(ext, "number"),
                        _series(ext, f"external.{d}"),
                        "external",
                        _EXT,
                        size=10,
                        symbol="diamond",
                        hover="candidate %{x}<br>external %{y:.3f}<extra>" + d + "</extra>",
                    ),
                ],
                marks=marks,
            )
        )
    return FigureSpec(
        title=f"{v.name}: dev and external per domain (dashed: mode switch)",
        xlabel="candidate",
        panels=panels,
        height=_stacked_height(v),
    )


def _validity(v: StudyView) -> FigureSpec:
    panels = []
    for d in v.domains:
        ch = domain_checks(v, d)
        traces = [
            Trace(
                "lines",
                _series(ch, "pair"),
                [_stat(s) for s in _series(ch, "statistic")],
                "statistic E",
                _DEV,
                size=3,
                customdata=_series(ch, "candidate"),
                hover="pair %{x} (candidate %{customdata})<br>E %{y:.3g}<extra>" + d + "</extra>",
            ),
            Trace("step", _series(ch, "pair"), _series(ch, "threshold"), "threshold", "black"),
        ]
        sw = [s for s in v.switches if s["domain"] == d and s["pair"] is not None]
        if sw:
            traces.append(
                Trace(
                    "markers",
                    [s["pair"] for s in sw],
                    [_stat(s["statistic"]) for s in sw],
                    "switch",
                    _SWITCH,
                    size=16,
                    symbol="star",
                    labels=[f"-> {s['to_mode']} (cand. {s['candidate']})" for s in sw],
                )
            )
        panels.append(Panel(title=d, ylabel="E", traces=traces, log_y=True))
    return FigureSpec(
        title=f"{v.name}: validity statistic against its threshold (star: switch; after a switch "
        "the return test)",
        xlabel="external scores so far (pairs)",
        panels=panels,
        height=_stacked_height(v),
    )


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
        z.append([None if is_missing(m) else (1.0 if m == Mode.DECOUPLED else 0.0) for m in modes])
    return [r + 1 for r in rounds], z


def _modes(v: StudyView) -> FigureSpec:
    numbers, z = _mode_matrix(v)
    return FigureSpec(
        title=f"{v.name}: mode of each domain at the end of each round",
        xlabel="round (red: decoupled at the end of the round)",
        heat=Heat(
            x=numbers,
            rows=list(v.domains),
            z=z,
            names=(Mode.PROXY, Mode.DECOUPLED),
            colors=(_PROXY, _SWITCH),
            hover="end of round %{x}<br>%{y}: %{text}<extra></extra>",
        ),
        height=max(260, 60 * len(v.domains) + 140),
        integer_x=True,
    )


def _budget(v: StudyView) -> FigureSpec:
    s = v.tables["submissions"]
    per = [0] * max(v.rounds_total, 1)
    for r in _series(s, "round"):
        if r is not None and 0 <= int(r) < len(per):
            per[int(r)] += 1
    # Imported runs' submissions were made before round 1: they start the running total.
    before = v.budget_used - sum(per)
    cum = [before + sum(per[: i + 1]) for i in range(len(per))]
    x = list(range(1, len(per) + 1))
    return FigureSpec(
        title=f"{v.name}: external budget ({v.budget_used} of {v.budget_total} used)",
        xlabel="round",
        panels=[
            Panel(
                title="",
                ylabel="submissions",
                traces=[
                    Trace("bars", x, per, "submissions this round", _EXT),
                    Trace("lines", x, cum, "used so far", _DEV),
                ],
                hline=(v.budget_total, f"budget {v.budget_total}"),
            )
        ],
        integer_x=True,
    )


def _front_members(v: StudyView) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """The front's members and the recommendation's row (None if it is not listed)."""
    rec = (v.recommendation.get("recommendation") or {}).get("candidate")
    members = [m for m in v.front if m.get("on_front", True)]
    return members, next((m for m in v.front if m["candidate"] == rec), None)


def _external_floors(v: StudyView) -> dict[str, float]:
    return {
        f["domain"]: float(f["threshold"])
        for f in v.floors
        if f["task"] == "external" and f["threshold"] is not None
    }


def _front_pairs(v: StudyView) -> FigureSpec:
    members, rec = _front_members(v)
    floors = _external_floors(v)
    panels = []
    for a, b in itertools.combinations(v.domains, 2):
        traces = [
            Trace(
                "markers",
                [m["modelled_external"][a] for m in members],
                [m["modelled_external"][b] for m in members],
                "front",
                _DEV,
                hover="candidate %{customdata}<br>%{x:.3f}, %{y:.3f}<extra></extra>",
                customdata=[m["candidate"] for m in members],
            )
        ]
        if rec is not None:
            traces.append(
                Trace(
                    "markers",
                    [rec["modelled_external"][a]],
                    [rec["modelled_external"][b]],
                    f"recommendation ({rec['candidate']})",
                    _SWITCH,
                    size=14,
                    symbol="star",
                )
            )
        panels.append(
            Panel(
                title=f"{b} / {a}",
                ylabel=b,
                xlabel=a,
                traces=traces,
                hline=(floors[b], f"floor {floors[b]:.2f}") if b in floors else None,
                vline=(floors[a], f"floor {floors[a]:.2f}") if a in floors else None,
            )
        )
    columns = min(3, len(panels))
    return FigureSpec(
        title=f"{v.name}: the front ({len(members)} candidates), modelled external",
        xlabel="",
        panels=panels,
        columns=columns,
        height=280 * math.ceil(len(panels) / columns) + 80,
    )


def _front_parallel(v: StudyView) -> FigureSpec:
    members, rec = _front_members(v)
    k = len(v.domains)
    x: list[Any] = []
    y: list[Any] = []
    for m in members:  # one polyline per member, None between them (a gap in both drawings)
        x += [*range(k), None]
        y += [*(m["modelled_external"][d] for d in v.domains), None]
    traces = [Trace("lines", x, y, "front members", _DEV, size=3)]
    if rec is not None:
        traces.append(
            Trace(
                "lines",
                list(range(k)),
                [rec["modelled_external"][d] for d in v.domains],
                f"recommendation ({rec['candidate']})",
                _SWITCH,
                size=6,
            )
        )
    floors = _external_floors(v)
    if floors:
        traces.append(
            Trace(
                "markers",
                [v.domains.index(d) for d in floors],
                list(floors.values()),
                "floor",
                "black",
                size=10,
                symbol="diamond",
            )
        )
    return FigureSpec(
        title=f"{v.name}: the front in parallel coordinates",
        xlabel="domain",
        panels=[Panel(title="", ylabel="modelled external", traces=traces, xticks=list(v.domains))],
        height=380,
    )


# -- plotly -----------------------------------------------------------------------------------


def figures(v: StudyView) -> dict[str, Any]:
    """The four figures as plotly ``Figure`` objects, keyed by their graph ids."""
    return {gid: to_plotly(spec) for gid, spec in specs(v).items()}


def to_plotly(spec: FigureSpec) -> Any:
    """One figure as a plotly ``Figure``."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    if spec.heat is not None:
        return _plotly_heat(spec)
    n = len(spec.panels)
    cols = max(1, spec.columns)
    titles = [p.title for p in spec.panels]
    grid = any(titles) or cols > 1
    fig = (
        make_subplots(
            rows=math.ceil(n / cols),
            cols=cols,
            shared_xaxes=cols == 1,
            vertical_spacing=0.04 if cols == 1 else 0.3 / math.ceil(n / cols),
            horizontal_spacing=0.08,
            subplot_titles=titles,
        )
        if grid
        else go.Figure()
    )
    for i, panel in enumerate(spec.panels):
        at = {"row": i // cols + 1, "col": i % cols + 1} if grid else {}
        for t in panel.traces:
            fig.add_trace(_plotly_trace(t, legend=i == 0), **at)
        for m in panel.marks:
            fig.add_vline(x=m.x, line={"color": m.color, "dash": "dash", "width": 2}, **at)
            fig.add_annotation(
                x=m.x,
                y=1,
                yref=f"y{'' if i == 0 else i + 1} domain",
                text=m.label,
                showarrow=False,
                xanchor="left",
                yanchor="top",
                font={"color": m.color},
                **at,
            )
        if panel.hline is not None:
            fig.add_hline(
                y=panel.hline[0],
                line={"color": "black", "dash": "dot"},
                annotation_text=panel.hline[1],
                annotation_position="top left",
                **at,
            )
        if panel.vline is not None:
            fig.add_vline(
                x=panel.vline[0],
                line={"color": "black", "dash": "dot"},
                annotation_text=panel.vline[1],
                annotation_position="top right",
                **at,
            )
        fig.update_yaxes(type="log" if panel.log_y else None, title_text=panel.ylabel, **at)
        if cols > 1:
            fig.update_xaxes(title_text=panel.xlabel, **at)
        if panel.xticks:
            ticks = list(range(len(panel.xticks)))
            fig.update_xaxes(tickvals=ticks, ticktext=panel.xticks, **at)
    if cols == 1:
        fig.update_xaxes(title_text=spec.xlabel, **({"row": n, "col": 1} if grid else {}))
    fig.update_layout(
        title=spec.title,
        height=spec.height,
        template="plotly_white",
        legend={"orientation": "h", "y": 1.02, "yanchor": "bottom", "x": 1, "xanchor": "right"},
    )
    return fig


def _plotly_trace(t: Trace, *, legend: bool) -> Any:
    import plotly.graph_objects as go

    group = {"name": t.name, "legendgroup": t.name, "showlegend": legend}
    if t.kind == "bars":
        return go.Bar(x=t.x, y=t.y, marker_color=t.color, **group)
    if t.kind == "step":
        return go.Scatter(
            x=t.x,
            y=t.y,
            mode="lines",
            line={"color": t.color, "dash": "dot", "shape": "hv"},
            hoverinfo="skip",
            **group,
        )
    extra: dict[str, Any] = {}
    if t.hover is not None:
        extra["hovertemplate"] = t.hover
    if t.customdata is not None:
        extra["customdata"] = t.customdata
    if t.labels is not None:
        extra.update(text=t.labels, textposition="top left")
    if t.kind == "lines":
        mode = "lines+markers"
        extra["line"] = {"color": t.color}
    else:
        mode = "markers+text" if t.labels is not None else "markers"
        extra["marker"] = {"color": t.color, "size": t.size, "symbol": t.symbol}
    return go.Scatter(x=t.x, y=t.y, mode=mode, **group, **extra)


def _plotly_heat(spec: FigureSpec) -> Any:
    import plotly.graph_objects as go

    h = spec.heat
    assert h is not None
    low, high = h.colors
    fig = go.Figure(
        go.Heatmap(
            x=h.x,
            y=h.rows,
            z=h.z,
            text=[["n/a" if m is None else h.names[int(m)] for m in row] for row in h.z],
            zmin=0,
            zmax=1,
            colorscale=[[0, low], [0.5, low], [0.5, high], [1, high]],
            colorbar={"tickvals": [0.25, 0.75], "ticktext": list(h.names)},
            xgap=1,
            ygap=2,
            hovertemplate=h.hover,
        )
    )
    fig.update_layout(
        title=spec.title,
        xaxis={"title": "round", "dtick": 1},
        height=spec.height,
        template="plotly_white",
    )
    return fig


# -- matplotlib -------------------------------------------------------------------------------


def to_png(spec: FigureSpec, path: Path) -> Path:
    """Draws one figure with matplotlib into ``path`` (written through ``open_output``: never
    through a symbolic link)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    from searchlab.export import open_output

    if spec.heat is not None:
        fig = _png_heat(plt, spec)
    else:
        n, cols = len(spec.panels), max(1, spec.columns)
        rows = math.ceil(n / cols)
        size = (10, 2.2 * n + 0.8) if cols == 1 else (3.6 * cols, 3.0 * rows + 0.8)
        fig, axes = plt.subplots(rows, cols, figsize=size, sharex=cols == 1, squeeze=False)
        flat = list(axes.reshape(-1))
        for ax, panel in zip(flat, spec.panels, strict=False):
            _png_panel(ax, panel)
        for ax in flat[n:]:
            ax.set_visible(False)
        flat[0].legend(fontsize=8, ncol=2)
        if cols == 1:
            axes[-1, 0].set_xlabel(spec.xlabel)
        if spec.integer_x:
            axes[-1, 0].xaxis.get_major_locator().set_params(integer=True)
        fig.suptitle(spec.title)
    fig.tight_layout()
    try:
        with open_output(path, binary=True) as f:
            fig.savefig(f, format="png", dpi=110)
    finally:
        plt.close(fig)
    return path


def _png_panel(ax: Any, panel: Panel) -> None:
    for t in panel.traces:
        y = [math.nan if v is None else v for v in t.y]
        if t.kind == "bars":
            ax.bar(t.x, y, color=t.color, label=t.name)
        elif t.kind == "step":
            ax.step(t.x, y, where="post", c=t.color, ls=":", label=t.name)
        elif t.kind == "lines":  # None in x or y: a gap between polylines
            x = [math.nan if v is None else v for v in t.x]
            ax.plot(x, y, "o-", c=t.color, ms=t.size, label=t.name)
        else:
            if t.symbol == "star":
                ax.plot(t.x, y, "*", c=t.color, ms=t.size, label=t.name)
            else:  # plotly's size is a diameter in px, matplotlib's s an area in points^2
                area = 0.4 * t.size**2
                ax.scatter(t.x, y, s=area, c=t.color, marker=_MARKERS[t.symbol], label=t.name)
        for x, yy, label in zip(t.x, y, t.labels or [], strict=False):
            ax.annotate(f"{label}  ", (x, yy), color=t.color, ha="right", va="center", fontsize=9)
    xs = [x for t in panel.traces for x in t.x if x is not None]
    for m in panel.marks:
        ax.axvline(m.x, color=m.color, ls="--", lw=2)
        right = m.x > 0.6 * max(xs or [0])
        ax.annotate(
            f" {m.label} ",
            (m.x, 0.95),
            xycoords=("data", "axes fraction"),
            color=m.color,
            va="top",
            ha="right" if right else "left",
            fontsize=9,
        )
    if panel.hline is not None:
        ax.axhline(panel.hline[0], c="black", ls=":", label=panel.hline[1])
    if panel.vline is not None:
        ax.axvline(panel.vline[0], c="black", ls=":")
    if panel.xlabel:
        ax.set_xlabel(panel.xlabel, fontsize=9)
    if panel.xticks:
        ax.set_xticks(range(len(panel.xticks)), panel.xticks, fontsize=8, rotation=20)
    if panel.log_y and xs:
        ax.set_yscale("log")
    if panel.xlabel:  # a grid panel: its own title above it
        ax.set_title(panel.title, fontsize=9)
        ax.set_ylabel(panel.ylabel, fontsize=9)
    else:
        ax.set_ylabel(f"{panel.title}\n{panel.ylabel}" if panel.title else panel.ylabel, fontsize=9)
    ax.grid(alpha=0.3)


def _png_heat(plt: Any, spec: FigureSpec) -> Any:
    from matplotlib.colors import ListedColormap

    h = spec.heat
    assert h is not None
    n = len(h.rows)
    fig, ax = plt.subplots(figsize=(10, 0.45 * n + 1.4))
    grid = [[math.nan if m is None else m for m in row] for row in h.z]
    if h.x:
        lo, hi = min(h.x) - 0.5, max(h.x) + 0.5
        ax.imshow(
            grid,
            aspect="auto",
            cmap=ListedColormap(list(h.colors)),
            vmin=0,
            vmax=1,
            interpolation="nearest",
            extent=(lo, hi, n - 0.5, -0.5),
        )
    ax.set_yticks(range(n), h.rows, fontsize=9)
    ax.set_xlabel(spec.xlabel)
    ax.set_xticks(h.x)
    ax.set_title(spec.title)
    return fig
