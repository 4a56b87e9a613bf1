"""The training data as the loop reads it: `make_loader`, whose `ResumableDistributedSampler` can start an
epoch part-way through (exact resume) and decides each image's horizontal flip."""
from __future__ import annotations

import multiprocessing

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler

from datasets import build_dataset
from training.faults import ignore_stop_signals

# Loader workers are forked, also in the processes main.py spawns (which would otherwise spawn theirs too,
# each re-importing torch and the project: 38 s before the first step of a 2-process tiny run on 2 busy
# cores). The workers only read data: they touch neither CUDA nor the process group.
WORKER_START_METHOD = "fork" if "fork" in multiprocessing.get_all_start_methods() else None


class ResumableDistributedSampler(DistributedSampler):
    """A DistributedSampler that can start an epoch part-way through (exact resume) and decides
    each image's random horizontal flip (docs/METHOD.md §9): it yields (index, flip) keys.

    The flips are drawn here, in the main process, from a seed of (seed, rank, epoch), not in
    the loader workers, whose RNG states a checkpoint cannot hold: so resuming stays exact, and
    the dataset flips before its final resize, in the published order.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.start_index = 0

    def set_position(self, epoch: int, start_index: int) -> None:
        self.set_epoch(epoch)
        self.start_index = start_index

    def __iter__(self):
        indices = list(super().__iter__())
        seed = np.random.SeedSequence([self.seed, self.rank, self.epoch])
        generator = torch.Generator().manual_seed(int(seed.generate_state(1)[0]))
        flips = (torch.rand(len(indices), generator=generator) < 0.5).tolist()
        return iter(list(zip(indices, flips))[self.start_index:])

    def __len__(self):
        return self.num_samples - self.start_index


def make_loader(metadata: dict, rank: int, world_size: int, seed: int, num_workers: int,
                pin_memory: bool) -> DataLoader:
    """The data loader of a stage (its dataset, batch_size and output_size) for process `rank`."""
    dataset = build_dataset(metadata, int(metadata["output_size"]), flip=False)  # the sampler flips
    sampler = ResumableDistributedSampler(dataset, num_replicas=world_size, rank=rank,
                                          shuffle=True, seed=seed, drop_last=True)
    loader = DataLoader(dataset, batch_size=int(metadata["batch_size"]), sampler=sampler, drop_last=True,
                        num_workers=num_workers, pin_memory=pin_memory,
                        # Workers live across epochs: restarting them costs seconds per epoch
                        # on small datasets (each re-imports torch).
                        persistent_workers=num_workers > 0,
                        worker_init_fn=ignore_stop_signals if num_workers > 0 else None,
                        multiprocessing_context=WORKER_START_METHOD if num_workers > 0 else None,
                        # Its own generator: making an iterator must not consume the global RNG.
                        generator=torch.Generator().manual_seed(seed + rank))
    if len(loader) == 0:
        raise ValueError(f"dataset has {len(dataset)} images: fewer than one batch of "
                         f"{metadata['batch_size']} per process")
    return loader
