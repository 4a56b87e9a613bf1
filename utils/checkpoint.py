"""Checkpoints: one file of state dicts, written atomically, loaded with weights_only=True.

What a checkpoint holds is written and read in this file only: `TrainingState` is its
layout (a training run's checkpoint, or one imported from the published files), plus
`format_version` and `checksum` (a SHA-256 over every value, verified on load so silent
corruption is caught; from format 3 on a file without a valid one is refused, so a damaged
checksum never passes as an old file). A failed write (a full disk) is one line
(`CheckpointWriteError`) and leaves the previous file intact; a file torch cannot read is
described in words (`why_unreadable`), corruption told apart from a foreign pickle by the
zip records' CRC-32. Loading refuses a torch whose weights_only can be bypassed
(`require_safe_torch`). Entry points: `save_checkpoint`, `load_checkpoint` (`read_checkpoint`
also returns the verified checksum), `TrainingState`, `load_generator`.
"""
from __future__ import annotations

import hashlib
import math
import os
import pickle
import random
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Mapping, NamedTuple, Optional, Tuple

import numpy as np
import torch

# describe_os_error lives with the CLI plumbing (which imports nothing of the project); main.py and
# the training code import it from here.
from utils.cli import CLIError, describe_os_error  # noqa: F401

# 3: a checksum is required (CHECKSUM_FORMAT_VERSION); 2: equalised-conv biases stored as published (the layer
# computes c * (W x + b)), with a checksum or (written before checksums existed) without; 1 stored c * b.
FORMAT_VERSION = 3
CHECKSUM_FORMAT_VERSION = 3  # from this format on a file without a valid checksum is corrupt, never "old"
# torch.load(weights_only=True) of torch <= 2.5.1 can be made to run code by a crafted file (CVE-2025-32434):
# every safety claim about loading rests on a torch at least this new (requirements.txt says so too).
SAFE_TORCH_VERSION = "2.6"
LATEST_NAME = "checkpoint.pth"
EMA_KEYS = ("generator_ema", "generator_ema2")  # the EMAs of decay 0.999 and 0.9999 (train.EMA_DECAYS)
GENERATOR_KEYS = ("generator", *EMA_KEYS)


CHECKSUM_ALGORITHM = "sha256-state-v1"
# save_checkpoint writes `.{name}.{random}.tmp` next to `{name}`; a kill mid-write leaves one behind.
TEMP_PREFIX, TEMP_SUFFIX = ".", ".tmp"
STALE_TEMP_GLOB = f"{TEMP_PREFIX}checkpoint*.pth.*{TEMP_SUFFIX}"


class CheckpointError(CLIError):
    """A checkpoint that is missing, unreadable or not what it should be: a usage error of the scripts
    (`utils.cli.run_cli`: one `error:` line, exit 2)."""


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


def verify_checksum(state: dict, path, trusted_digest: Optional[str] = None,
                    advice: str = "; use another checkpoint (e.g. a numbered checkpoint_*.pth)") -> Optional[str]:
    """Raise CheckpointError unless `state` carries a checksum that its contents match; returns its
    digest. Only checkpoints of a format older than CHECKSUM_FORMAT_VERSION may lack one (they pass,
    returning None), and only when nothing in them looks like a damaged checksum: a corrupted tag,
    key or digest never turns verification off. The entry is removed, so a state saved again gets a
    fresh one.

    `trusted_digest`: the digest this file was verified against moments ago (run_spec.RunSpec): the
    stored digest is compared with it instead of hashing the whole state again. `advice` ends the
    message of a damaged file (what to do instead).
    """
    corrupted = f"{path} is corrupted: "
    stored = state.pop("checksum", None)
    if stored is None:
        damaged = [key for key, value in state.items() if isinstance(value, dict) and {"algorithm", "digest"} & set(value)]
        if damaged:
            raise CheckpointError(f"{corrupted}its checksum entry is damaged (found under {damaged[0]!r}){advice}")
        version = state.get("format_version", 1)
        if not isinstance(version, int) or version >= CHECKSUM_FORMAT_VERSION:
            raise CheckpointError(f"{corrupted}a checkpoint of format {version!r} carries a checksum and this one "
                                  f"has none{advice}")
        return None  # written before checksums existed
    algorithm = stored.get("algorithm") if isinstance(stored, dict) else None
    digest = stored.get("digest") if isinstance(stored, dict) else None
    if algorithm != CHECKSUM_ALGORITHM or not isinstance(digest, str):
        raise CheckpointError(f"{corrupted}its checksum entry is damaged (algorithm {algorithm!r}, expected "
                              f"{CHECKSUM_ALGORITHM!r}){advice}")
    if trusted_digest is not None:
        if digest != trusted_digest:
            raise CheckpointError(f"{path} changed since the launcher verified it (another checksum); "
                                  f"start the run again")
        return digest
    if state_checksum(state)["digest"] != digest:
        raise CheckpointError(f"{corrupted}its contents do not match the checksum stored when it was written{advice}")
    return digest


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (a full disk, no permission): one line saying why. The file it
    was to replace is intact."""


def _os_error(error: BaseException) -> Optional[OSError]:
    """The OSError behind `error` (itself, or one it was raised from or during), if any."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, OSError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def save_checkpoint(path, state: dict) -> None:
    """Write `state` (with a checksum) to `path` via a temp file in the same folder and an atomic
    rename, so a crash mid-write never leaves a truncated checkpoint behind. A failed write (a full disk)
    raises CheckpointWriteError, one line naming the reason, and leaves the file at `path` as it was."""
    path = Path(path)
    payload = {"format_version": FORMAT_VERSION, **state}
    payload["checksum"] = state_checksum(payload)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        cause = _os_error(error)
        if cause is None:
            raise
        # torch's zip writer reports a failed write as "unexpected pos ..." raised while handling the
        # OSError that says why (e.g. "No space left on device"): say that instead.
        raise CheckpointWriteError(f"could not write the checkpoint {path}: {cause.strerror or cause}; "
                                   f"the previous {path.name}, if any, is intact") from None


def remove_stale_temp_files(directory) -> list:
    """Delete the temp files that killed `save_checkpoint` calls left in `directory` (only names of
    the form it writes); returns their paths. Call once at the start of a run, before any save, and
    only while holding the directory's lock (utils/run_dir.py): then no other run writes there, and
    every such file is a dead writer's."""
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


def check_format_version(state: dict, path="checkpoint") -> None:
    """CheckpointError for a format this code does not know: newer (update the project) or not a number."""
    version = state.get("format_version", 1)
    if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format {version} is newer than this code understands "
                              f"({FORMAT_VERSION}): update the project")


def upgrade_state(state: dict) -> dict:
    """Bring a checkpoint of an older format to FORMAT_VERSION in place (and return it)."""
    check_format_version(state)
    version = int(state.get("format_version", 1))
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


def _damaged_zip_record(path: Path) -> Optional[str]:
    """The first record of a zip-format file whose bytes fail the CRC-32 stored for it, or None (all intact,
    or not a zip file). torch.save's zip format stores one per record, which torch.load does not check."""
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, RuntimeError, ValueError):
        return None


def why_unreadable(path: Path, error: Exception) -> Tuple[str, str]:
    """(kind, reason) of a file torch.load(weights_only=True) refused, in words, never torch's advice to load
    it with weights_only=False, which would run whatever code a pickle holds. kind: "other format" (reason:
    "it is a PNG image"), "not torch", "corrupted" (a zip record fails its CRC-32: a flipped byte in the
    pickle would otherwise look like a foreign pickle), "pickle" (pickled Python objects) or "unreadable"."""
    with open(path, "rb") as f:
        head = f.read(8)
    for signature, kind in _OTHER_FORMATS.items():
        if head.startswith(signature):
            return "other format", f"it is {kind}"
    if not head.startswith(_TORCH_SIGNATURES):
        return "not torch", "it was not written by torch.save"
    damaged = _damaged_zip_record(path)
    if damaged is not None:
        return "corrupted", f"its record {damaged} does not match the CRC-32 stored when it was written"
    if isinstance(error, pickle.UnpicklingError):
        return "pickle", "it holds pickled Python objects, which are never loaded because unpickling can run " \
                         "arbitrary code"
    return "unreadable", f"truncated or corrupt ({str(error).splitlines()[0] if str(error) else type(error).__name__})"


def _unreadable(path: Path, error: Exception) -> CheckpointError:
    kind, reason = why_unreadable(path, error)
    if kind in ("other format", "not torch"):
        return CheckpointError(f"{path} is not a checkpoint: {reason}")
    if kind == "corrupted":
        return CheckpointError(f"{path} is corrupted: {reason}; use another checkpoint (e.g. a numbered "
                               f"checkpoint_*.pth)")
    if kind == "pickle":  # the published code pickled whole modules
        return CheckpointError(f"{path} is a PyTorch file but not an MVCGAN checkpoint: {reason}; convert a "
                               "published MVCGAN checkpoint with import_checkpoint.py, which reads it without "
                               "running it")
    return CheckpointError(f"{path} is not a readable MVCGAN checkpoint: {reason}")


def require_safe_torch() -> None:
    """CheckpointError on a torch whose weights_only loading can be made to run code (CVE-2025-32434)."""
    if torch.torch_version.TorchVersion(torch.__version__) < SAFE_TORCH_VERSION:
        raise CheckpointError(f"torch {torch.__version__} can run code hidden in a file even with "
                              f"weights_only=True (CVE-2025-32434): install torch >= {SAFE_TORCH_VERSION} "
                              f"(pip install -r requirements.txt) before loading checkpoints")


def read_checkpoint(path, map_location="cpu", trusted_digest: Optional[str] = None) -> Tuple[dict, Optional[str]]:
    """(state, its verified checksum digest or None) of a checkpoint file or run directory, upgraded
    to FORMAT_VERSION; `trusted_digest` as in `verify_checksum`."""
    path = resolve_checkpoint_path(path)
    require_safe_torch()
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # truncated files, pickles of whole modules, other formats
        raise _unreadable(path, error) from None
    if not isinstance(state, dict) or "generator" not in state or "curriculum" not in state:
        damaged = _damaged_zip_record(path)
        if damaged is not None:
            raise CheckpointError(f"{path} is corrupted: its record {damaged} does not match the CRC-32 stored "
                                  f"when it was written; use another checkpoint (e.g. a numbered checkpoint_*.pth)")
        raise CheckpointError(f"{path} is not an MVCGAN checkpoint (missing generator/curriculum state)")
    check_format_version(state, path)
    digest = verify_checksum(state, path, trusted_digest)
    return upgrade_state(state), digest


def load_checkpoint(path, map_location="cpu") -> dict:
    """The state of a checkpoint file or run directory, verified and upgraded to FORMAT_VERSION."""
    return read_checkpoint(path, map_location)[0]


# --------------------------------------------------------------------------- #
# The layout
# --------------------------------------------------------------------------- #

@dataclass
class TrainingState:
    """What a checkpoint holds, field by field: `to_checkpoint()` is the dict a file stores,
    `from_checkpoint(state)` reads one back. A training run writes every field; a checkpoint
    imported from the published files (utils/published.py) has no optimiser, scaler, RNG or data
    position (those fields are None) and perhaps no discriminator."""

    step: int
    curriculum_name: Optional[str]
    curriculum: dict                      # the curriculum the weights were trained with
    generator: dict                       # state dicts of the networks ...
    emas: List[dict]                      # ... of the EMAs of the generator, in EMA_KEYS' order
    ema_num_updates: List[int]            # ... and their update counts (the decay warm-up)
    discriminator: Optional[dict] = None
    epoch: int = 0
    batch_in_epoch: int = 0               # batches of `epoch` already trained: where the data continues
    curriculum_overrides: dict = field(default_factory=dict)  # the --set values, applied again on resume
    optimizer_G: Optional[dict] = None
    optimizer_D: Optional[dict] = None
    scaler: Optional[dict] = None         # the fp16 loss scaler
    rng: Optional[list] = None            # `rng_state()` of each process
    world_size: Optional[int] = None      # the number of processes that wrote it
    imported_from: Optional[dict] = None  # {role: published file} of an imported checkpoint

    @property
    def imported(self) -> bool:
        return self.optimizer_G is None

    def to_checkpoint(self) -> dict:
        state = {"step": self.step, "epoch": self.epoch, "curriculum_name": self.curriculum_name,
                 "curriculum": self.curriculum, "curriculum_overrides": self.curriculum_overrides,
                 "generator": self.generator, **dict(zip(EMA_KEYS, self.emas)),
                 "ema_num_updates": list(self.ema_num_updates)}
        if self.discriminator is not None:
            state["discriminator"] = self.discriminator
        if self.imported_from is not None:
            state["imported_from"] = self.imported_from
        if not self.imported:
            state.update(optimizer_G=self.optimizer_G, optimizer_D=self.optimizer_D, scaler=self.scaler,
                         rng=self.rng, world_size=self.world_size,
                         sampler={"epoch": self.epoch, "batch": self.batch_in_epoch})
        return state

    @classmethod
    def from_checkpoint(cls, state: dict) -> "TrainingState":
        return cls(step=int(state["step"]), curriculum_name=state.get("curriculum_name"),
                   curriculum=state["curriculum"], generator=state["generator"],
                   emas=[state[key] for key in EMA_KEYS], ema_num_updates=[int(n) for n in state["ema_num_updates"]],
                   discriminator=state.get("discriminator"), epoch=int(state.get("epoch", 0)),
                   batch_in_epoch=int(state["sampler"]["batch"]) if "sampler" in state else 0,
                   curriculum_overrides=dict(state.get("curriculum_overrides") or {}),
                   optimizer_G=state.get("optimizer_G"), optimizer_D=state.get("optimizer_D"),
                   scaler=state.get("scaler"), rng=state.get("rng"), world_size=state.get("world_size"),
                   imported_from=state.get("imported_from"))


class RecordedRun(NamedTuple):
    """What a checkpoint says about the run that wrote it, read without touching its tensors."""

    curriculum_name: Optional[str]
    curriculum: dict
    curriculum_overrides: dict
    imported: bool  # from the published files (trained as published)


def recorded_run(state: dict) -> RecordedRun:
    return RecordedRun(state.get("curriculum_name"), state.get("curriculum") or {},
                       dict(state.get("curriculum_overrides") or {}), "imported_from" in state)


def checkpoint_mismatch(state: dict, generator: torch.nn.Module, discriminator: torch.nn.Module) -> Optional[str]:
    """None if the checkpoint's weights fit the networks, else one line saying where they differ."""
    problems = []
    for key, module in (("generator", generator), ("discriminator", discriminator)):
        if key not in state:  # an imported checkpoint may have no discriminator
            continue
        saved, expected = state[key], module.state_dict()
        for name in sorted(set(saved) | set(expected)):
            if name not in saved or name not in expected:
                problems.append(f"{key}.{name} only in the {'model' if name in expected else 'checkpoint'}")
            elif tuple(saved[name].shape) != tuple(expected[name].shape):
                problems.append(f"{key}.{name} is {tuple(saved[name].shape)} in the checkpoint, "
                                f"{tuple(expected[name].shape)} in the model")
    if not problems:
        return None
    return (f"the checkpoint's networks have another architecture than the curriculum describes "
            f"({len(problems)} tensors differ, e.g. {problems[0]}); resume with the curriculum and --set "
            f"values it was trained with")


def rng_state() -> dict:
    """Every RNG a training step can touch, in types that `torch.load(weights_only=True)` accepts."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": (name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached))}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what `rng_state()` captured."""
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        # One state per GPU the writing process saw; a machine with fewer GPUs restores those it has
        # (set_rng_state_all would fail on the first missing one). Each process trains on one GPU.
        for index, cuda_state in enumerate(state["cuda"][:torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state, index)


def first_nonfinite(tensors: Mapping) -> Optional[str]:
    """The name of the first floating-point tensor (or float) in `tensors` that holds a NaN or an infinity,
    else None: weights, codes or cameras that would render as a black or garbage picture."""
    for name, value in tensors.items():
        if isinstance(value, torch.Tensor):
            if value.is_floating_point() and not bool(torch.isfinite(value).all()):
                return name
        elif isinstance(value, float) and not math.isfinite(value):
            return name
    return None


def load_generator(path, device="cpu", use_ema: bool = True,
                   state: Optional[dict] = None) -> Tuple[torch.nn.Module, dict, int]:
    """Rebuild the generator from a checkpoint; returns (generator in eval mode, curriculum, step)."""
    from curriculums import extract_metadata
    from generators.generators import build_generator

    state = state if state is not None else load_checkpoint(path)
    curriculum, step = state["curriculum"], int(state.get("step", 0))
    generator = build_generator(extract_metadata(curriculum, 0), step)
    key = "generator_ema" if use_ema and "generator_ema" in state else "generator"
    bad = first_nonfinite(state[key])
    if bad is not None:
        raise CheckpointError(f"{path}: its {key} weights hold NaN or infinite values (first in {bad}); use another "
                              f"checkpoint (e.g. a numbered checkpoint_*.pth)")
    try:
        generator.load_state_dict(state[key])
    except RuntimeError as error:
        raise CheckpointError(f"checkpoint weights do not match the architecture its curriculum describes: {error}")
    return generator.to(device).eval(), curriculum, step
