"""A Ctrl-C that a library cannot swallow.

SIGINT raises ``KeyboardInterrupt`` wherever the main thread happens to be. A library that runs
a bare ``except:`` at that moment (some do, around optional imports) swallows it, and the study
runs on as if the user had not asked it to stop (seen as a rare failure of
``tests/test_resume.py``). :func:`sigint_latch` also remembers the signal, and the engine checks
the latch at its safe points (before a phase, a candidate or a submission), so an interrupt is
honoured there at the latest.

SIGTERM (what ``kill``, systemd and batch schedulers send) is handled like SIGINT: the same
``KeyboardInterrupt``, the same cleanup, and the CLI exits 143 instead of 130
(:func:`install_sigterm`, :func:`received`).

Repeated signals: the first one raises; a further one within ``grace_s`` only sets the latch,
so a second Ctrl-C cannot cut short the clean-up the first one started (storing that a
candidate was interrupted, proposing it again, its audit entry). Inside
:meth:`SignalLatch.deferred` (a critical section: several writes that belong together) no
signal raises at all; the section ends first and the latch raises right after it.
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


def received() -> int | None:
    """The first signal (SIGINT or SIGTERM) that a searchlab handler saw, or None."""
    return _received[0] if _received else None


def _terminate(signum: int, frame: Any) -> None:
    _received.append(signum)
    raise KeyboardInterrupt


def install_sigterm() -> None:
    """Makes SIGTERM raise ``KeyboardInterrupt`` like SIGINT (main thread only).

    The default action of SIGTERM ends the process at once, with no ``finally`` block run (the
    study lease would stay held until it expires) and exit status -15; this way it unwinds like
    Ctrl-C, and :func:`received` tells the CLI to exit 143.
    """
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminate)


class SignalLatch:
    """What :func:`sigint_latch` yields: call it to raise if a signal came; ``deferred()``
    delays signals over a critical section."""

    def __init__(self, grace_s: float = GRACE_S) -> None:
        self.grace_s = grace_s
        self.seen = threading.Event()
        self._depth = 0
        self._raised_at: float | None = None

    def __call__(self) -> None:
        """Raises ``KeyboardInterrupt`` if SIGINT or SIGTERM came while the latch was set."""
        if self.seen.is_set():
            raise KeyboardInterrupt

    def handler(self, signum: int, frame: Any) -> None:
        _received.append(signum)
        self.seen.set()
        now = time.monotonic()
        if self._depth > 0:
            return  # raised when the critical section ends
        if self._raised_at is not None and now - self._raised_at <= self.grace_s:
            return  # the clean-up of the last one is under way: let it finish
        self._raised_at = now
        raise KeyboardInterrupt

    @contextmanager
    def deferred(self) -> Iterator[None]:
        """A critical section: a signal inside it raises only once the section is done."""
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
        if self._depth == 0:
            self()


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
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in previous:
        signal.signal(s, latch.handler)
    try:
        yield latch
    finally:
        for s, h in previous.items():
            signal.signal(s, h)

