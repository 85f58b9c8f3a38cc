"""SIGINT and SIGTERM are honoured at the engine's next safe point even if a library swallowed
them; a second signal cannot cut short the clean-up of the first or a critical section."""

from __future__ import annotations

import os
import signal
import time

import pytest

from searchlab import interrupt
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


def _signal_and_wait(sig: int) -> None:
    os.kill(os.getpid(), sig)
    time.sleep(0.2)  # the handler runs here


def test_sigterm_is_latched_like_sigint() -> None:
    previous = signal.getsignal(signal.SIGTERM)
    with sigint_latch() as check:
        with pytest.raises(KeyboardInterrupt):
            _signal_and_wait(signal.SIGTERM)
        with pytest.raises(KeyboardInterrupt):
            check()
    assert signal.getsignal(signal.SIGTERM) is previous
    assert signal.SIGTERM in interrupt._received


def test_a_second_signal_soon_after_the_first_does_not_cut_the_clean_up_short() -> None:
    cleaned = []
    with sigint_latch(grace_s=2.0) as latch:
        try:
            _signal_and_wait(signal.SIGINT)
        except KeyboardInterrupt:
            _signal_and_wait(signal.SIGINT)  # 200 ms later: latched, not raised
            cleaned.append("done")
        with pytest.raises(KeyboardInterrupt):
            latch()
    assert cleaned == ["done"]


def test_a_signal_inside_a_critical_section_is_raised_at_its_end() -> None:
    steps = []
    with sigint_latch() as latch, pytest.raises(KeyboardInterrupt), latch.deferred():
        steps.append("fail")
        _signal_and_wait(signal.SIGINT)
        steps.append("enqueue")
        _signal_and_wait(signal.SIGINT)
        steps.append("audit")
    assert steps == ["fail", "enqueue", "audit"]
    with sigint_latch() as latch, pytest.raises(RuntimeError), latch.deferred():
        _signal_and_wait(signal.SIGINT)
        raise RuntimeError("an error inside the section is not replaced by the interrupt")


def test_install_sigterm_turns_it_into_keyboard_interrupt() -> None:
    previous = signal.getsignal(signal.SIGTERM)
    try:
        interrupt.install_sigterm()
        with pytest.raises(KeyboardInterrupt):
            _signal_and_wait(signal.SIGTERM)
        assert signal.SIGTERM in interrupt._received
    finally:
        signal.signal(signal.SIGTERM, previous)
