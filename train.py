"""The MVCGAN training loop (docs/METHOD.md §7): one process of a (possibly single-process) job.

`train(rank, world_size, config)` schedules the phases of `losses.MVCGANLoss`,
averages gradients across processes, clips, steps the optimisers, keeps two EMAs,
changes curriculum stages, writes grids, metrics, checkpoints and evaluations, and
resumes exactly. `main.py` parses the command line and starts the processes.
"""
from __future__ import annotations

import copy
import json
import logging
import math
import random
import signal
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

import curriculums
from datasets import build_dataset
from discriminators.discriminators import CCSEncoderDiscriminator
from generators.generators import RenderOptions, build_generator
from losses import MVCGANLoss, PhaseConfig, topk_fraction
from siren.siren import compile_field
from utils.checkpoint import LATEST_NAME, load_checkpoint, save_checkpoint
from utils.cpu_runtime import keep_freed_memory
from utils.images import make_grid, save_image, to_uint8

logger = logging.getLogger("mvcgan.train")

EMA_DECAYS = (0.999, 0.9999)
NERF_NOISE_STEPS = 5000
MAX_NONFINITE_STEPS = 10
NUM_GRID_IMAGES = 20
GRID_ROW = 5


@dataclass
class TrainConfig:
    """The command line, as the training processes see it."""

    curriculum: str
    output_dir: str
    n_epochs: int = 3000
    sample_interval: int = 1000
    model_save_interval: int = 5000
    eval_freq: int = 0
    eval_dir: Optional[str] = None
    eval_metrics: str = "fid"
    load_dir: Optional[str] = None
    set_step: Optional[int] = None
    max_steps: Optional[int] = None
    num_workers: int = 0
    precision: str = "fp16"
    log_interval: int = 10
    seed: int = 0
    device: str = "auto"
    progress: bool = True
    compile: bool = False  # torch.compile the FiLM-SIREN (siren.compile_field); eager if no compiler
    keep_freed_memory: bool = False  # CPU: malloc keeps freed blocks (utils/cpu_runtime.py): faster, more RSS
    curriculum_overrides: dict = field(default_factory=dict)


# ------------------------------------------------------------------------ helpers
class ResumableDistributedSampler(DistributedSampler):
    """A DistributedSampler that can start an epoch part-way through (exact resume)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.start_index = 0

    def set_position(self, epoch: int, start_index: int) -> None:
        self.set_epoch(epoch)
        self.start_index = start_index

    def __iter__(self):
        indices = list(super().__iter__())
        return iter(indices[self.start_index:])

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

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "num_updates": self.num_updates, "decay": self.decay}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.num_updates = int(state["num_updates"])


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


def all_ranks_agree(flag: bool, device, world_size: int) -> bool:
    """True if `flag` is True on any rank (so every rank takes the same branch)."""
    if world_size <= 1:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item() > 0)


def rng_state() -> dict:
    """Every RNG a step can touch, in types that `torch.load(weights_only=True)` accepts."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": (name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached))}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


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


class GracefulStop:
    """SIGINT/SIGTERM set a flag; the loop saves a checkpoint and exits at the next step."""

    def __init__(self):
        self.requested = False
        self._previous = {}

    def install(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass

    def _handle(self, signum, frame):
        if self.requested:  # a second signal: stop right now
            raise KeyboardInterrupt
        self.requested = True
        logger.warning("received signal %d: saving a checkpoint and stopping after this step", signum)

    def restore(self):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


# ------------------------------------------------------------------------- the run
class Trainer:
    def __init__(self, rank: int, world_size: int, config: TrainConfig, device: torch.device):
        self.rank, self.world_size, self.config, self.device = rank, world_size, config, device
        self.is_main = rank == 0
        self.output_dir = Path(config.output_dir)
        self.curriculum = curriculums.get_curriculum(config.curriculum)
        if any(isinstance(k, int) for k in config.curriculum_overrides):  # new stages replace the old ones
            for key in [k for k in self.curriculum if isinstance(k, int)]:
                del self.curriculum[key]
        self.curriculum.update(config.curriculum_overrides)
        curriculums.validate_curriculum(self.curriculum, config.curriculum)
        meta0 = curriculums.extract_metadata(self.curriculum, 0)

        if device.type == "cpu" and config.keep_freed_memory:
            keep_freed_memory()  # large activations are reused, not re-faulted, every step
        torch.manual_seed(config.seed + rank)
        np.random.seed(config.seed + rank)
        random.seed(config.seed + rank)

        self.generator = build_generator(meta0).to(device)
        self.discriminator = CCSEncoderDiscriminator(
            latent_dim=int(meta0["latent_dim"]), width_factor=float(meta0.get("disc_width_factor", 1.0))).to(device)
        if world_size > 1:  # identical initial weights on every rank
            for tensor in [*self.generator.parameters(), *self.discriminator.parameters()]:
                dist.broadcast(tensor.data, src=0)
        self.emas = [EMA(self.generator, decay) for decay in EMA_DECAYS]
        if config.compile:  # after the EMA copies, which stay eager
            compile_field(self.generator.siren)

        betas = tuple(float(b) for b in meta0["betas"])
        if meta0.get("unique_lr", False):
            mapping = list(self.generator.siren.mapping_network.parameters())
            mapping_ids = {id(p) for p in mapping}
            groups = [{"name": "mapping_network", "params": mapping},
                      {"name": "generator", "params": [p for p in self.generator.parameters() if id(p) not in mapping_ids]}]
        else:
            groups = [{"name": "generator", "params": list(self.generator.parameters())}]
        self.optimizer_G = torch.optim.Adam(groups, lr=meta0["gen_lr"], betas=betas,
                                            weight_decay=meta0.get("weight_decay", 0))
        self.optimizer_D = torch.optim.Adam(self.discriminator.parameters(), lr=meta0["disc_lr"], betas=betas,
                                            weight_decay=meta0.get("weight_decay", 0))

        use_cuda = device.type == "cuda"
        self.amp_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(config.precision) if use_cuda else None
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        amp_dtype = self.amp_dtype
        self.autocast = (lambda: torch.autocast("cuda", dtype=amp_dtype)) if amp_dtype else nullcontext
        self.loss = MVCGANLoss(self.generator, self.discriminator, self.scaler, self.autocast)

        self.step, self.epoch, self.batch_in_epoch, self.nonfinite_streak = 0, 0, 0, 0
        self.fixed_z = torch.randn(NUM_GRID_IMAGES, self.generator.z_dim,
                                   generator=torch.Generator().manual_seed(1234)).to(device)
        self.stop = GracefulStop()
        self._inception = None  # loaded on the first evaluation

    # -------------------------------------------------------------- checkpoints
    def state(self, rng_states) -> dict:
        return {
            "step": self.step, "epoch": self.epoch, "sampler": {"epoch": self.epoch, "batch": self.batch_in_epoch},
            "curriculum_name": self.config.curriculum, "curriculum": self.curriculum,
            "generator": self.generator.state_dict(), "discriminator": self.discriminator.state_dict(),
            "generator_ema": self.emas[0].module.state_dict(), "generator_ema2": self.emas[1].module.state_dict(),
            "ema_num_updates": [ema.num_updates for ema in self.emas],
            "optimizer_G": self.optimizer_G.state_dict(), "optimizer_D": self.optimizer_D.state_dict(),
            "scaler": self.scaler.state_dict(), "rng": rng_states, "world_size": self.world_size,
        }

    def save(self, numbered: bool = False) -> None:
        """Collective: every rank contributes its RNG state; rank 0 writes."""
        states = [None] * self.world_size
        if self.world_size > 1:
            dist.all_gather_object(states, rng_state())
        else:
            states = [rng_state()]
        if self.is_main:
            state = self.state(states)
            save_checkpoint(self.output_dir / LATEST_NAME, state)
            if numbered:
                save_checkpoint(self.output_dir / f"checkpoint_{self.step:06d}.pth", state)

    def load(self, load_dir) -> None:
        state = load_checkpoint(load_dir, map_location=self.device)
        if state.get("curriculum_name") != self.config.curriculum:
            logger.warning("resuming a %s checkpoint with curriculum %s", state.get("curriculum_name"),
                           self.config.curriculum)
        self.generator.load_state_dict(state["generator"])
        if "discriminator" in state:
            self.discriminator.load_state_dict(state["discriminator"])
        else:
            logger.warning("%s has no discriminator: fine-tuning starts from a freshly initialised one", load_dir)
        for ema, key, updates in zip(self.emas, ("generator_ema", "generator_ema2"), state["ema_num_updates"]):
            ema.module.load_state_dict(state[key])
            ema.num_updates = int(updates)
        self.step, self.epoch = int(state["step"]), int(state.get("epoch", 0))
        if "optimizer_G" not in state:  # an imported checkpoint (import_checkpoint.py): weights and step only
            logger.warning("%s has no optimiser, scaler or data-position state (an imported checkpoint): "
                           "continuing the curriculum from step %d with fresh Adam moments", load_dir, self.step)
            return
        self.optimizer_G.load_state_dict(state["optimizer_G"])
        self.optimizer_D.load_state_dict(state["optimizer_D"])
        self.scaler.load_state_dict(state["scaler"])
        self.batch_in_epoch = int(state["sampler"]["batch"])
        rng = state.get("rng") or []
        if state.get("world_size") == self.world_size and self.rank < len(rng):
            set_rng_state(rng[self.rank])
        else:
            logger.warning("checkpoint was written by %s processes, now %d: RNG streams restart",
                           state.get("world_size"), self.world_size)

    # -------------------------------------------------------------------- data
    def make_loader(self, metadata: dict):
        dataset = build_dataset(metadata, int(metadata["output_size"]), flip=True)
        sampler = ResumableDistributedSampler(dataset, num_replicas=self.world_size, rank=self.rank,
                                              shuffle=True, seed=self.config.seed, drop_last=True)
        loader = DataLoader(dataset, batch_size=int(metadata["batch_size"]), sampler=sampler, drop_last=True,
                            num_workers=self.config.num_workers, pin_memory=self.device.type == "cuda",
                            persistent_workers=False,
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
        import fid_evaluation

        metrics = tuple(m for m in self.config.eval_metrics.split(",") if m)
        try:
            if self._inception is None and {"fid", "kid"} & set(metrics):
                self._inception = fid_evaluation.load_inception(device=self.device)
            result = fid_evaluation.evaluate(self.emas[0].module, metadata, metrics=metrics,
                                             real_dir=self.config.eval_dir, device=self.device,
                                             inception=self._inception,
                                             alpha=curriculums.fade_alpha(self.curriculum, self.step - 1))
        except fid_evaluation.InceptionWeightsMissing as error:
            logger.error("evaluation disabled for this run: %s", error)
            self.config.eval_freq = 0
            return
        self.log_metrics({"step": self.step, "eval": result})

    def log_metrics(self, record: dict) -> None:
        with open(self.output_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(_jsonable(record)) + "\n")

    # ------------------------------------------------------------------ loop
    def set_learning_rates(self, metadata: dict) -> None:
        for group in self.optimizer_G.param_groups:
            scale = 5e-2 if group.get("name") == "mapping_network" else 1.0
            group["lr"] = metadata["gen_lr"] * scale
            group["betas"] = tuple(float(b) for b in metadata["betas"])
            group["weight_decay"] = metadata.get("weight_decay", 0)
        for group in self.optimizer_D.param_groups:
            group["lr"] = metadata["disc_lr"]
            group["betas"] = tuple(float(b) for b in metadata["betas"])
            group["weight_decay"] = metadata.get("weight_decay", 0)

    def finish_phase(self, module, optimizer, loss_value, grad_clip):
        """Average, unscale, clip and step. Returns (stepped, gradient norm before clipping)."""
        average_gradients(module, self.world_size)
        finite = torch.isfinite(torch.as_tensor(loss_value, dtype=torch.float32)).item()
        if not all_ranks_agree(not finite, self.device, self.world_size):
            self.scaler.unscale_(optimizer)
            norm = torch.nn.utils.clip_grad_norm_(module.parameters(), grad_clip)
            self.scaler.step(optimizer)
            optimizer.zero_grad(set_to_none=True)
            return True, float(norm)
        optimizer.zero_grad(set_to_none=True)
        return False, float("nan")

    def loader_key(self, step: int) -> int:
        """The stage `step` is in (its first step): a new stage gets new metadata and a new loader."""
        return curriculums.last_upsample_step(self.curriculum, step)

    def after_step(self, stats: dict, metadata: dict, started: float, total_bar, stage_bar) -> None:
        """Rank 0: log a metrics line every log_interval steps and move the bars."""
        if stats["skipped"]:
            logger.warning("step %d: non-finite loss, optimiser step skipped", self.step)
        if self.step % self.config.log_interval == 0 or stats["skipped"] or self.step == 1:
            self.log_metrics({"step": self.step,
                              "stage": curriculums.last_upsample_step(self.curriculum, self.step - 1),
                              "img_size": metadata["img_size"], "output_size": metadata["output_size"],
                              "batch_size": metadata["batch_size"], "sec_per_step": time.time() - started,
                              **stats})
        total_bar.update(1)
        if stage_bar is not None:
            stage_bar.update(1)
            stage_bar.set_postfix(d=f"{stats['d_loss']:.3f}", g=f"{stats['g_loss']:.3f}",
                                  photo=f"{stats['photometric']:.3f}", a=f"{stats['alpha']:.2f}")

    def train_step(self, real: torch.Tensor, metadata: dict) -> dict:
        step = self.step
        alpha = curriculums.fade_alpha(self.curriculum, step)
        # Density noise decays to 0 over nerf_noise_steps (5000 in the published code).
        nerf_noise = max(0.0, 1.0 - step / float(metadata.get("nerf_noise_steps", NERF_NOISE_STEPS)))
        options = RenderOptions.from_metadata(metadata, nerf_noise=nerf_noise)
        cfg = PhaseConfig(alpha=alpha, batch_split=int(metadata["batch_split"]),
                          latent_dim=int(metadata["latent_dim"]), z_dist=metadata.get("z_dist", "gaussian"),
                          r1_lambda=float(metadata["r1_lambda"]), pos_lambda=float(metadata["pos_lambda"]),
                          z_lambda=float(metadata.get("z_lambda", 0)),
                          reproj_lambda=float(metadata.get("reproj_lambda", 0)),
                          topk_fraction=topk_fraction(step, metadata.get("topk_interval"), metadata.get("topk_v")))
        self.set_learning_rates(metadata)
        self.generator.train()
        self.discriminator.train()

        d_stats = self.loss.accumulate_discriminator_gradients(real, options, cfg)
        d_ok, d_norm = self.finish_phase(self.discriminator, self.optimizer_D, d_stats["d_loss"],
                                         metadata["grad_clip"])
        g_stats = self.loss.accumulate_generator_gradients(real.shape[0], self.device, options, cfg)
        self.discriminator.zero_grad(set_to_none=True)  # the G phase also filled D's grads
        g_ok, g_norm = self.finish_phase(self.generator, self.optimizer_G, g_stats["g_loss"], metadata["grad_clip"])
        if d_ok or g_ok:  # GradScaler.update needs at least one recorded optimiser step
            self.scaler.update()
        for ema in self.emas:
            ema.update(self.generator)
        stats = {k: float(v) for k, v in {**d_stats, **g_stats}.items()}
        stats.update(alpha=alpha, topk=cfg.topk_fraction, nerf_noise=nerf_noise, skipped=not (d_ok and g_ok),
                     d_grad_norm=d_norm, g_grad_norm=g_norm)
        return stats

    def run(self) -> int:
        config = self.config
        if config.load_dir:
            self.load(config.load_dir)
        if config.set_step is not None:
            self.step = config.set_step
        if self.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            options = {"args": asdict(config), "world_size": self.world_size, "device": str(self.device),
                       "curriculum": self.curriculum,
                       "modules": module_summary(generator=self.generator, discriminator=self.discriminator)}
            with open(self.output_dir / "options.json", "w") as f:
                json.dump(_jsonable(options), f, indent=2)
            logger.info("generator %d parameters, discriminator %d",
                        options["modules"]["generator"]["parameters"],
                        options["modules"]["discriminator"]["parameters"])
        self.stop.install()
        boundaries = curriculums.stage_boundaries(self.curriculum)
        final_step = boundaries[-1]
        if config.max_steps is not None:
            final_step = min(final_step, config.max_steps)
        bars = config.progress and self.is_main
        total_bar = tqdm(total=final_step, initial=min(self.step, final_step), desc="total", disable=not bars,
                         dynamic_ncols=True)
        stage_bar = None
        loader, loader_key = None, None
        try:
            while self.step < final_step and self.epoch < config.n_epochs:
                if curriculums.is_final_stage(self.curriculum, self.step):
                    break
                metadata = curriculums.extract_metadata(self.curriculum, self.step)
                key = self.loader_key(self.step)
                if key != loader_key:
                    loader, loader_key = self.make_loader(metadata), key
                    if self.is_main:
                        self.write_real_grid(loader.dataset)
                    if bars:
                        stage_start = curriculums.last_upsample_step(self.curriculum, self.step)
                        stage_end = min(curriculums.next_upsample_step(self.curriculum, self.step) or final_step,
                                        final_step)
                        if stage_bar is not None:
                            stage_bar.close()
                        stage_bar = tqdm(total=stage_end - stage_start, initial=self.step - stage_start,
                                         desc=f"stage@{stage_start}", leave=False, dynamic_ncols=True)
                loader.sampler.set_position(self.epoch, self.batch_in_epoch * int(metadata["batch_size"]))
                for real, _ in loader:
                    started = time.time()
                    stats = self.train_step(real.to(self.device, non_blocking=True), metadata)
                    self.step += 1
                    self.batch_in_epoch += 1
                    # Decide the data position before anything is saved, so a resume at a
                    # stage boundary continues exactly like the uninterrupted run.
                    stage_changed = self.loader_key(self.step) != key
                    if stage_changed:  # a stage change abandons the current epoch
                        self.epoch, self.batch_in_epoch = self.epoch + 1, 0
                    if self.is_main:
                        self.after_step(stats, metadata, started, total_bar, stage_bar)
                    self.nonfinite_streak = self.nonfinite_streak + 1 if stats["skipped"] else 0
                    if self.nonfinite_streak >= MAX_NONFINITE_STEPS:
                        raise FloatingPointError(
                            f"{MAX_NONFINITE_STEPS} consecutive steps had non-finite losses (last at step "
                            f"{self.step}); stopping. The last good checkpoint in {self.output_dir} is intact; "
                            f"try a lower learning rate or --precision bf16/fp32.")
                    if config.sample_interval and self.step % config.sample_interval == 0:
                        if self.is_main:
                            self.write_samples(metadata, stats["alpha"])
                        self.save()
                    if config.model_save_interval and self.step % config.model_save_interval == 0:
                        self.save(numbered=True)
                    if self.is_main and config.eval_freq and self.step % config.eval_freq == 0:
                        self.evaluate(metadata)
                    if all_ranks_agree(self.stop.requested, self.device, self.world_size):
                        self.save()
                        logger.warning("stopped by signal at step %d; checkpoint saved", self.step)
                        return 0
                    if stage_changed or self.step >= final_step:
                        break
                else:
                    self.epoch, self.batch_in_epoch = self.epoch + 1, 0
            # The end: the final (empty) stage, --max_steps or n_epochs.
            if self.is_main:
                last = curriculums.last_trained_step(self.curriculum, max(self.step - 1, 0))
                self.write_samples(curriculums.extract_metadata(self.curriculum, last),
                                   curriculums.fade_alpha(self.curriculum, last))
            self.save()
            if self.is_main:
                logger.info("training finished at step %d; checkpoint in %s", self.step, self.output_dir)
        finally:
            total_bar.close()
            if stage_bar is not None:
                stage_bar.close()
            self.stop.restore()
        return 0


def setup_distributed(rank: int, world_size: int, backend: str, init_method: Optional[str]) -> None:
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=world_size)


def train(rank: int, world_size: int, config: TrainConfig, init_method: Optional[str] = None,
          local_rank: Optional[int] = None) -> int:
    """One training process. On CUDA each process uses the GPU `local_rank` with NCCL."""
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"%(asctime)s [rank {rank}] %(levelname)s %(message)s")
    local_rank = rank if local_rank is None else local_rank
    use_cuda = config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available())
    if use_cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
        torch.backends.cudnn.benchmark = True
    else:
        device = torch.device("cpu")
    setup_distributed(rank, world_size, "nccl" if use_cuda else "gloo", init_method)
    try:
        return Trainer(rank, world_size, config, device).run()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
