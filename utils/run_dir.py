"""A run directory belongs to one run at a time: its lock, and what a new run finds there.

`RunDirLock(path)` is an exclusive `fcntl.flock` on `path/.lock`, held for as long as a run
writes the directory: by main.py's launcher before any process starts (and so for the spawned
ones), or by a `train.Trainer` started from Python. The kernel drops it when its holder dies
(SIGKILL, a crash, a node reboot), so a crashed run never leaves it stuck; a second run meanwhile
gets `RunDirBusy` (naming the holder's PID). Temp files of killed checkpoint writes are removed only
under it (`utils.checkpoint.remove_stale_temp_files`).

`earlier_run(path)` says whether the directory holds another run's files, which main.py refuses to
train over unless told (resume it, or `--start_over`, which `move_aside` carries out: the old files
go to `previous_<time>/` inside the directory).
"""
from __future__ import annotations

import errno
import fcntl
import os
import time
from pathlib import Path
from typing import Optional

LOCK_NAME = ".lock"
PREVIOUS_PREFIX = "previous_"
# The files that make a folder another run's directory (train.Trainer writes them).
RUN_FILE_GLOBS = ("checkpoint.pth", "checkpoint_*.pth", "metrics.jsonl", "options.json")


class RunDirBusy(ValueError):
    """Another live run holds the directory's lock."""


_HELD_FDS = set()  # the lock descriptors this process holds


def _close_in_child() -> None:
    """A forked child (a data loader worker) closes its copies of the lock descriptors: otherwise the lock
    would outlive its holder for as long as such a child lives."""
    for fd in list(_HELD_FDS):
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD_FDS.clear()


os.register_at_fork(after_in_child=_close_in_child)


class RunDirLock:
    """An exclusive lock on a run directory (created if missing), released by `release()`, at the end of a
    `with` block, or by the kernel when the process ends."""

    def __init__(self, directory):
        self.directory = Path(directory)
        self._fd: Optional[int] = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> "RunDirLock":
        """Take the lock without waiting: RunDirBusy if another run holds it, OSError if the directory or
        its lock file cannot be created (read-only, no space, under /proc ...)."""
        if self.held:
            return self
        self.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.directory / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip()
            os.close(fd)
            if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise RunDirBusy(f"another run ({holder or 'a process'}) is writing to {self.directory}; wait for it "
                             f"to end, or choose another --output_dir") from None
        # Who holds it, for the message a second run prints (the lock itself is the flock, not this text).
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {os.uname().nodename}\n".encode(), 0)
        self._fd = fd
        _HELD_FDS.add(fd)
        return self

    def release(self) -> None:
        if self._fd is not None:
            _HELD_FDS.discard(self._fd)
            os.close(self._fd)  # closing the only descriptor drops the flock
            self._fd = None

    def __enter__(self) -> "RunDirLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def earlier_run(directory) -> Optional[str]:
    """What of another run `directory` holds ("checkpoint.pth, metrics.jsonl"), or None (none of its files)."""
    directory = Path(directory)
    if not directory.is_dir():
        return None
    found = sorted({path.name for pattern in RUN_FILE_GLOBS for path in directory.glob(pattern) if path.is_file()})
    if not found:
        return None
    return ", ".join(found[:4]) + (f" and {len(found) - 4} more" if len(found) > 4 else "")


def move_aside(directory) -> Path:
    """Move everything in `directory` except its lock and earlier `previous_*` folders into a new
    `previous_<time>` folder inside it; returns that folder. Renames only: fast, nothing copied."""
    directory = Path(directory)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = directory / f"{PREVIOUS_PREFIX}{stamp}"
    suffix = 1
    while target.exists():
        suffix += 1
        target = directory / f"{PREVIOUS_PREFIX}{stamp}-{suffix}"
    target.mkdir()
    for entry in sorted(directory.iterdir()):
        if entry == target or entry.name == LOCK_NAME or entry.name.startswith(PREVIOUS_PREFIX):
            continue
        entry.rename(target / entry.name)
    return target
