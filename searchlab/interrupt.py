"""A Ctrl-C that a library cannot swallow.

SIGINT raises ``KeyboardInterrupt`` wherever the main thread happens to be. A library that runs
a bare ``except:`` at that moment (some do, around optional imports) swallows it, and the study
runs on as if the user had not asked it to stop (seen as a rare failure of
``tests/test_resume.py``). :func:`sigint_latch` also remembers the signal, and the engine checks
the latch at its safe points (before a phase, a candidate or a submission), so an interrupt is
honoured there at the latest.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def sigint_latch() -> Iterator[Callable[[], None]]:
    """Remembers SIGINT while the block runs; yields ``check()``, which raises if it came.

    Outside the main thread (where Python cannot install signal handlers) ``check()`` does
    nothing and SIGINT behaves as usual.
    """
    if threading.current_thread() is not threading.main_thread():
        yield lambda: None
        return
    seen = threading.Event()
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum: int, frame: Any) -> None:
        seen.set()
        raise KeyboardInterrupt

    def check() -> None:
        if seen.is_set():
            raise KeyboardInterrupt

    signal.signal(signal.SIGINT, handler)
    try:
        yield check
    finally:
        signal.signal(signal.SIGINT, previous)
