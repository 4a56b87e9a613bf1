"""Process-wide settings for training on CPU.

`flush_denormals()` makes the CPU treat subnormal floats (below 1.2e-38) as zero. Behind an
opaque surface the transmittance and every gradient that flows through it are products of
exp(-sigma * delta) and fall into that range, where x86 arithmetic is many times slower: with
the Synthetic sphere prior (dense from the first step) a step took 2.5x as long (0.64 against
0.25 s at Synthetic's 16 px stage), with the same losses to four digits. Always on for CPU
training.

`keep_freed_memory()` stops glibc's malloc from handing large freed blocks back to
the kernel. By default every allocation above 32 MB (each SIREN activation at the
paper's size is ~130 MB) gets fresh pages from mmap and returns them on free, so each
such tensor costs page faults and zeroing again every step. The field already avoids
whole-tensor temporaries on CPU (`siren/cpu_kernels.py`: row blocks, `FieldHeads`),
which brought the fresh pages from 18 to 3 GB per step at batch 2, 64x64 NeRF, 16 samples;
what is left are tensors the step needs (the activations saved for backward). Served from
the heap and kept there, those are reused from step to step too. The cost: the heap
fragments and never shrinks, so the peak RSS grows (docs/PERFORMANCE.md has the numbers). Hence opt-in
(`TrainConfig.keep_freed_memory`, `bench_step.py --keep_freed_memory`).

`--threads` (every script: `add_threads_argument`, then `set_threads(args.threads)`) sets
torch's CPU threads. torch's default, one per core, is right on an idle machine; beside other
jobs its idle threads spin waiting for preempted ones, and a step took 10-30x longer than with
one thread per free core (docs/TRAINING.md, `--threads`).
"""
from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import logging
import os
from typing import Optional

import torch

logger = logging.getLogger("mvcgan.cpu_runtime")

M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4


def flush_denormals() -> bool:
    """Subnormal floats become zero in CPU arithmetic; False where the CPU cannot (no SSE3)."""
    supported = torch.set_flush_denormal(True)
    if not supported:
        logger.info("this CPU cannot flush denormals; fields with dense surfaces train slower")
    return supported


def keep_freed_memory() -> bool:
    """mallopt: no mmap'd chunks, no trimming of the heap. True if glibc accepted both."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):  # not glibc (macOS, musl): nothing to do
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, 2 ** 31 - 1))
    if not ok:
        logger.warning("mallopt refused; large CPU allocations keep going through mmap")
    return ok


def available_cores() -> int:
    """The CPU cores this process may run on (its affinity mask: taskset, a cluster's cgroup cpuset)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def thread_count(text: str) -> int:
    """argparse type of --threads: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


THREADS_HELP = ("torch CPU threads (default: torch's choice, one per core). On a machine shared with other jobs "
                "one thread per free core is much faster than torch's default")


def add_threads_argument(parser: argparse.ArgumentParser, help: str = THREADS_HELP) -> None:
    """--threads N: torch's CPU threads (set them with set_threads)."""
    parser.add_argument("--threads", type=thread_count, default=None, help=help)


def set_threads(threads: Optional[int]) -> None:
    """torch.set_num_threads(threads) unless None (torch's choice)."""
    if threads is not None:
        torch.set_num_threads(threads)
