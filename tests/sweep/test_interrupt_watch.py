"""Ctrl-C during `rekd sweep`: Ray Tune swallows it; we must still notice."""

import signal

import pytest

from rekd_ray.sweep.runner import _tune_interrupt_watch


def _tune_like_fit(interrupt: bool) -> None:
    """What Tune does to SIGINT during a fit: replace the handler, and on the
    first Ctrl-C put the one it found back and return normally."""
    original = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, lambda signum, frame: None)
    if interrupt:
        signal.signal(signal.SIGINT, original)


@pytest.mark.parametrize("interrupt", [True, False])
def test_watch_tells_an_interrupted_fit(interrupt):
    before = signal.getsignal(signal.SIGINT)
    with _tune_interrupt_watch() as interrupted:
        _tune_like_fit(interrupt)
    assert interrupted.is_set() == interrupt
    assert signal.getsignal(signal.SIGINT) is before  # handler restored


def test_without_tune_handler_ctrl_c_raises(monkeypatch):
    monkeypatch.setenv("TUNE_DISABLE_SIGINT_HANDLER", "1")
    with pytest.raises(KeyboardInterrupt):
        with _tune_interrupt_watch() as interrupted:
            signal.raise_signal(signal.SIGINT)
    assert not interrupted.is_set()
