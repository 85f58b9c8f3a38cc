"""SIGINT and SIGTERM are honoured at the engine's next safe point even if a library swallowed
them; a second signal cannot cut short the clean-up of the first or a critical section."""

from __future__ import annotations

import os
import signal
import time

import pytest

from searchlab import interrupt
from searchlab.interrupt import sigint_latch


@pytest.fixture(autouse=True)
def _fresh_state() -> None:
    # Each test starts as a fresh process would: no signal raised a moment ago.
    interrupt._State.raised_at = None
    interrupt._State.pending = False


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


def test_the_process_handlers_turn_sigterm_into_keyboard_interrupt_outside_shields() -> None:
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    outer = interrupt._State.latch
    try:
        interrupt.install_signal_handlers()
        interrupt._State.raised_at = None
        done = []
        with pytest.raises(KeyboardInterrupt):
            with interrupt.shielded():  # one database call: never interrupted inside it
                _signal_and_wait(signal.SIGTERM)
                done.append("committed")
            done.append("not reached")
        assert done == ["committed"]
        assert signal.SIGTERM in interrupt._received
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        interrupt._State.latch = outer
