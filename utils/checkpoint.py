"""Checkpoints: one file of state dicts, written atomically, loaded with weights_only=True.

A checkpoint is a dict with keys `format_version`, `step`, `epoch`, `curriculum_name`,
`curriculum`, `generator`, `generator_ema` (decay 0.999), `generator_ema2` (0.9999),
`discriminator`, `optimizer_G`, `optimizer_D`, `scaler`, `rng` and `sampler`.
Entry points: `save_checkpoint`, `load_checkpoint`, `load_generator`.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Optional, Tuple

import torch

FORMAT_VERSION = 1
LATEST_NAME = "checkpoint.pth"


class CheckpointError(RuntimeError):
    pass


def save_checkpoint(path, state: dict) -> None:
    """Write `state` to `path` via a temp file in the same folder and an atomic rename,
    so a crash mid-write never leaves a truncated checkpoint behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"format_version": FORMAT_VERSION, **state}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def resolve_checkpoint_path(path) -> Path:
    """A checkpoint file, or a run directory (its latest `checkpoint.pth`)."""
    path = Path(path)
    if path.is_dir():
        candidate = path / LATEST_NAME
        if not candidate.is_file():
            raise CheckpointError(f"no {LATEST_NAME} in run directory {path}")
        return candidate
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    return path


def load_checkpoint(path, map_location="cpu") -> dict:
    path = resolve_checkpoint_path(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # truncated files, pickles of whole modules, other formats
        raise CheckpointError(f"{path} is not a readable MVCGAN checkpoint ({type(error).__name__}: {error})") from error
    if not isinstance(state, dict) or "generator" not in state or "curriculum" not in state:
        raise CheckpointError(f"{path} is not an MVCGAN checkpoint (missing generator/curriculum state)")
    return state


def load_generator(path, device="cpu", use_ema: bool = True,
                   state: Optional[dict] = None) -> Tuple[torch.nn.Module, dict, int]:
    """Rebuild the generator from a checkpoint; returns (generator in eval mode, curriculum, step)."""
    from curriculums import extract_metadata
    from generators.generators import build_generator

    state = state if state is not None else load_checkpoint(path)
    curriculum, step = state["curriculum"], int(state.get("step", 0))
    generator = build_generator(extract_metadata(curriculum, 0))
    key = "generator_ema" if use_ema and "generator_ema" in state else "generator"
    try:
        generator.load_state_dict(state[key])
    except RuntimeError as error:
        raise CheckpointError(f"checkpoint weights do not match the architecture its curriculum describes: {error}")
    return generator.to(device).eval(), curriculum, step
