"""The MVCGAN training loop (docs/METHOD.md §7): one process of a (possibly single-process) job.

`train(rank, world_size, spec)` runs a `Trainer` on a run specification (run_spec.py, resolved
once by main.py): it schedules the phases of `losses.MVCGANLoss`, averages gradients across
processes, clips, steps the optimisers, keeps two EMAs, changes curriculum stages, writes
grids, metrics, checkpoints and evaluations, and resumes exactly. `Trainer.run` is the loop;
what happens at the end of a step is in `Trainer.end_step`. main.py parses the command line,
resolves the run and starts the processes.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import multiprocessing
import random
import signal
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

import curriculums
from datasets import build_dataset
from generators.generators import RenderOptions
from losses import MVCGANLoss, PhaseConfig, topk_fraction
from metrics import inception, metric_main
from run_spec import RunSpec, TrainConfig, build_networks, keeps_legacy_corrections, resolve_run
from siren.siren import compile_field
from utils.checkpoint import (LATEST_NAME, CheckpointError, TrainingState, checkpoint_mismatch, read_checkpoint,
                              remove_stale_temp_files, resolve_checkpoint_path, rng_state, save_checkpoint,
                              set_rng_state)
from utils.cpu_runtime import flush_denormals, keep_freed_memory, set_threads
from utils.run_dir import RunDirLock, rewind_metrics
from utils.images import make_grid, save_image, to_uint8
from utils.memory_model import AUTO, auto_batch_split

logger = logging.getLogger("mvcgan.train")

EMA_DECAYS = (0.999, 0.9999)
MAX_NONFINITE_STEPS = 10
# With an fp16 loss scaler an overflow is routine (the scaler halves its scale and skips the
# step); this many in a row means the gradients are NaN for good, not too large.
MAX_OVERFLOW_STEPS = 30
NUM_GRID_IMAGES = 20
GRID_ROW = 5
# Loader workers are forked, also in the processes main.py spawns (which would otherwise spawn theirs too,
# each re-importing torch and the project: 38 s before the first step of a 2-process tiny run on 2 busy
# cores). The workers only read data: they touch neither CUDA nor the process group.
WORKER_START_METHOD = "fork" if "fork" in multiprocessing.get_all_start_methods() else None


# ------------------------------------------------------------------------ helpers
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


class EMA:
    """Exponential moving average of a module's parameters, kept in a module copy.

    As in the published code (torch_ema with num_updates), the decay warms up as
    min(decay, (1 + n) / (10 + n)) so early samples are not stuck at the init.
    """

    def __init__(self, module: torch.nn.Module, decay: float):
        self.module = copy.deepcopy(module).eval().requires_grad_(False)
        self.decay, self.num_updates = decay, 0

    @torch.no_grad()
    def update(self, module: torch.nn.Module) -> None:
        self.num_updates += 1
        decay = min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))
        ema_params = list(self.module.parameters())
        torch._foreach_lerp_(ema_params, [p.detach() for p in module.parameters()], 1 - decay)


def average_gradients(module: torch.nn.Module, world_size: int) -> None:
    """All-reduce the gradients of every parameter that has one (one flat buffer)."""
    if world_size <= 1:
        return
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    if not grads:
        return
    flat = torch._utils._flatten_dense_tensors(grads)
    dist.all_reduce(flat)
    flat /= world_size
    for grad, reduced in zip(grads, torch._utils._unflatten_dense_tensors(flat, grads)):
        grad.copy_(reduced)


def any_rank(flags: list, device, world_size: int) -> list:
    """For each flag, True if it is True on any rank (so every rank takes the same branch): one all-reduce."""
    if world_size <= 1:
        return [bool(flag) for flag in flags]
    values = torch.tensor([1.0 if flag else 0.0 for flag in flags], device=device)
    dist.all_reduce(values, op=dist.ReduceOp.MAX)
    return [bool(v > 0) for v in values.tolist()]


def all_ranks_agree(flag: bool, device, world_size: int) -> bool:
    """True if `flag` is True on any rank (so every rank takes the same branch)."""
    return any_rank([flag], device, world_size)[0]


def module_summary(**modules) -> dict:
    summary = {}
    for name, module in modules.items():
        summary[name] = {"parameters": sum(p.numel() for p in module.parameters()),
                         "children": {child: sum(p.numel() for p in sub.parameters())
                                      for child, sub in module.named_children()}}
    return summary


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


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


class Progress:
    """Rank 0's view of the run: a total and a per-stage tqdm bar on a terminal, else (no terminal, or
    --no_progress) one log line every log_interval steps, so a log file holds progress without
    megabytes of bar redraws. Other ranks get a disabled one."""

    def __init__(self, curriculum: dict, step: int, final_step: int, log_interval: int, bars: bool):
        self.curriculum, self.final_step, self.log_interval = curriculum, final_step, log_interval
        self.total = tqdm(total=final_step, initial=min(step, final_step), desc="total", disable=not bars,
                          dynamic_ncols=True)
        self.stage_bar, self.stage = None, None
        self.mark = None  # (time, step) of the last progress line

    def start_step(self, step: int) -> None:
        """A new bar when `step` begins a stage. The first step of the run starts the clock of the
        progress lines (a resumed run's first line measures its own steps, not the loading)."""
        if self.mark is None:
            self.mark = (time.time(), step)
        stage = curriculums.stage_start(self.curriculum, step)
        if self.total.disable or stage == self.stage:
            return
        self.stage = stage
        stage_end = min(curriculums.next_stage_step(self.curriculum, step), self.final_step)
        if self.stage_bar is not None:
            self.stage_bar.close()
        self.stage_bar = tqdm(total=stage_end - stage, initial=step - stage, desc=f"stage@{stage}", leave=False,
                              dynamic_ncols=True)

    def end_step(self, step: int, stats: dict) -> None:
        if self.total.disable:
            self.log_line(step, stats)
        self.total.update(1)
        if self.stage_bar is not None:
            self.stage_bar.update(1)
            self.stage_bar.set_postfix(d=f"{stats['d_loss']:.3f}", g=f"{stats['g_loss']:.3f}",
                                       photo=f"{stats['photometric']:.3f}", a=f"{stats['alpha']:.2f}")

    def log_line(self, step: int, stats: dict) -> None:
        now = time.time()
        if self.mark is None:  # end_step without start_step (tests)
            self.mark = (now, step - 1)
        if step % self.log_interval and step != self.final_step:
            return
        mark_time, mark_step = self.mark
        sec_per_step = (now - mark_time) / max(step - mark_step, 1)
        self.mark = (now, step)
        eta = int(sec_per_step * max(self.final_step - step, 0))
        logger.info("step %d/%d  d %.4f  g %.4f  photo %.4f  %.2f s/step  ETA %d:%02d:%02d", step, self.final_step,
                    stats["d_loss"], stats["g_loss"], stats["photometric"], sec_per_step,
                    eta // 3600, eta // 60 % 60, eta % 60)

    def close(self) -> None:
        self.total.close()
        if self.stage_bar is not None:
            self.stage_bar.close()


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


def make_optimizers(generator: torch.nn.Module, discriminator: torch.nn.Module, metadata: dict) -> tuple:
    """(Adam for G, Adam for D) with stage 0's learning rates; with `unique_lr` the mapping network
    is a group of its own (its rate scaled in Trainer.set_learning_rates)."""
    betas = tuple(float(b) for b in metadata["betas"])
    if metadata["unique_lr"]:
        mapping = list(generator.siren.mapping_network.parameters())
        mapping_ids = {id(p) for p in mapping}
        groups = [{"name": "mapping_network", "params": mapping},
                  {"name": "generator", "params": [p for p in generator.parameters() if id(p) not in mapping_ids]}]
    else:
        groups = [{"name": "generator", "params": list(generator.parameters())}]
    optimizer_G = torch.optim.Adam(groups, lr=metadata["gen_lr"], betas=betas, weight_decay=metadata["weight_decay"])
    optimizer_D = torch.optim.Adam(discriminator.parameters(), lr=metadata["disc_lr"], betas=betas,
                                   weight_decay=metadata["weight_decay"])
    return optimizer_G, optimizer_D


# ------------------------------------------------------------------------- the run
class Trainer:
    def __init__(self, rank: int, world_size: int, spec: Union[RunSpec, TrainConfig], device: torch.device,
                 resume_state: Optional[dict] = None, run_dir_locked: bool = False):
        """`spec` as main.py resolved it; a TrainConfig (tests, benchmarks) is resolved here, as main.py
        would. `resume_state`: the checkpoint state resolve_run read in this process, if any.
        `run_dir_locked`: the caller (main.py's launcher) holds the output directory's lock for this run;
        otherwise rank 0 takes it in begin() and gives it back when run() ends."""
        if isinstance(spec, TrainConfig):
            spec, resume_state = resolve_run(spec)
        self.rank, self.world_size, self.spec, self.device = rank, world_size, spec, device
        self.config = dataclasses.replace(spec.config)  # evaluate() may switch evaluation off
        self.curriculum = spec.curriculum
        self.is_main = rank == 0
        self.output_dir = Path(self.config.output_dir)
        self._resume_state = resume_state
        meta0 = curriculums.extract_metadata(self.curriculum, 0)

        if device.type == "cpu":
            flush_denormals()  # transmittance behind dense surfaces: subnormal floats are slow
            if self.config.keep_freed_memory:
                keep_freed_memory()  # large activations are reused, not re-faulted, every step
        torch.manual_seed(self.config.seed + rank)
        np.random.seed(self.config.seed + rank)
        random.seed(self.config.seed + rank)

        self.generator, self.discriminator = (module.to(device) for module in build_networks(meta0))
        if world_size > 1:  # identical initial weights on every rank
            for tensor in [*self.generator.parameters(), *self.discriminator.parameters()]:
                dist.broadcast(tensor.data, src=0)
        self.emas = [EMA(self.generator, decay) for decay in EMA_DECAYS]
        if self.config.compile:  # after the EMA copies, which stay eager
            compile_field(self.generator.siren)
        self.optimizer_G, self.optimizer_D = make_optimizers(self.generator, self.discriminator, meta0)

        use_cuda = device.type == "cuda"
        self.amp_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(self.config.precision) if use_cuda else None
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        amp_dtype = self.amp_dtype
        self.autocast = (lambda: torch.autocast("cuda", dtype=amp_dtype)) if amp_dtype else nullcontext
        self.loss = MVCGANLoss(self.generator, self.discriminator, self.scaler, self.autocast)

        self.step, self.epoch, self.batch_in_epoch, self.nonfinite_streak = 0, 0, 0, 0
        self.drift = DriftWatch(meta0["drift_g_grad_norm"])
        self.last_good_checkpoint = None  # (path, step), named when non-finite training stops the run
        self.fixed_z = torch.randn(NUM_GRID_IMAGES, self.generator.z_dim,
                                   generator=torch.Generator().manual_seed(1234)).to(device)
        self.stop = GracefulStop(announce=self.is_main)
        self.run_dir_locked, self.run_dir_lock = run_dir_locked, None
        self._inception = None  # loaded on the first evaluation
        self._loader, self._loader_key = None, None
        self._auto_splits = {}  # {stage size: batch_split} of the stages whose batch_split is "auto"
        self.final_step, self.progress = None, None  # set by begin()

    # -------------------------------------------------------------- checkpoints
    def state(self, rng_states: list) -> TrainingState:
        return TrainingState(
            step=self.step, epoch=self.epoch, batch_in_epoch=self.batch_in_epoch,
            curriculum_name=self.config.curriculum, curriculum=self.curriculum,
            curriculum_overrides=self.config.curriculum_overrides,
            generator=self.generator.state_dict(), discriminator=self.discriminator.state_dict(),
            emas=[ema.module.state_dict() for ema in self.emas], ema_num_updates=[ema.num_updates for ema in self.emas],
            optimizer_G=self.optimizer_G.state_dict(), optimizer_D=self.optimizer_D.state_dict(),
            scaler=self.scaler.state_dict(), rng=rng_states, world_size=self.world_size)

    def weights_are_finite(self) -> bool:
        modules = (self.generator, self.discriminator, *(ema.module for ema in self.emas))
        return all(bool(torch.isfinite(p).all()) for module in modules for p in module.parameters())

    def save(self, numbered: bool = False) -> bool:
        """Collective: every rank contributes its RNG state; rank 0 writes. Returns whether it saved.

        Refuses while non-finite steps are being skipped or any weight is non-finite, so that
        the last good checkpoint is never overwritten by a broken one. Ranks hold the same
        weights and streak, so they all take the same branch.
        """
        if self.nonfinite_streak or not self.weights_are_finite():
            if self.is_main:
                logger.warning("step %d: not saving a checkpoint (non-finite training); last good checkpoint: %s",
                               self.step, self.describe_last_good_checkpoint())
            return False
        states = [None] * self.world_size
        if self.world_size > 1:
            dist.all_gather_object(states, rng_state())
        else:
            states = [rng_state()]
        if self.is_main:
            state = self.state(states).to_checkpoint()
            save_checkpoint(self.output_dir / LATEST_NAME, state)
            if numbered:
                save_checkpoint(self.output_dir / f"checkpoint_{self.step:06d}.pth", state)
        self.last_good_checkpoint = (self.output_dir / LATEST_NAME, self.step)
        return True

    def describe_last_good_checkpoint(self) -> str:
        if self.last_good_checkpoint is None:
            return "none was written"
        path, step = self.last_good_checkpoint
        return f"{path} (step {step})"

    def load(self, path) -> None:
        """Continue from the checkpoint at `path` (the run specification's resume_path): its weights,
        EMAs and step and, unless it was imported, its optimisers, loss scaler, data position and RNGs.
        The file is read once and not hashed again (resolve_run verified it)."""
        # Read on the CPU (as resolve_run reads it): load_state_dict moves weights and optimiser state to
        # each parameter's device, and the RNG states must stay CPU tensors (torch.set_rng_state refuses CUDA ones).
        state = self._resume_state
        if state is None:
            state, _ = read_checkpoint(path, map_location="cpu", trusted_digest=self.spec.resume_digest)
        self._resume_state = None
        mismatch = checkpoint_mismatch(state, self.generator, self.discriminator)
        if mismatch:
            raise CheckpointError(mismatch)
        if self.is_main and keeps_legacy_corrections(self.config, state):
            logger.warning("%s was trained before the published behaviour became the default: it continues with "
                           "the corrections it was trained with (%s)", path,
                           ", ".join(f"{k}={v!r}" for k, v in curriculums.LEGACY_CORRECTIONS.items()))
        saved = TrainingState.from_checkpoint(state)
        if saved.curriculum_name != self.config.curriculum:  # allowed by run_spec.check_curriculum_change
            logger.warning("training curriculum %s on a %s checkpoint (--allow_curriculum_change)",
                           self.config.curriculum, saved.curriculum_name)
        self.last_good_checkpoint = (resolve_checkpoint_path(path), saved.step)
        self.generator.load_state_dict(saved.generator)
        if saved.discriminator is not None:
            self.discriminator.load_state_dict(saved.discriminator)
        else:
            logger.warning("%s has no discriminator: fine-tuning starts from a freshly initialised one", path)
        for ema, weights, updates in zip(self.emas, saved.emas, saved.ema_num_updates):
            ema.module.load_state_dict(weights)
            ema.num_updates = updates
        self.step, self.epoch = saved.step, saved.epoch
        if self.is_main:
            logger.info("resumed from %s at step %d", path, self.step)
        if saved.imported:  # import_checkpoint.py: weights and step only
            logger.warning("%s has no optimiser, scaler or data-position state (an imported checkpoint): "
                           "continuing the curriculum from step %d with fresh Adam moments", path, self.step)
            return
        self.optimizer_G.load_state_dict(saved.optimizer_G)
        self.optimizer_D.load_state_dict(saved.optimizer_D)
        if saved.scaler:
            self.scaler.load_state_dict(saved.scaler)
        elif self.scaler.is_enabled():  # GradScaler refuses the empty state of a disabled scaler
            logger.warning("%s was trained without an fp16 loss scaler (on the CPU, or in bf16/fp32): the loss "
                           "scale starts afresh at %g", path, self.scaler.get_scale())
        self.batch_in_epoch = saved.batch_in_epoch
        rng = saved.rng or []
        if saved.world_size == self.world_size and self.rank < len(rng):
            set_rng_state(rng[self.rank])
        else:
            logger.warning("checkpoint was written by %s processes, now %d: RNG streams restart",
                           saved.world_size, self.world_size)

    # -------------------------------------------------------------------- data
    def make_loader(self, metadata: dict):
        dataset = build_dataset(metadata, int(metadata["output_size"]), flip=False)  # the sampler flips
        sampler = ResumableDistributedSampler(dataset, num_replicas=self.world_size, rank=self.rank,
                                              shuffle=True, seed=self.config.seed, drop_last=True)
        loader = DataLoader(dataset, batch_size=int(metadata["batch_size"]), sampler=sampler, drop_last=True,
                            num_workers=self.config.num_workers, pin_memory=self.device.type == "cuda",
                            # Workers live across epochs: restarting them costs seconds per epoch
                            # on small datasets (each re-imports torch).
                            persistent_workers=self.config.num_workers > 0,
                            worker_init_fn=ignore_stop_signals if self.config.num_workers > 0 else None,
                            multiprocessing_context=WORKER_START_METHOD if self.config.num_workers > 0 else None,
                            # Its own generator: making an iterator must not consume the global RNG.
                            generator=torch.Generator().manual_seed(self.config.seed + self.rank))
        if len(loader) == 0:
            raise ValueError(f"dataset has {len(dataset)} images: fewer than one batch of "
                             f"{metadata['batch_size']} per process")
        return loader

    # -------------------------------------------------------------- samples
    @torch.no_grad()
    def write_samples(self, metadata: dict, alpha: float) -> None:
        """Rank 0: grids of the fixed z (frontal and tilted, raw and EMA, psi 0.5) and random z (EMA, psi 0.7)."""
        options = RenderOptions.from_metadata(metadata, evaluation=True)
        ema = self.emas[0].module  # always in eval mode

        def save_grid(images, name):
            save_image(make_grid(list(to_uint8(images)), GRID_ROW), self.output_dir / f"{self.step}_{name}.png")

        self.generator.eval()
        with self.autocast():
            for label, module in (("", self.generator), ("_ema", ema)):
                for name, yaw_offset in (("fixed", 0.0), ("tilted", 0.5)):
                    fixed_pose = options.replace(pose=options.pose.fixed(yaw_offset))
                    save_grid(module.staged_forward(self.fixed_z, fixed_pose, psi=0.5, alpha=alpha).image,
                              f"{name}{label}")
            seeded = torch.Generator(device=self.device).manual_seed(self.step)
            z = torch.randn(NUM_GRID_IMAGES, ema.z_dim, generator=seeded, device=self.device)
            save_grid(ema.staged_forward(z, options, psi=0.7, alpha=alpha, generator=seeded).image, "random")
        self.generator.train()

    def write_real_grid(self, dataset) -> None:
        """Rank 0, once per run directory: `real.png`, a grid of training images, so the target is visible
        next to the sample grids."""
        path = self.output_dir / "real.png"
        if path.exists():
            return
        images = torch.stack([dataset[i][0] for i in range(min(NUM_GRID_IMAGES, len(dataset)))])
        save_image(make_grid(list(to_uint8(images)), GRID_ROW), path)

    def evaluate(self, metadata: dict) -> None:
        """Rank 0: score the EMA generator; a missing Inception file disables evaluation, not training."""
        try:
            metrics = metric_main.parse_metrics(self.config.eval_metrics)
            if self._inception is None and metric_main.uses_inception(metrics):
                self._inception = inception.load_inception(device=self.device)
            result = metric_main.evaluate(self.emas[0].module, metadata, metrics=metrics,
                                          real_dir=self.config.eval_dir, device=self.device,
                                          inception=self._inception,
                                          alpha=curriculums.fade_alpha(self.curriculum, self.step - 1))
        except (inception.InceptionWeightsMissing, ValueError) as error:  # e.g. too few real images
            logger.error("evaluation disabled for this run: %s", error)
            self.config.eval_freq = 0
            return
        self.log_metrics({"step": self.step, "eval": result})

    def log_metrics(self, record: dict) -> None:
        with open(self.output_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(_jsonable(record)) + "\n")

    def set_learning_rates(self, metadata: dict) -> None:
        for group in self.optimizer_G.param_groups:
            scale = 5e-2 if group.get("name") == "mapping_network" else 1.0
            group["lr"] = metadata["gen_lr"] * scale
            group["betas"] = tuple(float(b) for b in metadata["betas"])
            group["weight_decay"] = metadata["weight_decay"]
        for group in self.optimizer_D.param_groups:
            group["lr"] = metadata["disc_lr"]
            group["betas"] = tuple(float(b) for b in metadata["betas"])
            group["weight_decay"] = metadata["weight_decay"]

    def finish_phase(self, module, optimizer, loss_value, grad_clip):
        """Average, unscale, clip and step. Returns (stepped, gradient norm before clipping).

        The step is skipped on every rank when the loss or the gradient norm is non-finite on
        any rank: a NaN gradient can come with a finite loss, and clipping would spread it
        to every weight. With fp16, GradScaler skips overflowed gradients itself and lowers
        its scale: the step is left to the scaler and only reported as skipped.
        """
        average_gradients(module, self.world_size)
        self.scaler.unscale_(optimizer)
        norm = torch.nn.utils.clip_grad_norm_(module.parameters(), grad_clip)
        finite_loss = bool(torch.isfinite(torch.as_tensor(loss_value, dtype=torch.float32)).item())
        finite_grad = bool(torch.isfinite(norm).item())
        if self.scaler.is_enabled():
            # The scaler skips the step itself when the (all-reduced, so same on every rank)
            # gradients overflowed; report the skip so that a streak of them is seen and stops
            # the run (MAX_OVERFLOW_STEPS), instead of a run that silently never updates.
            self.scaler.step(optimizer)
            optimizer.zero_grad(set_to_none=True)
            return finite_grad, float(norm)
        stepped = not all_ranks_agree(not (finite_loss and finite_grad), self.device, self.world_size)
        if stepped:
            self.scaler.step(optimizer)
        optimizer.zero_grad(set_to_none=True)
        return stepped, float(norm)

    def loader_key(self, step: int) -> tuple:
        """What the data loader at `step` depends on. As published, a stage that changes the batch
        size rebuilds the loader (and starts a new epoch); one that changes only other values
        (learning rates, loss weights) keeps it. The image size is part of the key too: the
        published loop would keep feeding the old size there (and fail on it)."""
        metadata = curriculums.extract_metadata(self.curriculum, step)
        return metadata.get("batch_size"), metadata.get("output_size")  # (None, None) in the final stage

    def train_step(self, real: torch.Tensor, metadata: dict, real_poses: Optional[torch.Tensor] = None) -> dict:
        """One step on real images (B, 3, S, S); real_poses (B, 2) (pitch, yaw), the procedural data's true
        poses, are used where the curriculum's real_pose_lambda asks."""
        step = self.step
        alpha = curriculums.fade_alpha(self.curriculum, step)
        # Density noise decays to 0 over nerf_noise_steps (5000 in the published code).
        nerf_noise = max(0.0, 1.0 - step / float(metadata["nerf_noise_steps"]))
        options = RenderOptions.from_metadata(metadata, nerf_noise=nerf_noise)
        cfg = PhaseConfig(alpha=alpha, batch_split=self.batch_split(metadata),
                          latent_dim=int(metadata["latent_dim"]), z_dist=metadata["z_dist"],
                          r1_lambda=float(metadata["r1_lambda"]), pos_lambda=float(metadata["pos_lambda"]),
                          z_lambda=float(metadata["z_lambda"]), reproj_lambda=float(metadata["reproj_lambda"]),
                          topk_fraction=topk_fraction(step, metadata["topk_interval"], metadata["topk_v"]),
                          photometric_input=str(metadata["photometric_input"]),
                          real_pose_lambda=float(metadata["real_pose_lambda"]))
        self.set_learning_rates(metadata)
        if self.scaler.is_enabled() and self.scaler.get_scale() < 1:
            # As published: the fp16 loss scale never stays below 1 (there small gradients underflow).
            self.scaler.update(1.0)
        self.generator.train()
        self.discriminator.train()

        d_stats = self.loss.accumulate_discriminator_gradients(real, options, cfg, real_poses)
        d_ok, d_norm = self.finish_phase(self.discriminator, self.optimizer_D, d_stats["d_loss"],
                                         metadata["grad_clip"])
        g_stats = self.loss.accumulate_generator_gradients(real.shape[0], self.device, options, cfg)
        self.discriminator.zero_grad(set_to_none=True)  # the G phase also filled D's grads
        g_ok, g_norm = self.finish_phase(self.generator, self.optimizer_G, g_stats["g_loss"], metadata["grad_clip"])
        self.scaler.update()  # both phases unscaled, so it has their overflow checks even if neither stepped
        for ema in self.emas:
            ema.update(self.generator)
        stats = {k: float(v) for k, v in {**d_stats, **g_stats}.items()}
        stats.update(alpha=alpha, topk=cfg.topk_fraction, nerf_noise=nerf_noise, skipped=not (d_ok and g_ok),
                     d_grad_norm=d_norm, g_grad_norm=g_norm, batch_split=cfg.batch_split)
        return stats

    def batch_split(self, metadata: dict) -> int:
        """The stage's batch_split. "auto" (utils/memory_model.py) is chosen at the first step of each stage
        size from the device's memory, the largest choice of all ranks (they must agree: the G phase sums the
        chunks' losses), and logged."""
        if metadata["batch_split"] != AUTO:
            return int(metadata["batch_split"])
        size = tuple(metadata[k] for k in ("batch_size", "img_size", "num_steps", "output_size"))
        if size not in self._auto_splits:
            choice = auto_batch_split(metadata, self.device, self.config.precision)
            split = choice.batch_split
            if self.world_size > 1:
                agreed = torch.tensor([split], device=self.device)
                dist.all_reduce(agreed, op=dist.ReduceOp.MAX)
                split = int(agreed.item())
            self._auto_splits[size] = split
            if self.is_main:
                logger.info("step %d, batch %d, %d px NeRF: %s%s", self.step, metadata["batch_size"],
                            metadata["img_size"], choice.describe(),
                            "" if split == choice.batch_split else f"; {split} chunks, as another rank needs")
        return self._auto_splits[size]

    # ------------------------------------------------------------------ loop
    def run(self) -> int:
        """Train until the final (empty) stage, --max_steps or --n_epochs, then write grids and a
        checkpoint; on SIGINT/SIGTERM, or when a data loader worker dies, save and stop before the next
        step. Returns the exit code."""
        try:
            self.begin()
            while self.steps_left():
                batches = self.loader()
                for batch in batches:
                    # Every rank takes the same branch: a stop asked on any of them, a worker lost on any.
                    stop, lost_worker = any_rank([self.stop.requested, batch is None], self.device, self.world_size)
                    if stop or lost_worker:
                        return self.end_early(stop, batches.failure)
                    started = time.time()
                    # Every step reads its own stage's values: a stage that changes only a learning
                    # rate takes effect at its first step, without a new loader or a new fade.
                    metadata = curriculums.extract_metadata(self.curriculum, self.step)
                    self.progress.start_step(self.step)
                    real, labels = batch
                    real_poses = labels if metadata["real_pose_lambda"] > 0 else None
                    stats = self.train_step(real.to(self.device, non_blocking=True), metadata, real_poses)
                    loader_changed = self.advance()
                    self.end_step(stats, metadata, started)
                    if loader_changed or self.step >= self.final_step:
                        break
                else:
                    self.epoch, self.batch_in_epoch = self.epoch + 1, 0
            self.finish()
        finally:
            if self.progress is not None:
                self.progress.close()
            self.stop.restore()
            if self.run_dir_lock is not None:
                self.run_dir_lock.release()
                self.run_dir_lock = None
        return 0

    def begin(self) -> None:
        """Resume if the run specification says so, take the run directory (rank 0: its lock, unless the
        launcher holds it, then options.json), install the signal handler and the progress display."""
        if self.spec.resume_path:
            self.load(self.spec.resume_path)
        if self.config.set_step is not None:
            self.step = self.config.set_step
        if self.is_main:
            if not self.run_dir_locked:
                self.run_dir_lock = RunDirLock(self.output_dir).acquire()
            self.prepare_output_dir()
        self.stop.install()
        self.final_step = curriculums.stage_boundaries(self.curriculum)[-1]
        if self.config.max_steps is not None:
            self.final_step = min(self.final_step, self.config.max_steps)
        bars = self.config.progress and self.is_main and sys.stderr.isatty()
        self.progress = Progress(self.curriculum, self.step, self.final_step, self.config.log_interval, bars)

    def prepare_output_dir(self) -> None:
        """Rank 0, holding the directory's lock: the run directory, without the temp files of killed
        checkpoint writes (no other run writes there), its metrics.jsonl cut back to the step a resumed
        run continues from (`rewind_metrics`), and options.json: the run specification, the processes,
        their threads and a module summary."""
        self.output_dir.mkdir(parents=True, exist_ok=True)
        for stale in remove_stale_temp_files(self.output_dir):
            logger.info("removed %s, left by a checkpoint write that was killed", stale.name)
        if self.spec.resume_path:  # one curve: the killed run's rows past the resumed step go
            rewound = rewind_metrics(self.output_dir, self.step)
            if rewound:
                logger.info("%s", rewound)
        modules = module_summary(generator=self.generator, discriminator=self.discriminator)
        options = {**self.spec.record(), "world_size": self.world_size, "device": str(self.device),
                   "threads": torch.get_num_threads(), "modules": modules}
        with open(self.output_dir / "options.json", "w") as f:
            json.dump(_jsonable(options), f, indent=2)
        logger.info("generator %d parameters, discriminator %d", modules["generator"]["parameters"],
                    modules["discriminator"]["parameters"])

    def steps_left(self) -> bool:
        return self.step < self.final_step and self.epoch < self.config.n_epochs and \
            not curriculums.is_final_stage(self.curriculum, self.step)

    def loader(self) -> Batches:
        """The batches of the current step's data loader, from the current batch of the epoch on; a new
        loader when the stage's loader_key changes (rank 0 writes real.png from the first)."""
        metadata = curriculums.extract_metadata(self.curriculum, self.step)
        key = self.loader_key(self.step)
        if key != self._loader_key:
            self._loader, self._loader_key = self.make_loader(metadata), key
            if self.is_main:
                self.write_real_grid(self._loader.dataset)
        self._loader.sampler.set_position(self.epoch, self.batch_in_epoch * int(metadata["batch_size"]))
        return Batches(self._loader, self.stop)

    def advance(self) -> bool:
        """Count the step just trained; returns whether the next step needs another loader."""
        self.step += 1
        self.batch_in_epoch += 1
        # Decide the data position before anything is saved, so a resume where the loader changes
        # continues exactly like the uninterrupted run.
        loader_changed = self.loader_key(self.step) != self._loader_key
        if loader_changed:  # a new loader abandons the current epoch
            self.epoch, self.batch_in_epoch = self.epoch + 1, 0
        return loader_changed

    def end_step(self, stats: dict, metadata: dict, started: float) -> None:
        """The work after a step, in this order: the metrics line and progress (rank 0), the stop on a
        streak of non-finite steps, sample grids and checkpoints at their intervals, the evaluation."""
        config = self.config
        if self.is_main:
            self.log_step(stats, metadata, started)
        self.check_nonfinite_streak(stats)
        self.check_drift(stats)
        if config.sample_interval and self.step % config.sample_interval == 0:
            if self.is_main:
                self.write_samples(metadata, stats["alpha"])
            self.save()
        if config.model_save_interval and self.step % config.model_save_interval == 0:
            self.save(numbered=True)
        if self.is_main and config.eval_freq and self.step % config.eval_freq == 0:
            self.evaluate(metadata)

    def log_step(self, stats: dict, metadata: dict, started: float) -> None:
        """Rank 0: a metrics line every log_interval steps (and at every skipped step), and the progress."""
        if stats["skipped"]:
            logger.warning("step %d: non-finite loss or gradient, optimiser step skipped", self.step)
        if self.step % self.config.log_interval == 0 or stats["skipped"] or self.step == 1:
            self.log_metrics({"step": self.step,
                              "stage": curriculums.stage_start(self.curriculum, self.step - 1),
                              "img_size": metadata["img_size"], "output_size": metadata["output_size"],
                              "batch_size": metadata["batch_size"], "sec_per_step": time.time() - started,
                              **stats, **({"drifting_since": self.drift.drifting_since}
                                          if self.drift.drifting_since is not None else {})})
        self.progress.end_step(self.step, stats)

    def check_drift(self, stats: dict) -> None:
        """Warn once (rank 0) when the generator's gradient norms say the run is drifting (DriftWatch)."""
        if self.drift.update(self.step, stats["g_grad_norm"]) and self.is_main:
            logger.warning("step %d: this run looks like it is drifting into noise: the median g_grad_norm of the "
                           "last %d steps is %.0f, above drift_g_grad_norm=%g, which healthy runs of this recipe stay "
                           "below; look at the latest sample grids, and start again with another --seed if they are "
                           "noise", self.step, self.drift.window, float(np.median(self.drift.norms)),
                           self.drift.threshold)

    def check_nonfinite_streak(self, stats: dict) -> None:
        """Stop the run (FloatingPointError) after too many skipped steps in a row."""
        self.nonfinite_streak = self.nonfinite_streak + 1 if stats["skipped"] else 0
        limit = MAX_OVERFLOW_STEPS if self.scaler.is_enabled() else MAX_NONFINITE_STEPS
        if self.nonfinite_streak >= limit:
            raise FloatingPointError(
                f"{limit} consecutive steps had non-finite losses or gradients (last at "
                f"step {self.step}); stopping. Last good checkpoint: "
                f"{self.describe_last_good_checkpoint()}; try a lower learning rate "
                f"or --precision bf16/fp32.")

    def end_early(self, stop: bool, failure: Optional[str]) -> int:
        """Before the next step, on every rank: a signal or a lost loader worker on some rank. Save, then
        exit 0 after a signal (a dead worker does not matter then: the run was stopping); a worker lost
        without one is a failure (LoaderFailed) after the save."""
        if stop:
            self.stop_by_signal()
            return 0
        saved = self.save()
        where = (f"the checkpoint of step {self.step} is saved" if saved else
                 f"last good checkpoint: {self.describe_last_good_checkpoint()}")
        raise LoaderFailed(f"a data loader worker died ({failure or 'on another process'}); {where}; continue "
                           f"with --resume auto")

    def stop_by_signal(self) -> None:
        """After SIGINT/SIGTERM on any rank: save (unless training is non-finite) and say so."""
        saved = self.save()
        if saved and self.is_main:
            logger.warning("stopped by signal at step %d; checkpoint saved", self.step)
        elif self.is_main:
            logger.warning("stopped by signal at step %d; last good checkpoint: %s", self.step,
                           self.describe_last_good_checkpoint())

    def finish(self) -> None:
        """The end (the final stage, --max_steps or --n_epochs): grids of the stage last trained (unless
        --sample_interval 0: never) and a checkpoint. FloatingPointError if the end comes during a streak of
        non-finite steps, when no checkpoint of it can be written."""
        if self.is_main and self.config.sample_interval:
            last = curriculums.last_trained_step(self.curriculum, max(self.step - 1, 0))
            self.write_samples(curriculums.extract_metadata(self.curriculum, last),
                               curriculums.fade_alpha(self.curriculum, last))
        if not self.save():
            raise FloatingPointError(
                f"training reached its end at step {self.step} during a streak of {self.nonfinite_streak} "
                f"non-finite steps, so no checkpoint of step {self.step} was written; last good checkpoint: "
                f"{self.describe_last_good_checkpoint()}")
        if self.is_main:
            logger.info("training finished at step %d; checkpoint in %s", self.step, self.output_dir)


def setup_distributed(rank: int, world_size: int, backend: str, init_method: Optional[str]) -> None:
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=world_size)


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
