"""SIGINT is honoured at the engine's next safe point even if a library swallowed it."""

from __future__ import annotations

import os
import signal
import time

import pytest

from searchlab.interrupt import sigint_latch


def test_a_swallowed_sigint_is_raised_at_the_next_check() -> None:
    previous = signal.getsignal(signal.SIGINT)
    with sigint_latch() as check:
        check()  # nothing yet
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.5)  # the handler runs here
        except BaseException:  # what a bare `except:` in a library does
            pass
        with pytest.raises(KeyboardInterrupt):
            check()
    assert signal.getsignal(signal.SIGINT) is previous
