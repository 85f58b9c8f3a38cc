"""A Ctrl-C that a library cannot swallow.

SIGINT raises ``KeyboardInterrupt`` wherever the main thread happens to be. A library that runs
a bare ``except:`` at that moment (some do, around optional imports) swallows it, and the study
runs on as if the user had not asked it to stop (seen as a rare failure of
``tests/test_resume.py``). :func:`sigint_latch` also remembers the signal, and the engine checks
the latch at its safe points (before a phase, a candidate or a submission), so an interrupt is
honoured there at the latest.

SIGTERM (what ``kill``, systemd and batch schedulers send) is handled like SIGINT: the same
``KeyboardInterrupt``, the same cleanup, and the CLI exits 143 instead of 130
(:func:`install_signal_handlers`, :func:`received`).

Repeated signals: the first one raises; a further one within ``grace_s`` only sets the latch,
so a second Ctrl-C cannot cut short the clean-up the first one started (storing that a
candidate was interrupted, proposing it again, its audit entry). Inside a critical section
(:func:`shielded`, :meth:`SignalLatch.deferred`: several writes that belong together, or one
database call) no signal raises at all; the section ends first and the signal raises right
after it.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

# The signals this module turned into KeyboardInterrupt, in order: the CLI's exit status says
# which one stopped the process (130 for SIGINT, 143 for SIGTERM).
_received: list[int] = []

# How long after a signal that raised a further one is only latched (seconds).
GRACE_S = 2.0

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class _State:
    """Process-wide, main thread only: what the handlers and shielded sections share."""

    depth = 0  # nesting of shielded() sections
    pending = False  # a signal came inside a shielded section and has not raised yet
    raised_at: float | None = None  # when a signal last raised KeyboardInterrupt
    grace_s = GRACE_S
    latch: SignalLatch | None = None  # the latch whose handler is installed


def received() -> int | None:
    """The first signal (SIGINT or SIGTERM) that a searchlab handler saw, or None."""
    return _received[0] if _received else None


def _raise_unless_cleaning_up() -> None:
    """Raises KeyboardInterrupt, unless one was raised within the grace period: its clean-up
    (storing that a candidate was interrupted, say) must not be cut short by a second Ctrl-C."""
    now = time.monotonic()
    if _State.raised_at is not None and now - _State.raised_at <= _State.grace_s:
        return
    _State.raised_at = now
    raise KeyboardInterrupt


@contextmanager
def shielded() -> Iterator[None]:
    """A critical section: a signal inside it raises only once the section is done.

    The storage wraps each database call in one (:func:`searchlab.store._retrying`), so an
    interrupt never lands inside a transaction: an interrupted SQLite transaction keeps its
    lock while the traceback holds the connection, and the clean-up that follows (the lease
    released, the candidate re-proposed) would wait for the process itself. Outside the main
    thread it does nothing (signals are delivered to the main thread only).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _State.depth += 1
    try:
        yield
    finally:
        _State.depth -= 1
    if _State.depth == 0 and _State.pending:
        _State.pending = False
        _raise_unless_cleaning_up()


class SignalLatch:
    """A handler for SIGINT and SIGTERM that remembers them.

    Call it to raise ``KeyboardInterrupt`` if a signal came; ``deferred()`` is a critical
    section (:func:`shielded`).
    """

    def __init__(self, grace_s: float = GRACE_S) -> None:
        self.grace_s = grace_s
        self.seen = threading.Event()

    def __call__(self) -> None:
        """Raises ``KeyboardInterrupt`` if SIGINT or SIGTERM came while the latch was set."""
        if self.seen.is_set():
            raise KeyboardInterrupt

    def handler(self, signum: int, frame: Any) -> None:
        _received.append(signum)
        self.seen.set()
        if _State.depth > 0:
            _State.pending = True  # raised when the critical section ends
            return
        _raise_unless_cleaning_up()

    def deferred(self) -> Any:
        """A critical section: several writes that belong together (see :func:`shielded`)."""
        return shielded()


@contextmanager
def _installed(latch: SignalLatch) -> Iterator[SignalLatch]:
    previous = {s: signal.getsignal(s) for s in _SIGNALS}
    outer, outer_grace = _State.latch, _State.grace_s
    for s in _SIGNALS:
        signal.signal(s, latch.handler)
    _State.latch, _State.grace_s = latch, latch.grace_s
    try:
        yield latch
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        _State.latch, _State.grace_s = outer, outer_grace


def install_signal_handlers() -> None:
    """Makes SIGINT and SIGTERM raise ``KeyboardInterrupt`` through a latch, for the process.

    The default action of SIGTERM ends the process at once, with no ``finally`` block run (the
    study lease would stay held until it expires) and exit status -15; this way it unwinds like
    Ctrl-C, and :func:`received` tells the CLI to exit 143. Both then respect shielded sections
    and the grace period of a clean-up. Main thread only; a no-op elsewhere.
    """
    if threading.current_thread() is threading.main_thread():
        latch = SignalLatch()
        for s in _SIGNALS:
            signal.signal(s, latch.handler)
        _State.latch, _State.grace_s = latch, latch.grace_s


@contextmanager
def sigint_latch(grace_s: float = GRACE_S) -> Iterator[SignalLatch]:
    """Remembers SIGINT and SIGTERM while the block runs; yields the latch.

    Calling the latch raises ``KeyboardInterrupt`` if a signal came. Outside the main thread
    (where Python cannot install signal handlers) the latch never raises, ``deferred()`` does
    nothing, and signals behave as usual.
    """
    latch = SignalLatch(grace_s)
    if threading.current_thread() is not threading.main_thread():
        yield latch  # no handler is installed, so nothing is ever seen
        return
    with _installed(latch):
        yield latch
