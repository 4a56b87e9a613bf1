"""The MVCGAN training loop (docs/METHOD.md §7): a `Trainer` of one process of a (possibly single-process) job.

`Trainer.__init__` builds the networks, their two EMAs, the optimisers and the loss object;
`Trainer.run` takes the run directory and the stop signals, then `training_loop` reads top to
bottom: per step, fetch a batch, train it (`train_step`: the phases of `losses.MVCGANLoss`,
gradients averaged across processes, clipped, the optimisers stepped, the EMAs updated), count it,
then log, grids, checkpoints and evaluations at their intervals (`end_step`); a stage change needs
no more than a new loader. Stopping and progress come in as callables (`abort_fn`, `progress_fn`).
The step reads its stage's values as `StepOptions` (training/step_options.py). The plumbing is
called, not inlined: signals and loader workers (training/faults.py), progress (training/progress.py),
checkpoints (training/checkpointing.py), grids and evaluations (training/snapshots.py), the data
(training/data.py), the process group (training/distributed.py).
"""
from __future__ import annotations

import copy
import dataclasses
import logging
import random
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

import curriculums
from generators.generators import RenderOptions, sdf_beta_at
from losses import MVCGANLoss, PhaseConfig, topk_fraction
from run_spec import RunSpec, TrainConfig, build_networks, resolve_run
from siren.siren import compile_field
from training import checkpointing, snapshots
from training.checkpointing import Checkpoints
from training.data import make_loader
from training.distributed import any_rank, average_gradients, every_rank, max_over_ranks
from training.faults import Batches, DriftWatch, GracefulStop, LoaderFailed, check_nonfinite_streak
from training.progress import MetricsLog, Progress
from training.step_options import StepOptions
from utils.checkpoint import TrainingState, read_checkpoint, resolve_checkpoint_path
from utils.cpu_runtime import flush_denormals, keep_freed_memory
from utils.memory_model import AUTO, auto_batch_split
from utils.run_dir import RunDirLock, rewind_metrics

logger = logging.getLogger("mvcgan.train")

EMA_DECAYS = (0.999, 0.9999)


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
        self.checkpoints = Checkpoints(self.output_dir, self.is_main, world_size)
        self.metrics_log = MetricsLog(self.output_dir)
        self.evaluation = snapshots.Evaluation(self.config.eval_metrics, self.config.eval_dir, device)
        self.fixed_z = snapshots.grid_latents(self.generator.z_dim, device)
        self.stop = GracefulStop(announce=self.is_main)
        self.run_dir_locked, self.run_dir_lock = run_dir_locked, None
        self._loader, self._loader_key = None, None
        self._auto_splits = {}  # {stage size: batch_split} of the stages whose batch_split is "auto"
        self.final_step, self.progress = None, None  # set by begin()

    # ------------------------------------------------------------------ the loop
    def run(self) -> int:
        """Train until the final (empty) stage, --max_steps or --n_epochs, then write grids and a
        checkpoint; on SIGINT/SIGTERM, or when a data loader worker dies, save and stop before the next
        step. Returns the exit code."""
        try:
            self.begin()
            return self.training_loop(abort_fn=lambda: self.stop.requested, progress_fn=self.progress)
        finally:
            if self.progress is not None:
                self.progress.close()
            self.stop.restore()
            if self.run_dir_lock is not None:
                self.run_dir_lock.release()
                self.run_dir_lock = None

    def training_loop(self, abort_fn: Callable[[], bool],
                      progress_fn: Callable[[int, Optional[dict]], None]) -> int:
        """Train from the current step to the end (`finish`). `abort_fn()`, true on any rank: save and stop
        before the next step (`end_early`). `progress_fn(step, None)` as a step starts, on every rank;
        `progress_fn(step, stats)` on rank 0 once it is counted. Returns the exit code."""
        while self.steps_left():
            batches = self.loader()
            for batch in batches:
                # Every rank takes the same branch: a stop asked on any of them, a worker lost on any.
                stop, lost_worker = any_rank([abort_fn(), batch is None], self.device, self.world_size)
                if stop or lost_worker:
                    return self.end_early(stop, batches.failure)
                started = time.time()
                # Every step reads its own stage's values: a stage that changes only a learning
                # rate takes effect at its first step, without a new loader or a new fade.
                metadata = curriculums.extract_metadata(self.curriculum, self.step)
                step_options = StepOptions.from_metadata(metadata)
                progress_fn(self.step, None)
                real, labels = batch
                real_poses = labels if step_options.real_pose_lambda > 0 else None
                stats = self.train_step(real.to(self.device, non_blocking=True), metadata, real_poses)
                loader_changed = self.advance()
                if self.is_main:
                    self.log_step(stats, step_options, started)
                    progress_fn(self.step, stats)
                self.end_step(stats, metadata)
                if loader_changed or self.step >= self.final_step:
                    break
            else:
                self.epoch, self.batch_in_epoch = self.epoch + 1, 0
        self.finish()
        return 0

    def train_step(self, real: torch.Tensor, metadata: dict, real_poses: Optional[torch.Tensor] = None) -> dict:
        """One step on real images (B, 3, S, S); real_poses (B, 2) (pitch, yaw), the procedural data's true
        poses, are used where the curriculum's real_pose_lambda asks. `metadata`: the stage's values
        (curriculums.extract_metadata), read once into the loop's StepOptions, the loss's PhaseConfig and the
        renderer's RenderOptions."""
        step, step_options = self.step, StepOptions.from_metadata(metadata)
        alpha = curriculums.fade_alpha(self.curriculum, step)
        # Density noise decays to 0 over nerf_noise_steps (5000 in the published code).
        nerf_noise = max(0.0, 1.0 - step / step_options.nerf_noise_steps)
        render_options = RenderOptions.from_metadata(metadata, nerf_noise=nerf_noise)
        cfg = PhaseConfig(alpha=alpha, batch_split=self.batch_split(step_options, metadata),
                          latent_dim=int(metadata["latent_dim"]), z_dist=metadata["z_dist"],
                          r1_lambda=float(metadata["r1_lambda"]), pos_lambda=float(metadata["pos_lambda"]),
                          z_lambda=float(metadata["z_lambda"]), reproj_lambda=float(metadata["reproj_lambda"]),
                          topk_fraction=topk_fraction(step, step_options.topk_interval, step_options.topk_v),
                          photometric_input=str(metadata["photometric_input"]),
                          real_pose_lambda=step_options.real_pose_lambda)
        self.set_learning_rates(step_options)
        sdf_beta = sdf_beta_at(metadata, step)
        for generator in (self.generator, *(ema.module for ema in self.emas)):
            generator.sdf_beta = sdf_beta
        if self.scaler.is_enabled() and self.scaler.get_scale() < 1:
            # As published: the fp16 loss scale never stays below 1 (there small gradients underflow).
            self.scaler.update(1.0)
        self.generator.train()
        self.discriminator.train()

        d_stats = self.loss.accumulate_discriminator_gradients(real, render_options, cfg, real_poses)
        d_ok, d_norm = self.finish_phase(self.discriminator, self.optimizer_D, d_stats["d_loss"],
                                         step_options.grad_clip)
        g_stats = self.loss.accumulate_generator_gradients(real.shape[0], self.device, render_options, cfg)
        self.discriminator.zero_grad(set_to_none=True)  # the G phase also filled D's grads
        g_ok, g_norm = self.finish_phase(self.generator, self.optimizer_G, g_stats["g_loss"], step_options.grad_clip)
        self.scaler.update()  # both phases unscaled, so it has their overflow checks even if neither stepped
        for ema in self.emas:
            ema.update(self.generator)
        stats = {k: float(v) for k, v in {**d_stats, **g_stats}.items()}
        stats.update(alpha=alpha, topk=cfg.topk_fraction, nerf_noise=nerf_noise, skipped=not (d_ok and g_ok),
                     d_grad_norm=d_norm, g_grad_norm=g_norm, batch_split=cfg.batch_split)
        return stats

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
        stepped = every_rank(finite_loss and finite_grad, self.device, self.world_size)
        if stepped:
            self.scaler.step(optimizer)
        optimizer.zero_grad(set_to_none=True)
        return stepped, float(norm)

    def end_step(self, stats: dict, metadata: dict) -> None:
        """The work after a step (its metrics line and progress written): the stop on a streak of non-finite
        steps, the drift warning, sample grids and checkpoints at their intervals, the evaluation."""
        config = self.config
        self.nonfinite_streak = self.nonfinite_streak + 1 if stats["skipped"] else 0
        check_nonfinite_streak(self.nonfinite_streak, self.step, self.scaler.is_enabled(),
                               self.checkpoints.describe_last_good())
        if self.drift.update(self.step, stats["g_grad_norm"]) and self.is_main:
            self.drift.warn(self.step)
        if config.sample_interval and self.step % config.sample_interval == 0:
            if self.is_main:
                self.write_samples(metadata, stats["alpha"])
            self.save()
        if config.model_save_interval and self.step % config.model_save_interval == 0:
            self.save(numbered=True)
        if self.is_main and config.eval_freq and self.step % config.eval_freq == 0:
            self.evaluate(metadata)

    # ------------------------------------------------------------- the schedule
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
        checkpoint writes, its metrics.jsonl cut back to the step a resumed run continues from
        (`rewind_metrics`), and options.json."""
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.checkpoints.remove_stale_writes()
        if self.spec.resume_path:  # one curve: the killed run's rows past the resumed step go
            rewound = rewind_metrics(self.output_dir, self.step)
            if rewound:
                logger.info("%s", rewound)
        snapshots.write_options(self.output_dir, self.spec, self.world_size, self.device, self.generator,
                                self.discriminator)

    def steps_left(self) -> bool:
        return self.step < self.final_step and self.epoch < self.config.n_epochs and \
            not curriculums.is_final_stage(self.curriculum, self.step)

    def loader_key(self, step: int) -> tuple:
        """What the data loader at `step` depends on. As published, a stage that changes the batch
        size rebuilds the loader (and starts a new epoch); one that changes only other values
        (learning rates, loss weights) keeps it. The image size is part of the key too: the
        published loop would keep feeding the old size there (and fail on it)."""
        metadata = curriculums.extract_metadata(self.curriculum, step)
        return metadata.get("batch_size"), metadata.get("output_size")  # (None, None) in the final stage

    def loader(self) -> Batches:
        """The batches of the current step's data loader, from the current batch of the epoch on; a new
        loader when the stage's loader_key changes (rank 0 writes real.png from the first)."""
        metadata = curriculums.extract_metadata(self.curriculum, self.step)
        key = self.loader_key(self.step)
        if key != self._loader_key:
            self._loader, self._loader_key = self.make_loader(metadata), key
            if self.is_main:
                snapshots.write_real_grid(self.output_dir, self._loader.dataset)
        self._loader.sampler.set_position(self.epoch, self.batch_in_epoch * int(metadata["batch_size"]))
        return Batches(self._loader, self.stop)

    def make_loader(self, metadata: dict) -> DataLoader:
        return make_loader(metadata, self.rank, self.world_size, self.config.seed, self.config.num_workers,
                           pin_memory=self.device.type == "cuda")

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

    def set_learning_rates(self, step_options: StepOptions) -> None:
        """The stage's Adam settings (its learning rates take effect at its first step); the mapping network's
        group, with unique_lr, at 5e-2 of the generator's rate."""
        for group in self.optimizer_G.param_groups:
            scale = 5e-2 if group.get("name") == "mapping_network" else 1.0
            group["lr"] = step_options.gen_lr * scale
            group["betas"] = step_options.betas
            group["weight_decay"] = step_options.weight_decay
        for group in self.optimizer_D.param_groups:
            group["lr"] = step_options.disc_lr
            group["betas"] = step_options.betas
            group["weight_decay"] = step_options.weight_decay

    def batch_split(self, step_options: StepOptions, metadata: dict) -> int:
        """The stage's batch_split. "auto" (utils/memory_model.py, from the stage's `metadata`) is chosen at the
        first step of each stage size from the device's memory, the largest choice of all ranks (they must
        agree: the G phase sums the chunks' losses), and logged."""
        if step_options.batch_split != AUTO:
            return int(step_options.batch_split)
        size = (step_options.batch_size, step_options.img_size, step_options.num_steps, step_options.output_size)
        if size not in self._auto_splits:
            choice = auto_batch_split(metadata, self.device, self.config.precision)
            split = max_over_ranks(choice.batch_split, self.device, self.world_size)
            self._auto_splits[size] = split
            if self.is_main:
                logger.info("step %d, batch %d, %d px NeRF: %s%s", self.step, step_options.batch_size,
                            step_options.img_size, choice.describe(),
                            "" if split == choice.batch_split else f"; {split} chunks, as another rank needs")
        return self._auto_splits[size]

    # ------------------------------------------------------ logs, grids, evaluations
    def log_step(self, stats: dict, step_options: StepOptions, started: float) -> None:
        """Rank 0: a metrics line every log_interval steps (and at every skipped step)."""
        if stats["skipped"]:
            logger.warning("step %d: non-finite loss or gradient, optimiser step skipped", self.step)
        if self.step % self.config.log_interval == 0 or stats["skipped"] or self.step == 1:
            self.metrics_log.append({"step": self.step,
                                     "stage": curriculums.stage_start(self.curriculum, self.step - 1),
                                     "img_size": step_options.img_size, "output_size": step_options.output_size,
                                     "batch_size": step_options.batch_size, "sec_per_step": time.time() - started,
                                     **stats, **({"drifting_since": self.drift.drifting_since}
                                                 if self.drift.drifting_since is not None else {})})

    def write_samples(self, metadata: dict, alpha: float) -> None:
        """Rank 0: the sample grids of this step (training/snapshots.py)."""
        snapshots.write_sample_grids(self.output_dir, self.step, self.generator, self.emas[0].module, self.fixed_z,
                                     metadata, alpha, self.autocast, self.device)

    def evaluate(self, metadata: dict) -> None:
        """Rank 0: score the EMA generator; an evaluation that cannot run disables evaluation, not training."""
        result = self.evaluation(self.emas[0].module, metadata, curriculums.fade_alpha(self.curriculum, self.step - 1))
        if result is None:
            self.config.eval_freq = 0
            return
        self.metrics_log.append({"step": self.step, "eval": result})

    # ------------------------------------------------------------------ checkpoints
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
                               self.step, self.checkpoints.describe_last_good())
            return False
        self.checkpoints.save(self.state, self.step, numbered)
        return True

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
        saved = checkpointing.check_resumable(path, state, self.config, self.generator, self.discriminator,
                                              self.is_main)
        self.checkpoints.last_good = (resolve_checkpoint_path(path), saved.step)
        checkpointing.restore_weights(saved, path, self.generator, self.discriminator, self.emas)
        self.step, self.epoch = saved.step, saved.epoch
        if self.is_main:
            logger.info("resumed from %s at step %d", path, self.step)
        if saved.imported:  # import_checkpoint.py: weights and step only
            logger.warning("%s has no optimiser, scaler or data-position state (an imported checkpoint): "
                           "continuing the curriculum from step %d with fresh Adam moments", path, self.step)
            return
        checkpointing.restore_optimisation(saved, path, self.optimizer_G, self.optimizer_D, self.scaler)
        self.batch_in_epoch = saved.batch_in_epoch
        checkpointing.restore_rng_streams(saved, self.rank, self.world_size)

    # ------------------------------------------------------------------ the end
    def end_early(self, stop: bool, failure: Optional[str]) -> int:
        """Before the next step, on every rank: a signal or a lost loader worker on some rank. Save, then
        exit 0 after a signal (a dead worker does not matter then: the run was stopping); a worker lost
        without one is a failure (LoaderFailed) after the save."""
        if stop:
            self.stop_by_signal()
            return 0
        saved = self.save()
        where = (f"the checkpoint of step {self.step} is saved" if saved else
                 f"last good checkpoint: {self.checkpoints.describe_last_good()}")
        raise LoaderFailed(f"a data loader worker died ({failure or 'on another process'}); {where}; continue "
                           f"with --resume auto")

    def stop_by_signal(self) -> None:
        """After SIGINT/SIGTERM on any rank: save (unless training is non-finite) and say so."""
        saved = self.save()
        if saved and self.is_main:
            logger.warning("stopped by signal at step %d; checkpoint saved", self.step)
        elif self.is_main:
            logger.warning("stopped by signal at step %d; last good checkpoint: %s", self.step,
                           self.checkpoints.describe_last_good())

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
                f"{self.checkpoints.describe_last_good()}")
        if self.is_main:
            logger.info("training finished at step %d; checkpoint in %s", self.step, self.output_dir)
