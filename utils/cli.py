"""The command-line plumbing every script shares: its errors, exit codes and argparse types.

Every CLI of the project runs its body through `run_cli`, which turns what went wrong into an exit
code: 0 success, 2 a usage or input error (one `error: ...` line, no traceback), 1 a failure during
the work. A usage error is a `CLIError` (the library's `CheckpointError` and `ExistingFile` are
kinds of it). Also here: the help formatter (`HelpFormatter`), argparse types that reject what
argparse's own accept (`finite_float`, `seed_value`), an input file checked before the work
(`input_file`) and an OSError in one line (`describe_os_error`).

This module imports nothing of the project, so that any module may import it without a cycle.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Callable

import torch

USAGE_ERROR = 2  # bad flags, missing or unreadable inputs: nothing was done
WORK_FAILED = 1  # the inputs were fine but the work itself failed
SEED_MAX = 2 ** 63 - 1  # seeds of torch.Generator (and seed + 1, seed + rank) stay in int64


class CLIError(RuntimeError):
    """A user error a script reports as one line (no traceback) with exit code 2."""


def describe_os_error(error: OSError) -> str:
    """One line: what failed and why, e.g. "No space left on device: 'runs/x/metrics.jsonl'"."""
    if error.strerror:
        return f"{error.strerror}: {error.filename!r}" if error.filename else error.strerror
    return str(error)


def run_cli(body: Callable[[], None]) -> int:
    """Run a script's body and return its exit code (the convention of every CLI of the project).

    Usage and input errors (CLIError, and so CheckpointError and an output file already there:
    ExistingFile) print one `error: ...` line and return 2;
    running out of memory prints one line with the flags that help and returns 1, as does an OSError
    (a full disk: a failure during the work, as is anything else, which keeps its traceback: Python
    exits with 1).
    """
    try:
        body()
    except CLIError as error:
        print(f"error: {error}", file=sys.stderr)
        return USAGE_ERROR
    except (torch.cuda.OutOfMemoryError, MemoryError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        print(f"error: out of memory ({reason}); lower --max_batch_size or --batch_size, or use a smaller "
              "resolution", file=sys.stderr)
        return WORK_FAILED
    except OSError as error:  # a full disk, the output folder gone: the work failed, say why in one line
        print(f"error: {describe_os_error(error)}", file=sys.stderr)
        return WORK_FAILED
    return 0


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends "(default: X)" unless the help already says what the default is, or there is none."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default in (None, False, argparse.SUPPRESS) or action.required:
            return text
        return super()._get_help_string(action)


def finite_float(text: str) -> float:
    """argparse type: a float that is neither NaN nor infinite (argparse's float accepts both)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def seed_value(text: str) -> int:
    """argparse type: a seed, a whole number from 0 to SEED_MAX, so that every seed of a list is checked
    before the first one's files are written (torch.Generator.manual_seed would refuse it only then)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if not 0 <= value <= SEED_MAX:
        raise argparse.ArgumentTypeError(f"seed {value} is out of range: seeds are whole numbers from 0 to "
                                         f"{SEED_MAX} (2^63 - 1)")
    return value


def input_file(path, flag: str) -> Path:
    """`path` as a Path when it is a file; CLIError naming `flag` when it is missing or a folder."""
    path = Path(path)
    if path.is_dir():
        raise CLIError(f"{flag} {path} is a folder; name a file in it")
    if not path.is_file():
        raise CLIError(f"{flag} {path}: no such file")
    return path
