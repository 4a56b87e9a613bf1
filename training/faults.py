"""What can go wrong in a training run, and how the loop hears of it between steps.

`GracefulStop`: SIGINT/SIGTERM set a flag that the loop reads as its abort_fn, and a dead loader
worker is reported between steps (`Batches` yields None), never in the middle of one; the loader
workers themselves ignore the stop signals (`ignore_stop_signals`). `check_nonfinite_streak` stops
a run whose steps keep being skipped; `DriftWatch` says when a run is drifting into noise.
"""
from __future__ import annotations

import logging
import signal
from typing import Optional

import numpy as np
from torch.utils.data import DataLoader

logger = logging.getLogger("mvcgan.train")

MAX_NONFINITE_STEPS = 10
# With an fp16 loss scaler an overflow is routine (the scaler halves its scale and skips the
# step); this many in a row means the gradients are NaN for good, not too large.
MAX_OVERFLOW_STEPS = 30


class LoaderFailed(RuntimeError):
    """A data loader worker died (killed, out of memory): reported between steps, never in the middle of one."""


def ignore_stop_signals(worker_id: int) -> None:
    """DataLoader worker_init_fn: the workers ignore SIGINT and SIGTERM. A terminal's Ctrl-C and a cluster's
    SIGTERM reach the whole process group; the training process alone decides to save and stop, and then
    shuts its workers down. (torch's own SIGTERM handler kills a worker that anyone but its parent signals,
    and the training process then failed in its loader without a checkpoint.)"""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)


class GracefulStop:
    """SIGINT/SIGTERM set a flag; the loop saves a checkpoint and exits at the next step. `announce`: this
    process logs the stop (rank 0; the others stop silently with it).

    It also holds back torch's SIGCHLD handler, which raises a loader worker's death as an exception in
    whatever the main process is doing, e.g. half-way through an optimiser step: `defer_worker_failures`
    replaces it, and `check_workers` runs it between steps, when the state can still be saved.
    """

    def __init__(self, announce: bool = True):
        self.requested = False
        self.announce = announce
        self._previous = {}
        self._worker_check = None   # torch's SIGCHLD handler, run by check_workers
        self._child_exited = False

    def install(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass

    def _handle(self, signum, frame):
        # A repeated signal must not abort the save: the launcher forwards the signal that a
        # terminal or a cluster may also have sent to the whole process group. SIGKILL aborts.
        if self.requested:
            if self.announce:
                logger.warning("received signal %d again: still stopping after this step (SIGKILL aborts)", signum)
            return
        self.requested = True
        if self.announce:
            logger.warning("received signal %d: saving a checkpoint and stopping after this step", signum)

    def defer_worker_failures(self) -> None:
        """Call after a loader's workers started (torch then has its SIGCHLD handler in place)."""
        current = signal.getsignal(signal.SIGCHLD)
        if current == self._note_child_exit or not callable(current):
            return
        try:
            signal.signal(signal.SIGCHLD, self._note_child_exit)
        except ValueError:  # not the main thread: torch's handler stays
            return
        self._previous.setdefault(signal.SIGCHLD, current)
        self._worker_check = current

    def _note_child_exit(self, signum, frame):
        self._child_exited = True

    def check_workers(self) -> None:
        """Raise torch's RuntimeError if a loader worker died since the last check (between steps only)."""
        if self._child_exited and self._worker_check is not None:
            self._child_exited = False
            self._worker_check(signal.SIGCHLD, None)

    def restore(self):
        for sig, handler in self._previous.items():
            # After a stop the process is on its way out: a repeated signal (another one sent
            # to the process group) must not kill it while it tears down.
            stopping = self.requested and sig != signal.SIGCHLD
            signal.signal(sig, signal.SIG_IGN if stopping else handler)
        self._previous, self._worker_check = {}, None


class Batches:
    """The batches of a loader's epoch, from its iterator. A worker that died yields None, once, with
    `failure` set to torch's message, instead of raising: so that every rank can agree to save and stop."""

    def __init__(self, loader: DataLoader, stop: GracefulStop):
        self.iterator = iter(loader)
        self.stop = stop
        self.failure: Optional[str] = None
        stop.defer_worker_failures()

    def __iter__(self):
        return self

    def __next__(self) -> Optional[tuple]:
        """(images, labels) of the next batch (labels: 0s, or the procedural data's poses), or None."""
        if self.failure is not None:
            raise StopIteration
        try:
            self.stop.check_workers()
            real, labels = next(self.iterator)
        except RuntimeError as error:
            if "DataLoader worker (pid" not in str(error):  # torch's words for a worker that died
                raise
            self.failure = str(error).strip().splitlines()[0].rstrip(". ")
            return None
        return real, labels


def check_nonfinite_streak(streak: int, step: int, loss_scaled: bool, last_good_checkpoint: str) -> None:
    """Stop the run (FloatingPointError) after too many skipped steps in a row: `streak` of them up to
    `step`; `loss_scaled`: an fp16 loss scaler, whose overflows are routine, is in use."""
    limit = MAX_OVERFLOW_STEPS if loss_scaled else MAX_NONFINITE_STEPS
    if streak >= limit:
        raise FloatingPointError(
            f"{limit} consecutive steps had non-finite losses or gradients (last at "
            f"step {step}); stopping. Last good checkpoint: "
            f"{last_good_checkpoint}; try a lower learning rate "
            f"or --precision bf16/fp32.")


class DriftWatch:
    """Says when a run is drifting into noise, from its generator gradient norms: a healthy run of the
    embedded recipes keeps the median of the last `window` steps' g_grad_norm below `threshold` (the
    curriculum's drift_g_grad_norm, measured on healthy and drifted runs: docs/EXPERIMENTS.md), a
    drifting one climbs past it hundreds of steps before its grids are noise. None: no watch."""

    def __init__(self, threshold: Optional[float], window: int = 100):
        self.threshold, self.window = threshold, window
        self.norms: list = []
        self.drifting_since: Optional[int] = None

    def update(self, step: int, g_grad_norm: float) -> bool:
        """Record a step's norm; True at the step where the run is first seen drifting."""
        if self.threshold is None or self.drifting_since is not None:
            return False
        self.norms = (self.norms + [g_grad_norm])[-self.window:]
        if len(self.norms) == self.window and float(np.median(self.norms)) > self.threshold:
            self.drifting_since = step
            return True
        return False

    def warn(self, step: int) -> None:
        logger.warning("step %d: this run looks like it is drifting into noise: the median g_grad_norm of the "
                       "last %d steps is %.0f, above drift_g_grad_norm=%g, which healthy runs of this recipe stay "
                       "below; look at the latest sample grids, and start again with another --seed if they are "
                       "noise", step, self.window, float(np.median(self.norms)), self.threshold)
