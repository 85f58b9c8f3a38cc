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
attributes and is not touched. :func:`serve` runs optuna-dashboard's server, on loopback by
default. The dashboard has no authentication: another address needs ``allow_remote``, and there
the served app is read-only (:class:`ReadOnly`: GET and HEAD only) unless writes are allowed.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from searchlab.errors import SearchlabError

if TYPE_CHECKING:
    from searchlab.store import Storage, StudyRecord

__all__ = [
    "DashboardError",
    "ReadOnly",
    "access",
    "is_loopback",
    "publish",
    "publish_after_round",
    "round_publisher",
    "serve",
]


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

    from searchlab.figures import figures
    from searchlab.report import note_markdown, view

    v = view(record)
    with record.storage_errors("publish to the dashboard"):
        ids = [
            optuna_dashboard.save_plotly_graph_object(record.study, fig, graph_object_id=gid)
            for gid, fig in figures(v).items()
        ]
        optuna_dashboard.save_note(record.study, note_markdown(v))
    return ids


def publish_after_round(record: StudyRecord) -> str | None:
    """:func:`publish` that never raises; returns the error message, if any."""
    try:
        publish(record)
    except Exception as exc:  # reported to the caller, never raised
        message = " ".join(str(exc).split())
        return f"{type(exc).__name__}: {message}"[:500]
    return None


def round_publisher(record: StudyRecord, r: int) -> None:
    """The engine's end-of-round subscriber (the CLI wires it: ``Engine(after_round=...)``).

    A figure that cannot be drawn must not stop a study: the message goes to the audit
    (``dashboard_publish_failed``) and the study goes on.
    """
    from searchlab.store import AuditKind

    problem = publish_after_round(record)
    if problem is not None:
        record.audit(AuditKind.DASHBOARD_PUBLISH_FAILED, round=r, error=problem)


SAFE_METHODS = frozenset({"GET", "HEAD"})


def is_loopback(host: str) -> bool:
    """Whether ``host`` is ``localhost``, in 127.0.0.0/8 or ``::1`` (brackets allowed).

    Any other name or address, ``0.0.0.0`` and ``""`` (every interface) included, is remote: a
    host name may resolve to anything.
    """
    name = host.strip().lower()
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    if name in ("localhost", "localhost."):
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # ::ffff:127.0.0.1 is loopback too
    return address.is_loopback


def access(
    host: str, port: int, *, allow_remote: bool = False, allow_writes: bool | None = None
) -> tuple[bool, str | None]:
    """Checks where the dashboard may listen and decides whether it may write.

    Args:
        host: The address to listen on.
        port: The port to listen on.
        allow_remote: Whether a host other than loopback is allowed.
        allow_writes: Whether requests other than GET and HEAD are served; None: yes on
            loopback (optuna-dashboard's own behaviour), no elsewhere.

    Returns:
        (writes allowed, a one-line warning to show before serving, or None on loopback).

    Raises:
        DashboardError: The port is out of range, or the host is remote without
            ``allow_remote``.
    """
    if not 1 <= port <= 65535:
        raise DashboardError(f"--port must be between 1 and 65535, got {port}")
    if is_loopback(host):
        return (True if allow_writes is None else allow_writes), None
    if not allow_remote:
        raise DashboardError(
            f"--host {host!r} is not loopback: the dashboard has no authentication, so anyone "
            "who reaches the port can read the studies; add --allow-remote to serve there anyway "
            "(read-only unless --allow-writes)"
        )
    writes = bool(allow_writes)
    what = (
        "read, change and delete the studies (--allow-writes)"
        if writes
        else "read the studies (read-only: --allow-writes would let them change and delete them)"
    )
    return writes, (
        f"warning: the dashboard on {host}:{port} has no authentication: anyone who can reach "
        f"the port can {what}"
    )


class ReadOnly:
    """WSGI middleware: GET and HEAD go to ``app``, every other method is answered 405.

    Nothing else is looked at (no method-override header or parameter: optuna-dashboard's
    server, Bottle, honours none), so no request that could change a study gets through.
    """

    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        self.app = app

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        """Serves one request (the WSGI protocol, PEP 3333)."""
        method = environ.get("REQUEST_METHOD")
        if isinstance(method, str) and method.upper() in SAFE_METHODS:
            return self.app(environ, start_response)
        body = b"405 Method Not Allowed: this dashboard is read-only (GET and HEAD only)\n"
        start_response(
            "405 Method Not Allowed",
            [
                ("Allow", "GET, HEAD"),
                ("Content-Type", "text/plain; charset=utf-8"),
                ("Content-Length", str(len(body))),
            ],
        )
        return [body]


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
    allow_remote: bool = False,
    allow_writes: bool | None = None,
    on_warning: Callable[[str], object] | None = None,
) -> None:
    """Publishes every searchlab study in ``storage`` (unless told not to), then serves.

    Blocks until interrupted. ``on_ready`` (a callable taking the URL) is called just before
    the server starts, after ``on_warning`` (taking one line) when the host is not loopback.
    ``allow_remote`` and ``allow_writes`` are as in :func:`access`; a read-only server answers
    every method other than GET and HEAD with 405 (:class:`ReadOnly`).

    Raises:
        DashboardError: optuna-dashboard missing, a remote host without ``allow_remote``, a port
            out of range, or the port cannot be bound.
    """
    writes, warning = access(host, port, allow_remote=allow_remote, allow_writes=allow_writes)
    _require()
    import optuna_dashboard
    from bottle import run  # optuna-dashboard's own server (it depends on Bottle)

    _check_port(host, port)
    if publish_first:
        for name in storage.names():
            publish(storage.load(name))
    app = optuna_dashboard.wsgi(storage.optuna_storage)
    if not writes:
        app = ReadOnly(app)
    shown = f"[{host}]" if ":" in host else host
    if warning is not None and on_warning is not None:
        on_warning(warning)
    if callable(on_ready):
        on_ready(f"http://{shown}:{port}/dashboard/")
    try:
        # What optuna_dashboard.run_server does, with the app wrapped.
        run(app, host=host, port=port)
    except OSError as exc:
        raise DashboardError(f"cannot serve on {host}:{port}: {exc.strerror or exc}") from None
