"""Checkpoints: one file of state dicts, written atomically, loaded with weights_only=True.

A checkpoint is a dict with keys `format_version`, `step`, `epoch`, `curriculum_name`,
`curriculum`, `generator`, `generator_ema` (decay 0.999), `generator_ema2` (0.9999),
`discriminator`, `optimizer_G`, `optimizer_D`, `scaler`, `rng`, `sampler` and `checksum`
(a SHA-256 over every value, verified on load so silent corruption is caught).
Entry points: `save_checkpoint`, `load_checkpoint`, `load_generator`.
"""
from __future__ import annotations

import hashlib
import math
import os
import pickle
import tempfile
from pathlib import Path
from typing import Optional, Tuple

import torch

# 2: equalised-conv biases stored as published (the layer computes c * (W x + b)); 1 stored c * b.
FORMAT_VERSION = 2
LATEST_NAME = "checkpoint.pth"
GENERATOR_KEYS = ("generator", "generator_ema", "generator_ema2")


CHECKSUM_ALGORITHM = "sha256-state-v1"
# save_checkpoint writes `.{name}.{random}.tmp` next to `{name}`; a kill mid-write leaves one behind.
TEMP_PREFIX, TEMP_SUFFIX = ".", ".tmp"
STALE_TEMP_GLOB = f"{TEMP_PREFIX}checkpoint*.pth.*{TEMP_SUFFIX}"


class CheckpointError(RuntimeError):
    pass


def _hash_value(digest, value) -> None:
    """Feed `value` (nested dicts/lists/tuples of tensors and plain scalars) into `digest` in a
    canonical order: dict entries sorted by key, tensors as dtype, shape and raw bytes."""
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu().contiguous()
        digest.update(f"T{tensor.dtype}{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(value, dict):
        digest.update(f"D{len(value)}".encode())
        for key in sorted(value, key=lambda k: (type(k).__name__, repr(k))):
            digest.update(f"K{type(key).__name__}:{key!r}".encode())
            _hash_value(digest, value[key])
    elif isinstance(value, (list, tuple)):
        digest.update(f"{type(value).__name__}{len(value)}".encode())
        for item in value:
            _hash_value(digest, item)
    else:
        digest.update(f"S{type(value).__name__}:{value!r}".encode())


def state_checksum(state: dict) -> dict:
    """{"algorithm", "digest"}: a SHA-256 of everything in `state` except its `checksum` entry."""
    digest = hashlib.sha256()
    _hash_value(digest, {k: v for k, v in state.items() if k != "checksum"})
    return {"algorithm": CHECKSUM_ALGORITHM, "digest": digest.hexdigest()}


def verify_checksum(state: dict, path) -> None:
    """Raise CheckpointError if `state` carries a checksum that its contents do not match.
    Checkpoints written before checksums existed carry none and pass; the entry is removed,
    so a state saved again gets a fresh one."""
    stored = state.pop("checksum", None)
    if stored is None or stored.get("algorithm") != CHECKSUM_ALGORITHM:
        return
    if state_checksum(state)["digest"] != stored.get("digest"):
        raise CheckpointError(f"{path} is corrupted: its contents do not match the checksum stored when it "
                              f"was written; use another checkpoint (e.g. a numbered checkpoint_*.pth)")


def save_checkpoint(path, state: dict) -> None:
    """Write `state` (with a checksum) to `path` via a temp file in the same folder and an atomic
    rename, so a crash mid-write never leaves a truncated checkpoint behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format_version": FORMAT_VERSION, **state}
    payload["checksum"] = state_checksum(payload)
    fd, tmp = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def remove_stale_temp_files(directory) -> list:
    """Delete the temp files that killed `save_checkpoint` calls left in `directory` (only names of
    the form it writes); returns their paths. Call once at the start of a run, before any save."""
    removed = []
    for stale in sorted(Path(directory).glob(STALE_TEMP_GLOB)):
        if stale.is_file():
            stale.unlink()
            removed.append(stale)
    return removed


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


def equalized_bias_scales(generator_state: dict) -> dict:
    """{bias key: c} for every equalised conv of the decoder (its 4-D weights), c = sqrt(2 / fan_in)."""
    scales = {}
    for key, weight in generator_state.items():
        if key.startswith("decoder.") and key.endswith(".weight") and weight.dim() == 4:
            bias_key = key[: -len("weight")] + "bias"
            if bias_key in generator_state:
                scales[bias_key] = math.sqrt(2.0 / (weight.shape[1] * weight.shape[2] * weight.shape[3]))
    return scales


def _generator_param_names(generator_state: dict, param_groups: list) -> dict:
    """{optimiser parameter index: state-dict key}, rebuilt from the saved groups' names
    (one group of all parameters, or the mapping network first with `unique_lr`)."""
    names = list(generator_state)
    mapping = [k for k in names if k.startswith("siren.mapping_network.")]
    by_group = {"mapping_network": mapping,
                "generator": names if len(param_groups) == 1 else [k for k in names if k not in set(mapping)]}
    index_to_name = {}
    for group in param_groups:
        for index, name in zip(group["params"], by_group.get(group.get("name", "generator"), names)):
            index_to_name[index] = name
    return index_to_name


def upgrade_state(state: dict) -> dict:
    """Bring a checkpoint of an older format to FORMAT_VERSION in place (and return it)."""
    version = int(state.get("format_version", 1))
    if version > FORMAT_VERSION:
        raise CheckpointError(f"checkpoint format {version} is newer than this code understands "
                              f"({FORMAT_VERSION}): update the project")
    if version < 2:
        # Format 1 stored b' = c * b for the equalised convs; the layer now scales b by c itself.
        scales = equalized_bias_scales(state["generator"])
        converted = set()  # torch.save keeps shared objects shared: convert each dict once
        for key in GENERATOR_KEYS:
            if key in state and id(state[key]) not in converted:
                converted.add(id(state[key]))
                for bias_key, c in scales.items():
                    state[key][bias_key] = state[key][bias_key] / c
        optimizer = state.get("optimizer_G")
        if optimizer and optimizer.get("state"):
            # Adam's moments follow the gradient, which is c times larger for b than for b'.
            names = _generator_param_names(state["generator"], optimizer["param_groups"])
            for index, moments in optimizer["state"].items():
                c = scales.get(names.get(index))
                if c is not None:
                    moments["exp_avg"] = moments["exp_avg"] * c
                    moments["exp_avg_sq"] = moments["exp_avg_sq"] * c * c
        state["upgraded_from_format"] = version
    state["format_version"] = FORMAT_VERSION
    return state


# File signatures of things users pass by mistake, to say what the file is instead.
_OTHER_FORMATS = {b"\x89PNG": "a PNG image", b"\xff\xd8\xff": "a JPEG image", b"GIF8": "a GIF image",
                  b"ply": "a PLY mesh", b"\x93NUMPY": "a NumPy array", b"{": "a JSON file"}
_TORCH_SIGNATURES = (b"PK\x03\x04", b"\x80")  # torch.save's zip format; its legacy pickle format


def _unreadable(path: Path, error: Exception) -> CheckpointError:
    """Why `path` could not be loaded, in words: never torch's advice to load it with
    weights_only=False, which would run whatever code a pickle holds."""
    with open(path, "rb") as f:
        head = f.read(8)
    for signature, kind in _OTHER_FORMATS.items():
        if head.startswith(signature):
            return CheckpointError(f"{path} is not a checkpoint: it is {kind}")
    if not head.startswith(_TORCH_SIGNATURES):
        return CheckpointError(f"{path} is not a checkpoint: it was not written by torch.save")
    if isinstance(error, pickle.UnpicklingError):
        return CheckpointError(f"{path} is a PyTorch file but not an MVCGAN checkpoint: it holds pickled Python "
                               "objects (the published code pickled whole modules), which are never loaded "
                               "because unpickling can run arbitrary code; convert a published MVCGAN "
                               "checkpoint with import_checkpoint.py, which reads it without running it")
    reason = str(error).splitlines()[0] if str(error) else type(error).__name__
    return CheckpointError(f"{path} is not a readable MVCGAN checkpoint (truncated or corrupt: {reason})")


def load_checkpoint(path, map_location="cpu") -> dict:
    path = resolve_checkpoint_path(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # truncated files, pickles of whole modules, other formats
        raise _unreadable(path, error) from None
    if not isinstance(state, dict) or "generator" not in state or "curriculum" not in state:
        raise CheckpointError(f"{path} is not an MVCGAN checkpoint (missing generator/curriculum state)")
    verify_checksum(state, path)
    return upgrade_state(state)


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
