"""optuna-dashboard for searchlab studies: publish the searchlab figures and note, and serve.

A searchlab study is an Optuna study (one ``dev:<domain>`` objective per domain), so
optuna-dashboard already shows per-domain dev against the trial number. :func:`publish` adds
what only searchlab knows, stored in the study so that any running dashboard shows it:

- four plotly figures (:func:`searchlab.report.figures`), saved with
  ``optuna_dashboard.save_plotly_graph_object`` under fixed ids (``searchlab-dev-external``,
  ``searchlab-validity``, ``searchlab-modes``, ``searchlab-budget``), overwritten on each call;
- the study note (markdown): each domain's mode and switches with their evidence, the
  recommendation and the latest decisions. ``optuna_dashboard.save_note`` takes the study itself
  (the study-level note, stored in study system attributes ``dashboard:note_*``, which stay
  writable after every trial has finished).

Both live in study *system* attributes (``dashboard:*``); searchlab's own state is in user
attributes and is not touched. :func:`serve` runs optuna-dashboard's server on loopback.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING

from searchlab.errors import SearchlabError

if TYPE_CHECKING:
    from searchlab.store import Storage, StudyRecord

__all__ = ["DashboardError", "publish", "publish_after_round", "serve"]


class DashboardError(SearchlabError):
    """optuna-dashboard is missing, or its server cannot start."""


def _require() -> None:
    try:
        import optuna_dashboard  # noqa: F401
        import plotly  # noqa: F401
    except ImportError as exc:
        raise DashboardError(
            f"the dashboard needs optuna-dashboard and plotly ({exc.name} is missing): "
            "pip install 'searchlab[dashboard]'"
        ) from None


def publish(record: StudyRecord) -> list[str]:
    """Writes the searchlab figures and note into the study for optuna-dashboard.

    Returns:
        The graph object ids written.

    Raises:
        DashboardError: If optuna-dashboard or plotly is not installed.
    """
    _require()
    import optuna_dashboard

    from searchlab.report import figures, note_markdown, view
    from searchlab.store import _storage_errors

    v = view(record)
    with _storage_errors(record._store.url, "publish to the dashboard"):
        ids = [
            optuna_dashboard.save_plotly_graph_object(record.study, fig, graph_object_id=gid)
            for gid, fig in figures(v).items()
        ]
        optuna_dashboard.save_note(record.study, note_markdown(v))
    return ids


def publish_after_round(record: StudyRecord) -> str | None:
    """:func:`publish` for the round loop: never raises; returns the error message, if any.

    A figure that cannot be drawn must not stop a study: the engine records the message.
    """
    try:
        publish(record)
    except Exception as exc:  # reported to the caller, never raised
        message = " ".join(str(exc).split())
        return f"{type(exc).__name__}: {message}"[:500]
    return None


def _check_port(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            raise DashboardError(
                f"cannot listen on {host}:{port}: {exc.strerror or exc} (try another --port)"
            ) from None


def serve(
    storage: Storage,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    publish_first: bool = True,
    on_ready: object = None,
) -> None:
    """Publishes every searchlab study in ``storage`` (unless told not to), then serves.

    Blocks until interrupted. ``on_ready`` (a callable taking the URL) is called just before
    the server starts.

    Raises:
        DashboardError: optuna-dashboard missing, or the port cannot be bound.
    """
    _require()
    import optuna_dashboard

    _check_port(host, port)
    if publish_first:
        for name in storage.names():
            publish(storage.load(name))
    shown = f"[{host}]" if ":" in host else host
    if callable(on_ready):
        on_ready(f"http://{shown}:{port}/dashboard/")
    try:
        optuna_dashboard.run_server(storage.optuna_storage, host=host, port=port)
    except OSError as exc:
        raise DashboardError(f"cannot serve on {host}:{port}: {exc.strerror or exc}") from None
