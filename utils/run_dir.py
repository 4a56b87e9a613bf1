"""A run directory belongs to one run at a time: its lock, and what a new run finds there.

`RunDirLock(path)` is an exclusive `fcntl.flock` on `path/.lock`, held for as long as a run
writes the directory: by main.py's launcher before any process starts (and so for the spawned
ones), or by a `train.Trainer` started from Python. The kernel drops it when its holder dies
(SIGKILL, a crash, a node reboot), so a crashed run never leaves it stuck; a second run meanwhile
gets `RunDirBusy` (naming the holder's PID). Temp files of killed checkpoint writes are removed only
under it (`utils.checkpoint.remove_stale_temp_files`).

`earlier_run(path)` says whether the directory holds another run's files, which main.py refuses to
train over unless told (resume it, or `--start_over`, which `move_aside` carries out: the old files
go to `previous_<time>/` inside the directory). `make_room` is that rule for any script that writes
a folder of results (main.py, invert.py: refuse, or with --start_over move the earlier files aside),
and `check_output_path` the check before any work that an output folder or file can be written there.
`OutputFiles` is the rule for the scripts that write named result files into a folder that may hold others
(render_multiview_image.py, extract_shapes.py, the viewer's save buttons): a file already there that the run
did not write itself is not replaced unless the run was told to (`--overwrite`); other names are left alone.
`rewind_metrics(path, step)`: a resumed run's metrics.jsonl cut back to the step it resumes from, so that
the rows of a killed run past its last checkpoint do not stand beside the steps trained again.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Optional

from utils.cli import CLIError

LOCK_NAME = ".lock"
PREVIOUS_PREFIX = "previous_"
# The files that make a folder another run's directory (train.Trainer writes them).
RUN_FILE_GLOBS = ("checkpoint.pth", "checkpoint_*.pth", "metrics.jsonl", "options.json")


class RunDirBusy(ValueError):
    """Another live run holds the directory's lock."""


class EarlierOutput(ValueError):
    """The output folder holds files of an earlier run, and nothing said to replace them."""


class ExistingFile(CLIError, ValueError):
    """An output file is already there, this run did not write it, and nothing said to replace it (a usage
    error of the scripts: `utils.cli.run_cli`)."""


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


def check_output_path(path, flag: str = "--output_dir", is_file: bool = False) -> None:
    """ValueError naming `flag` unless `path` is a folder that exists or can be created (with `is_file`: a
    file that can be written, not a folder): nothing of it or above it is a file in the way, and the
    nearest existing folder is writable. Writes nothing."""
    absolute = Path(path).expanduser().absolute()
    if is_file and absolute.is_dir():
        raise ValueError(f"{flag} {path} is a folder; name the file to write")
    existing = absolute.parent if is_file else absolute
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"{flag} {path}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {path}: no permission to write in {existing}")


class OutputFiles:
    """The named files a run writes into `directory`, a folder that may hold other files (the user's, other
    runs'): `check(names)` refuses, before any work, when one of them is already there; `path(name)` checks one
    name again just before it is written and returns where to write it. A file this run wrote itself may be
    written again (seed 0 twice on the command line); with `overwrite` nothing is refused. A refusal is
    ExistingFile: one line naming `folder_flag` and the folder, the first file already there and `flag`."""

    def __init__(self, directory, overwrite: bool = False, flag: str = "--overwrite",
                 folder_flag: str = "--output_dir"):
        self.directory = Path(directory)
        self.overwrite, self.flag, self.folder_flag = overwrite, flag, folder_flag
        self.written = set()  # the names this run has written (or is writing)
        self._lock = threading.Lock()  # the viewer saves from several threads

    def existing(self, names) -> list:
        """Those of `names` (in order, each once) already in the folder that this run did not write: a file,
        a folder or a link, even a broken one (writing through it would land elsewhere)."""
        names = list(dict.fromkeys(str(name) for name in names))
        return [name for name in names if name not in self.written and os.path.lexists(self.directory / name)]

    def check(self, names) -> None:
        """ExistingFile unless `overwrite` or none of `names` is already there (the run's own files aside)."""
        found = [] if self.overwrite else self.existing(names)
        if found:
            more = f" (and {len(found) - 1} more of the files it would write)" if len(found) > 1 else ""
            raise ExistingFile(f"{self.folder_flag} {self.directory} already holds {found[0]}{more}, which this "
                               f"run would replace; pass {self.flag} to replace {'them' if more else 'it'}, or "
                               f"choose another {self.folder_flag}")

    def path(self, name) -> Path:
        """Where to write `name` in the folder, after `check([name])`; from then on it is this run's file."""
        with self._lock:
            self.check([name])
            self.written.add(str(name))
        return self.directory / str(name)


def earlier_run(directory, globs=RUN_FILE_GLOBS) -> Optional[str]:
    """What of another run `directory` holds ("checkpoint.pth, metrics.jsonl"): its files that match
    `globs`, or None (none of them)."""
    directory = Path(directory)
    if not directory.is_dir():
        return None
    found = sorted({path.name for pattern in globs for path in directory.glob(pattern) if path.is_file()})
    if not found:
        return None
    return ", ".join(found[:4]) + (f" and {len(found) - 4} more" if len(found) > 4 else "")


def make_room(directory, start_over: bool, globs=RUN_FILE_GLOBS, what: str = "another run", advice: str = "",
              move_all: bool = True) -> Optional[str]:
    """Make `directory` free for a new run's files: EarlierOutput when it holds files of `globs` (an earlier
    run's) and `start_over` is false (`advice`, e.g. how to continue it, leads the ways out it names); with
    `start_over` they move to `previous_<time>/` inside it (everything but earlier previous_* folders and the
    lock with `move_all`, else only the files of `globs`). Returns the note to print when files moved."""
    found = earlier_run(directory, globs)
    if not found:
        return None
    if not start_over:
        raise EarlierOutput(f"--output_dir {directory} holds {what} ({found}); {advice}start over there with "
                            f"--start_over (its files move to {PREVIOUS_PREFIX}<time>/ inside it), or choose "
                            f"another --output_dir")
    moved = move_aside(directory, None if move_all else globs)
    return f"note: --output_dir {directory} held {what} ({found}): moved its files to {moved}"


def previous_folder(directory) -> Path:
    """A new, empty `previous_<time>` folder inside `directory` (where earlier files are kept)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = Path(directory) / f"{PREVIOUS_PREFIX}{stamp}"
    suffix = 1
    while target.exists():
        suffix += 1
        target = Path(directory) / f"{PREVIOUS_PREFIX}{stamp}-{suffix}"
    target.mkdir()
    return target


def move_aside(directory, globs=None) -> Path:
    """Move everything in `directory` except its lock and earlier `previous_*` folders (or, given `globs`, only
    the files that match them) into a new `previous_<time>` folder inside it; returns that folder. Renames
    only: fast, nothing copied."""
    directory = Path(directory)
    target = previous_folder(directory)
    chosen = None if globs is None else {path for pattern in globs for path in directory.glob(pattern)}
    for entry in sorted(directory.iterdir()):
        if entry == target or entry.name == LOCK_NAME or entry.name.startswith(PREVIOUS_PREFIX):
            continue
        if chosen is not None and entry not in chosen:
            continue
        entry.rename(target / entry.name)
    return target


METRICS_NAME = "metrics.jsonl"


def _row_step(line: str) -> Optional[int]:
    """The step of a metrics row; None for a row without one (kept); -1 for a line that is not JSON."""
    try:
        row = json.loads(line)
    except ValueError:
        return -1
    step = row.get("step") if isinstance(row, dict) else None
    return step if isinstance(step, int) and not isinstance(step, bool) else None


def rewind_metrics(directory, step: int) -> Optional[str]:
    """Cut `directory`/metrics.jsonl back to the rows of steps <= `step` (the step a resumed run continues
    from): the rows a killed run wrote past its last checkpoint, and a line it left half-written, go. The
    file is replaced atomically (a temp file and a rename), after a copy of it as it was is kept in
    `previous_<time>/`. Returns a line saying what was dropped, or None when nothing was."""
    path = Path(directory) / METRICS_NAME
    if not path.is_file():
        return None
    *complete, last = path.read_text(errors="replace").split("\n")
    lines = [line + "\n" for line in complete] + ([last] if last else [])
    kept, dropped = [], 0
    for line in lines:
        row_step = _row_step(line) if line.endswith("\n") else -1  # no newline: a write cut short by a kill
        if row_step is not None and (row_step < 0 or row_step > step):
            dropped += 1
        else:
            kept.append(line)
    if not dropped:
        return None
    previous = previous_folder(directory)
    shutil.copy2(path, previous / METRICS_NAME)
    temporary = path.with_name(f".{METRICS_NAME}.rewind.tmp")
    with open(temporary, "w") as handle:
        handle.writelines(kept)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    return (f"{path}: dropped {dropped} row(s) past step {step}, written before the run was stopped and now "
            f"trained again (the file as it was: {previous / METRICS_NAME})")
