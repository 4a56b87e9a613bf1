"""A training run's options, resolved once into the run specification every process trusts.

`TrainConfig` holds the options of a run: main.py's flags take their defaults from it.
`resolve_run(config)` turns it into a `RunSpec`: the named curriculum with the overrides
(those recorded in the checkpoint being resumed, then the run's own `--set` values),
validated; the checkpoint to resume, read and verified; every option decided. `check_run`
then checks what can still fail before a process starts (the dataset, the metrics, the field's fast paths, the
checkpoint's shapes). main.py does both once and hands the RunSpec to every training
process, which writes it to options.json (rank 0) and reads the resumed weights without
hashing them again. Model: StyleGAN3's train.py -> training_loop(**c), training_options.json.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Tuple

import torch

import curriculums
from datasets import DatasetError, check_dataset
from synthetic_heads import PROCEDURAL_DATASETS
from discriminators.discriminators import CCSEncoderDiscriminator
from generators.generators import build_generator
from metrics.metric_main import parse_metrics
from siren.siren import check_fast_paths
from utils.checkpoint import (LATEST_NAME, CheckpointError, checkpoint_mismatch, read_checkpoint, recorded_run,
                              resolve_checkpoint_path)

EVAL_FREQ = 5000  # steps between evaluations when --eval_freq is not given (Synthetic runs: none)


@dataclass
class TrainConfig:
    """The options of a training run. main.py's flags (same names) take their defaults from here."""

    curriculum: str
    output_dir: str = "runs/debug"
    n_epochs: int = 3000
    sample_interval: int = 200
    model_save_interval: int = 5000
    eval_freq: Optional[int] = None  # None: EVAL_FREQ, or 0 (off) for the Synthetic curriculum
    eval_dir: Optional[str] = None
    eval_metrics: str = "fid"
    load_dir: Optional[str] = None
    resume: str = "never"  # "auto": continue output_dir's checkpoint.pth when there is one
    set_step: Optional[int] = None
    max_steps: Optional[int] = None
    num_workers: int = 2
    precision: str = "fp16"
    log_interval: int = 10
    seed: int = 0
    device: str = "auto"
    progress: bool = True
    compile: bool = False  # torch.compile the FiLM-SIREN (siren.compile_field); eager if no compiler
    keep_freed_memory: bool = False  # CPU: malloc keeps freed blocks (utils/cpu_runtime.py): faster, more RSS
    # curriculums.apply_overrides entries: 'KEY' / 'STAGE.KEY' values (main.py --set) or whole stages.
    curriculum_overrides: dict = field(default_factory=dict)
    allow_curriculum_change: bool = False  # resume a checkpoint of another curriculum on purpose
    start_over: bool = False  # main.py: a fresh run in a folder with another run's files (moved aside first)
    threads: Optional[int] = None  # torch CPU threads per process (None: torch's choice)


@dataclass(frozen=True)
class RunSpec:
    """A run, resolved: what every training process gets."""

    config: TrainConfig               # every option decided; curriculum_overrides = recorded + --set
    curriculum: dict                  # the named curriculum with those overrides, validated
    resume_path: Optional[str] = None   # the checkpoint file to continue from (None: a fresh start)
    resume_digest: Optional[str] = None  # its checksum, verified by resolve_run (None: it has none)

    def record(self) -> dict:
        """What options.json holds of it."""
        return {"args": dataclasses.asdict(self.config), "curriculum": self.curriculum,
                "resume_from": None if self.resume_path is None else
                {"path": self.resume_path, "checksum": self.resume_digest}}


# ------------------------------------------------------------------------- resolution
def resolve_run(config: TrainConfig) -> Tuple[RunSpec, Optional[dict]]:
    """(the run specification, the state of the checkpoint it resumes or None). The state is for a
    training process in this same process, which then need not read the file again."""
    curriculums.get_curriculum(config.curriculum)  # an unknown name: say so before anything else
    if config.resume == "auto" and (Path(config.output_dir) / LATEST_NAME).is_file():
        # A requeued job continues where this run stopped; --set_step was meant for its first start.
        config = dataclasses.replace(config, load_dir=config.output_dir, set_step=None)
    state, path, digest = None, None, None
    if config.load_dir:
        path = str(resolve_checkpoint_path(config.load_dir))
        state, digest = read_checkpoint(path)
    curriculum, overrides = run_curriculum(config, state)
    eval_freq = config.eval_freq
    if eval_freq is None:
        procedural = curriculums.extract_metadata(curriculum, 0)["dataset"] in PROCEDURAL_DATASETS
        eval_freq = 0 if procedural else EVAL_FREQ
    config = dataclasses.replace(config, curriculum_overrides=overrides, eval_freq=eval_freq)
    return RunSpec(config, curriculum, path, digest), state


def check_curriculum_change(config: TrainConfig, checkpoint_state: Optional[dict]) -> None:
    """Refuse to resume a checkpoint of another curriculum unless the user asked for it: it would
    train the new curriculum's data and hyper-parameters on weights learnt from other data."""
    if checkpoint_state is None:
        return
    saved = recorded_run(checkpoint_state).curriculum_name
    if saved != config.curriculum and not config.allow_curriculum_change:
        raise ValueError(f"the checkpoint in {config.load_dir} was trained with curriculum {saved!r}, not "
                         f"{config.curriculum!r}; resume with --curriculum {saved}, or pass "
                         f"--allow_curriculum_change to train {config.curriculum!r} on these weights")


def written_before_corrections(checkpoint_state: dict) -> bool:
    """Whether a checkpoint of ours was trained before the published behaviour became the default
    (its curriculum lacks the keys that choose): it continues with the corrections it was trained
    with (curriculums.LEGACY_CORRECTIONS). Imported official weights were trained as published."""
    recorded = recorded_run(checkpoint_state)
    return not recorded.imported and bool(recorded.curriculum) and \
        not any(key in recorded.curriculum for key in curriculums.LEGACY_CORRECTIONS)


def keeps_legacy_corrections(config: TrainConfig, checkpoint_state: dict) -> bool:
    """Whether resuming `checkpoint_state` applies curriculums.LEGACY_CORRECTIONS (run_curriculum)."""
    return recorded_run(checkpoint_state).curriculum_name == config.curriculum and \
        written_before_corrections(checkpoint_state)


def run_curriculum(config: TrainConfig, checkpoint_state: Optional[dict] = None) -> tuple:
    """(curriculum, overrides) of a run, validated: the named curriculum with the overrides recorded in
    the checkpoint being resumed (same curriculum only: they belong to it), then the run's own."""
    check_curriculum_change(config, checkpoint_state)
    overrides = {}
    if checkpoint_state is not None and recorded_run(checkpoint_state).curriculum_name == config.curriculum:
        if written_before_corrections(checkpoint_state):
            overrides.update(curriculums.LEGACY_CORRECTIONS)
        overrides.update(recorded_run(checkpoint_state).curriculum_overrides)
        if any(isinstance(k, int) for k in config.curriculum_overrides):  # new stages replace the recorded ones
            overrides = {k: v for k, v in overrides.items() if not isinstance(k, int)}
    overrides.update(config.curriculum_overrides)
    curriculum = curriculums.apply_overrides(curriculums.get_curriculum(config.curriculum), overrides)
    curriculums.validate_curriculum(curriculum, config.curriculum)
    return curriculum, overrides


def build_networks(metadata: dict) -> tuple:
    """(generator, discriminator) as a curriculum's stage-0 metadata describes them, for training: the field's
    fast paths are first checked against its formula (siren.check_fast_paths, ValueError where they differ),
    so that an edited formula trains, not its old fast copy."""
    if metadata["discriminator"] != "CCSEncoderDiscriminator":
        raise ValueError(f"unknown discriminator {metadata['discriminator']!r}; available: ['CCSEncoderDiscriminator']")
    generator = build_generator(metadata)
    check_fast_paths(type(generator.siren))
    discriminator = CCSEncoderDiscriminator(latent_dim=int(metadata["latent_dim"]),
                                            width_factor=float(metadata["disc_width_factor"]))
    return generator, discriminator


# ----------------------------------------------------------------------------- checks
def check_run(spec: RunSpec, checkpoint_state: Optional[dict], world_size: int) -> None:
    """What can fail before a training process starts, beyond resolve_run: the dataset (at least
    one batch per process in every stage the run reaches), the evaluation metrics, the networks the
    curriculum names, that the field's fast paths compute its formula (siren.check_fast_paths) and the
    shapes of the checkpoint being resumed. Raises ValueError, DatasetError or CheckpointError."""
    config = spec.config
    check_dataset_size(spec.curriculum, config.curriculum, world_size, config.max_steps,
                       dataset_path_set="dataset_path" in config.curriculum_overrides)
    check_eval_metrics(config, spec.curriculum)
    with torch.device("meta"):  # shapes only: no memory, no time
        generator, discriminator = build_networks(curriculums.extract_metadata(spec.curriculum, 0))
    if checkpoint_state is not None:
        mismatch = checkpoint_mismatch(checkpoint_state, generator, discriminator)
        if mismatch:
            raise CheckpointError(f"cannot resume {spec.resume_path}: {mismatch}")


def check_dataset_size(curriculum: dict, name: str, world_size: int, max_steps: Optional[int],
                       dataset_path_set: bool = False) -> None:
    """The data is readable, a prepared set fits every stage the run reaches (its crop and size), and every
    such stage has at least one batch per process (the loader drops incomplete batches). `dataset_path_set`: it came from --set (where a problem is fixed)."""
    stages = [stage for stage in curriculums.stage_boundaries(curriculum)[:-1]
              if max_steps is None or stage < max_steps]
    output_sizes = {stage: int(curriculums.extract_metadata(curriculum, stage)["output_size"]) for stage in stages}
    items = check_dataset(curriculums.extract_metadata(curriculum, 0), name, set_by_flag=dataset_path_set,
                          output_sizes=output_sizes)
    for stage in stages:
        batch_size = int(curriculums.extract_metadata(curriculum, stage)["batch_size"])
        if items // world_size < batch_size:
            raise DatasetError(f"the dataset has {items} images: fewer than one batch of {batch_size} per process "
                               f"({world_size} processes) in stage {stage}; add images or lower it with "
                               f"--set {stage}.batch_size=N")


def check_eval_metrics(config: TrainConfig, curriculum: dict) -> None:
    """--eval_metrics names known metrics that apply to this curriculum (else the first evaluation,
    thousands of steps in, would be the first to find out)."""
    metrics = parse_metrics(config.eval_metrics)
    dataset = curriculums.extract_metadata(curriculum, 0)["dataset"]
    for name in ("synthetic", "synthetic_aligned"):
        if config.eval_freq and name in metrics and dataset not in PROCEDURAL_DATASETS:
            raise ValueError(f"--eval_metrics {name} needs a procedural dataset ({', '.join(PROCEDURAL_DATASETS)}), "
                             f"not {dataset!r}")
