"""One training process of an MVCGAN run (docs/METHOD.md §7): `train(rank, world_size, spec)`.

main.py parses the command line, resolves the run (run_spec.py) and starts the processes; each runs
`train`, which picks its device and threads, joins the process group and runs a `Trainer`. The loop
and its plumbing are the package training/: the loop (training/loop.py), signals, loader workers and
non-finite streaks (faults.py), progress and metrics.jsonl (progress.py), checkpoints (checkpointing.py),
grids and evaluations (snapshots.py), the data (data.py), the process group (distributed.py). The names
other modules import from here stay here.
"""
from __future__ import annotations

import logging
from typing import Optional, Union

import torch
import torch.distributed as dist

from run_spec import RunSpec, TrainConfig
from training.distributed import setup_distributed
from training.faults import DriftWatch, LoaderFailed
from training.loop import EMA_DECAYS, Trainer
from utils.cpu_runtime import set_threads

__all__ = ["train", "Trainer", "TrainConfig", "RunSpec", "LoaderFailed", "DriftWatch", "EMA_DECAYS"]


def train(rank: int, world_size: int, spec: Union[RunSpec, TrainConfig], init_method: Optional[str] = None,
          local_rank: Optional[int] = None, resume_state: Optional[dict] = None, run_dir_locked: bool = False) -> int:
    """One training process of the run `spec` (a TrainConfig is resolved first, see Trainer). On CUDA each
    process uses the GPU `local_rank` with NCCL. `resume_state`: what resolve_run read in this process;
    `run_dir_locked`: the caller holds the output directory's lock (main.py)."""
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"%(asctime)s [rank {rank}] %(levelname)s %(message)s")
    local_rank = rank if local_rank is None else local_rank
    config = spec.config if isinstance(spec, RunSpec) else spec
    set_threads(config.threads)
    device = config.device
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if use_cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
        torch.backends.cudnn.benchmark = True
    else:
        device = torch.device("cpu")
    setup_distributed(rank, world_size, "nccl" if use_cuda else "gloo", init_method)
    try:
        return Trainer(rank, world_size, spec, device, resume_state, run_dir_locked).run()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
