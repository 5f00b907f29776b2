"""Fault injection for the reliability tests (a test hook, not a feature).

Set ``REKD_FAULTS`` to a JSON object before ``rekd train`` (or before
:func:`rekd_ray.orchestration.runner.run_training` in a test); the driver
reads it once and hands it to every Train worker. Fields (all optional):

* ``nan_at_step``: the loss of that global step becomes NaN (every rank).
* ``kill_rank`` + ``kill_at_step``: that rank's process kills itself with
  SIGKILL at that global step, as an out-of-memory kill would.
* ``stall_after_epoch`` (+ ``stall_seconds``, default 60): rank 0 sleeps
  after reporting that many epochs, so a test can act at a known point.
* ``interrupt_after_epoch``: the driver sends itself SIGINT (Ctrl-C) once
  that many epochs are done.
* ``once_file``: a path; a kill or interrupt fires only while the file does
  not exist, and creates it first, so a restarted worker does not fire again.

Example: ``REKD_FAULTS='{"kill_rank": 1, "kill_at_step": 6, "once_file":
"/tmp/k"}' rekd train smoke.yaml``. Runs with faults log a warning.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

__all__ = ["ENV_VAR", "FaultPlan"]

logger = logging.getLogger(__name__)

ENV_VAR = "REKD_FAULTS"


@dataclass(frozen=True)
class FaultPlan:
    nan_at_step: int | None = None
    kill_rank: int | None = None
    kill_at_step: int | None = None
    stall_after_epoch: int | None = None
    stall_seconds: float = 60.0
    interrupt_after_epoch: int | None = None
    once_file: str | None = None

    @classmethod
    def from_env(cls) -> FaultPlan | None:
        """The plan in ``$REKD_FAULTS``, or None when unset.

        Raises:
            ValueError: not a JSON object of the fields above.
        """
        raw = os.environ.get(ENV_VAR)
        if not raw:
            return None
        try:
            values = json.loads(raw)
            plan = cls(**values)
        except (json.JSONDecodeError, TypeError) as error:
            names = [field.name for field in fields(cls)]
            raise ValueError(
                f"{ENV_VAR} must be a JSON object with fields {names}; {error}"
            ) from None
        logger.warning("fault injection is on: %s", raw)
        return plan

    @classmethod
    def from_dict(cls, values: dict | None) -> FaultPlan | None:
        return None if values is None else cls(**values)

    def to_dict(self) -> dict:
        return asdict(self)

    def _fire_once(self) -> bool:
        if self.once_file is None:
            return True
        marker = Path(self.once_file)
        if marker.exists():
            return False
        marker.touch()
        return True

    def nan_now(self, global_step: int) -> bool:
        return self.nan_at_step is not None and global_step == self.nan_at_step

    def maybe_kill(self, rank: int, global_step: int) -> None:
        if self.kill_at_step != global_step or self.kill_rank != rank:
            return
        if self._fire_once():
            logger.warning(
                "fault injection: killing rank %d at step %d", rank, global_step
            )
            os.kill(os.getpid(), signal.SIGKILL)

    def maybe_stall(self, rank: int, epochs_done: int, until=None) -> None:
        """Rank 0 sleeps after ``stall_after_epoch`` epochs, or until
        ``until()`` is true (polled every 0.1 s)."""
        if rank != 0 or self.stall_after_epoch != epochs_done:
            return
        logger.warning("fault injection: stalling %.0f s", self.stall_seconds)
        deadline = time.monotonic() + self.stall_seconds
        while time.monotonic() < deadline and not (until and until()):
            time.sleep(0.1)

    def interrupt_due(self, epochs_done: int) -> bool:
        due = self.interrupt_after_epoch
        return due is not None and epochs_done >= due and self._fire_once()
