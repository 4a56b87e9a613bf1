"""The codes file: one object's FiLM codes, decoder style and (optionally) camera.

This is the one place the format is defined; `viewer.py --codes FILE` opens it as its
object, and a photo inversion writes it. A file readable with
`torch.load(path, weights_only=True)` holding a dict:

| key           | value                                                                |
|---------------|----------------------------------------------------------------------|
| `frequencies` | float tensor (1, 9H): raw FiLM frequencies, as `generator.mapping(z)` |
| `phases`      | float tensor (1, 9H): FiLM phases                                     |
| `style`       | float tensor (1, 256): the decoder's style code                      |
| `yaw`, `pitch`| optional floats (or 0-d tensors), radians (docs/METHOD.md §1): the camera |

The codes are used as they are (no truncation: they are what was fitted); H is the
checkpoint's `hidden_dim`. Other keys are ignored. Entry points: `load_codes`, `save_codes`.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import NamedTuple, Optional

import torch

from generators.generators import ImplicitGenerator3d, LatentCodes
from utils.checkpoint import CheckpointError, require_safe_torch, why_unreadable

CODE_KEYS = LatentCodes._fields  # ("frequencies", "phases", "style")
CAMERA_KEYS = ("yaw", "pitch")


class CodesFile(NamedTuple):
    codes: LatentCodes       # batch 1, on the generator's device
    yaw: Optional[float]     # radians, None when the file has no camera
    pitch: Optional[float]


def expected_shapes(generator: ImplicitGenerator3d) -> dict:
    """{key: shape} of one object's codes for this generator (what its mapping network returns)."""
    device = next(generator.parameters()).device
    with torch.no_grad():
        codes = generator.mapping(torch.zeros(1, generator.z_dim, device=device))
    return {key: tuple(value.shape) for key, value in zip(CODE_KEYS, codes)}


def _scalar(value, key: str, path) -> float:
    try:
        number = float(value.item() if isinstance(value, torch.Tensor) else value)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"{path}: {key!r} must be a number (radians), got {value!r}") from None
    if not math.isfinite(number):
        raise ValueError(f"{path}: {key!r} must be finite, got {number}")
    return number


def _why_unreadable(path: Path, error: Exception) -> str:
    """In words, and never torch's advice to retry with weights_only=False (that runs a pickle's code)."""
    kind, reason = why_unreadable(path, error)
    return f"{reason}; save tensors and numbers only" if kind == "pickle" else reason


def load_codes(path, generator: ImplicitGenerator3d) -> CodesFile:
    """Read and check a codes file against `generator`; ValueError (one line) for anything wrong."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"codes file not found: {path}")
    try:
        require_safe_torch()
    except CheckpointError as error:
        raise ValueError(str(error)) from None
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle, zip and weights_only errors all mean "not a codes file"
        raise ValueError(f"{path} is not a codes file: {_why_unreadable(path, error)}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a codes file holds a dict with keys {', '.join(CODE_KEYS)}; got a "
                         f"{type(data).__name__}")
    missing = [key for key in CODE_KEYS if key not in data]
    if missing:
        raise ValueError(f"{path}: missing key(s) {', '.join(missing)} (a codes file holds {', '.join(CODE_KEYS)} "
                         "and optionally yaw, pitch)")
    device = next(generator.parameters()).device
    shapes, values = expected_shapes(generator), []
    for key in CODE_KEYS:
        value = data[key]
        if not isinstance(value, torch.Tensor) or not value.is_floating_point():
            raise ValueError(f"{path}: {key!r} must be a float tensor, got {type(value).__name__}")
        if tuple(value.shape) != shapes[key]:
            raise ValueError(f"{path}: {key!r} has shape {tuple(value.shape)}, this checkpoint's generator needs "
                             f"{shapes[key]} (was the file made with another checkpoint?)")
        if not torch.isfinite(value).all():
            raise ValueError(f"{path}: {key!r} has NaN or infinite values")
        values.append(value.detach().float().to(device))
    yaw, pitch = (_scalar(data[key], key, path) if data.get(key) is not None else None for key in CAMERA_KEYS)
    return CodesFile(LatentCodes(*values), yaw, pitch)


def save_codes(path, codes: LatentCodes, yaw: Optional[float] = None, pitch: Optional[float] = None) -> Path:
    """Write one object's codes (batch 1) and optional camera in the format above."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {key: value.detach().float().cpu() for key, value in zip(CODE_KEYS, codes)}
    for key, value in (("yaw", yaw), ("pitch", pitch)):
        if value is not None:
            data[key] = float(value)
    torch.save(data, path)
    return path
