"""Running ``TorchTrainer.fit()`` under the driver's control.

The fit runs in a thread; the calling thread polls the run's ProgressBoard
every half second, feeds the caller's ``on_progress`` with it and handles:

* Ctrl-C / SIGTERM (a ``KeyboardInterrupt`` in the calling thread, also one
  raised by ``on_progress``, as a stopped Tune trial does): the board's
  ``stop`` flag is set, every worker sees it at its next step (workers agree
  on it with a collective, so they stop at the same step) and returns; the
  checkpoint of the last finished epoch is what ``--resume`` continues from.
  The driver waits up to ``STOP_TIMEOUT_S`` (a second Ctrl-C stops waiting),
  then re-raises.
* an error a worker posted as ``fatal`` (a non-finite loss, bad data): Ray
  may already have restarted the group, whose workers return at once; the
  fit ends and :class:`WorkerFatalError` carries the worker's message.

NOTE: the stop is cooperative. A worker hung outside a training step (a
stuck collective) does not see it; the driver then gives up after
``STOP_TIMEOUT_S`` and the workers die with the driver's Ray session (a
cluster's workers die with their owner, the driver process).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable

import ray

from rekd_ray.training.faults import FaultPlan

__all__ = ["STOP_TIMEOUT_S", "WorkerFatalError", "fit_under_control"]

logger = logging.getLogger(__name__)

POLL_SECONDS = 0.5
STOP_TIMEOUT_S = 120.0


class WorkerFatalError(RuntimeError):
    """A worker failed with an error that a restart would only repeat."""


def _interrupt_self() -> None:
    # Test hook: the same path as a user's Ctrl-C (SIGINT to this process).
    if threading.current_thread() is threading.main_thread():
        os.kill(os.getpid(), signal.SIGINT)
    else:
        raise KeyboardInterrupt("fault injection: interrupt")


def _plain_sigint_handler():
    """Make Ctrl-C raise KeyboardInterrupt here; return the handler replaced.

    A ``TorchTrainer.fit()`` once run on the main thread of this process (a
    benchmark, a notebook cell) leaves Ray's own SIGINT handler installed,
    which aborts *that* trainer's controller or calls ``sys.exit(0)``: the
    interrupt would never reach the loop below. Returns None off the main
    thread, where signal handlers cannot be set (a Tune trial).
    """
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGINT, signal.default_int_handler)


def _stop_workers(thread: threading.Thread, board) -> None:
    logger.warning(
        "interrupted: workers stop at their next step and keep the last "
        "epoch's checkpoint (waiting up to %.0f s; Ctrl-C again to exit now)",
        STOP_TIMEOUT_S,
    )
    try:
        board.post.remote({"stop": 1.0})
    except ray.exceptions.RayActorError:
        return
    thread.join(timeout=STOP_TIMEOUT_S)
    if thread.is_alive():
        logger.warning("workers did not stop in time; leaving them to Ray")


def fit_under_control(
    trainer,
    board,
    on_progress: Callable[[dict[str, float]], None] | None = None,
    faults: FaultPlan | None = None,
):
    """``trainer.fit()`` with progress, graceful interrupts and fatal errors.

    Raises:
        KeyboardInterrupt: the run was interrupted (after the workers stopped).
        WorkerFatalError: a worker posted a deterministic error.
        Exception: whatever ``fit()`` raised.
    """
    outcome: dict = {}

    def fit() -> None:
        try:
            outcome["result"] = trainer.fit()
        except BaseException as error:  # re-raised in the caller's thread
            outcome["error"] = error

    thread = threading.Thread(target=fit, daemon=True)
    previous_handler = _plain_sigint_handler()
    thread.start()
    try:
        while thread.is_alive():
            thread.join(timeout=POLL_SECONDS)
            progress = ray.get(board.read.remote())
            done = int(progress.get("epoch_done", 0))
            if faults is not None and faults.interrupt_due(done):
                _interrupt_self()
            if on_progress is not None:
                on_progress(progress)
    except KeyboardInterrupt:
        _stop_workers(thread, board)
        raise
    finally:
        if previous_handler is not None:
            signal.signal(signal.SIGINT, previous_handler)
    fatal = ray.get(board.read.remote()).get("fatal")
    if fatal:
        raise WorkerFatalError(fatal)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]
