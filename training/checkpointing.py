"""A run's checkpoints as the loop saves and restores them (the file format is utils/checkpoint.py's).

`Checkpoints.save` is collective (every rank gives its RNG state, rank 0 writes) and remembers the
last good checkpoint, which the run names when non-finite training stops it. Resuming is
`check_resumable` (the shapes, and the warnings about what a checkpoint keeps: its legacy
corrections, another curriculum), then `restore_weights`, `restore_optimisation` and
`restore_rng_streams`.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.distributed as dist

import curriculums
from run_spec import TrainConfig, keeps_legacy_corrections
from utils.checkpoint import (LATEST_NAME, CheckpointError, TrainingState, checkpoint_mismatch, remove_stale_temp_files,
                              rng_state, save_checkpoint, set_rng_state)

logger = logging.getLogger("mvcgan.train")


class Checkpoints:
    """The checkpoints of the run directory `output_dir`: checkpoint.pth, the numbered ones, and the last
    good one written or resumed from."""

    def __init__(self, output_dir: Path, is_main: bool, world_size: int):
        self.output_dir, self.is_main, self.world_size = Path(output_dir), is_main, world_size
        self.last_good: Optional[tuple] = None  # (path, step), named when non-finite training stops the run

    def describe_last_good(self) -> str:
        if self.last_good is None:
            return "none was written"
        path, step = self.last_good
        return f"{path} (step {step})"

    def save(self, state_of: Callable[[list], TrainingState], step: int, numbered: bool = False) -> None:
        """Collective: every rank contributes its RNG state; rank 0 writes `state_of(rng states of every
        rank)` to checkpoint.pth and, if `numbered`, to checkpoint_{step}.pth."""
        states = [None] * self.world_size
        if self.world_size > 1:
            dist.all_gather_object(states, rng_state())
        else:
            states = [rng_state()]
        if self.is_main:
            state = state_of(states).to_checkpoint()
            save_checkpoint(self.output_dir / LATEST_NAME, state)
            if numbered:
                save_checkpoint(self.output_dir / f"checkpoint_{step:06d}.pth", state)
        self.last_good = (self.output_dir / LATEST_NAME, step)

    def remove_stale_writes(self) -> None:
        """Rank 0, holding the directory's lock: the temp files of killed checkpoint writes go (no other
        run writes there)."""
        for stale in remove_stale_temp_files(self.output_dir):
            logger.info("removed %s, left by a checkpoint write that was killed", stale.name)


def check_resumable(path, state: dict, config: TrainConfig, generator: torch.nn.Module,
                    discriminator: torch.nn.Module, is_main: bool) -> TrainingState:
    """The training state of the checkpoint `state` (read from `path`), or CheckpointError if its networks
    do not fit these; warns (rank 0) when it keeps the legacy corrections it was trained with."""
    mismatch = checkpoint_mismatch(state, generator, discriminator)
    if mismatch:
        raise CheckpointError(mismatch)
    if is_main and keeps_legacy_corrections(config, state):
        logger.warning("%s was trained before the published behaviour became the default: it continues with "
                       "the corrections it was trained with (%s)", path,
                       ", ".join(f"{k}={v!r}" for k, v in curriculums.LEGACY_CORRECTIONS.items()))
    saved = TrainingState.from_checkpoint(state)
    if saved.curriculum_name != config.curriculum:  # allowed by run_spec.check_curriculum_change
        logger.warning("training curriculum %s on a %s checkpoint (--allow_curriculum_change)",
                       config.curriculum, saved.curriculum_name)
    return saved


def restore_weights(saved: TrainingState, path, generator: torch.nn.Module, discriminator: torch.nn.Module,
                    emas: list) -> None:
    """The networks' and the EMAs' weights (a checkpoint without a discriminator keeps the fresh one)."""
    generator.load_state_dict(saved.generator)
    if saved.discriminator is not None:
        discriminator.load_state_dict(saved.discriminator)
    else:
        logger.warning("%s has no discriminator: fine-tuning starts from a freshly initialised one", path)
    for ema, weights, updates in zip(emas, saved.emas, saved.ema_num_updates):
        ema.module.load_state_dict(weights)
        ema.num_updates = updates


def restore_optimisation(saved: TrainingState, path, optimizer_G: torch.optim.Optimizer,
                         optimizer_D: torch.optim.Optimizer, scaler: torch.amp.GradScaler) -> None:
    """The optimisers' moments and the loss scaler's scale (of a run that had one)."""
    optimizer_G.load_state_dict(saved.optimizer_G)
    optimizer_D.load_state_dict(saved.optimizer_D)
    if saved.scaler:
        scaler.load_state_dict(saved.scaler)
    elif scaler.is_enabled():  # GradScaler refuses the empty state of a disabled scaler
        logger.warning("%s was trained without an fp16 loss scaler (on the CPU, or in bf16/fp32): the loss "
                       "scale starts afresh at %g", path, scaler.get_scale())


def restore_rng_streams(saved: TrainingState, rank: int, world_size: int) -> None:
    """This rank's RNG states, when the checkpoint was written by as many processes."""
    rng = saved.rng or []
    if saved.world_size == world_size and rank < len(rng):
        set_rng_state(rng[rank])
    else:
        logger.warning("checkpoint was written by %s processes, now %d: RNG streams restart",
                       saved.world_size, world_size)
