"""Read the published MVCGAN checkpoints without running a line of their pickles.

The authors' files (`generator.pth`, `discriminator.pth`, `ema.pth`, `ema2.pth`) are
`torch.save`d whole modules and `torch_ema` objects. `read_published` opens such a
torch zip archive with `RestrictedUnpickler`, which never imports the class paths the
pickle names: module classes become inert `Record`s (their `_modules`, `_parameters`,
`_buffers` and other attributes as plain data), tensors are rebuilt from the archive's
storages on the CPU, and any other global is refused by name.

`import_published` maps the records to a checkpoint of this project (state dicts, docs/METHOD.md §3,
§5, §6), reading every width from the shapes. Entry points: `find_published_files`,
`import_published`, `read_published`; `import_checkpoint.py` is the command line.
"""
from __future__ import annotations

import collections
import io
import logging
import math
import pickle
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import torch

from curriculums import extract_metadata, get_curriculum
from discriminators.discriminators import FROM_RGB_CHANNELS, CCSEncoderDiscriminator
from generators.generators import build_generator
from siren.siren import SIRENS
from utils.checkpoint import EMA_KEYS, LATEST_NAME, CheckpointError, TrainingState, equalized_bias_scales

logger = logging.getLogger("mvcgan.import")


class PublishedCheckpointError(CheckpointError):
    """A file that cannot be (safely) read as a published MVCGAN checkpoint."""


# --------------------------------------------------------------------------- #
# The restricted unpickler
# --------------------------------------------------------------------------- #

# Packages whose classes are rebuilt as inert records, never imported. `generators`,
# `siren` and `discriminators` are the published source tree (whose first two paths
# are also ours: they must not resolve to our classes), `torch_ema` its EMA objects,
# `torch.nn.modules` the torch layers inside them.
RECORD_PACKAGES = ("generators.", "siren.", "discriminators.", "torch_ema.", "torch.nn.modules.")

# The element type behind each legacy storage class name a torch pickle uses.
STORAGE_DTYPES = {
    "FloatStorage": torch.float32, "DoubleStorage": torch.float64, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}


class Record:
    """An inert stand-in for a pickled object of class `class_path`: only its attributes.

    The unpickler makes one subclass per class path and builds instances with `__new__`
    (pickle's NEWOBJ) and `__setstate__` (BUILD). Calling the class, which a pickle
    would do to run code, is refused.
    """

    class_path = "?"

    def __init__(self, *args, **kwargs):
        raise pickle.UnpicklingError(f"refusing to call {self.class_path}: a checkpoint only rebuilds objects")

    def __setstate__(self, state) -> None:
        self.state = state if isinstance(state, dict) else {"__state__": state}

    def attribute(self, name: str, default=None):
        return self.state.get(name, default) if hasattr(self, "state") else default

    @property
    def class_name(self) -> str:
        return self.class_path.rsplit(".", 1)[-1]

    @property
    def modules(self) -> Dict[str, "Record"]:
        return dict(self.attribute("_modules") or {})

    @property
    def parameters(self) -> Dict[str, Optional[torch.Tensor]]:
        return dict(self.attribute("_parameters") or {})

    def named_records(self, prefix: str = "") -> Iterator[Tuple[str, "Record"]]:
        """This record and every sub-module record, depth first in registration order, with
        their name prefixes ("", "siren.", "siren.network.0.", ...)."""
        yield prefix, self
        for name, child in self.modules.items():
            if isinstance(child, Record):
                yield from child.named_records(f"{prefix}{name}.")

    def named_parameters(self) -> List[Tuple[str, torch.Tensor]]:
        """As the published `module.named_parameters()` lists them: in registration order, None
        entries skipped, shared tensors once. `torch_ema` keeps its shadows in this order."""
        seen, result = set(), []
        for prefix, record in self.named_records():
            for name, tensor in record.parameters.items():
                if tensor is not None and id(tensor) not in seen:
                    seen.add(id(tensor))
                    result.append((prefix + name, tensor))
        return result

    def __repr__(self) -> str:
        return f"Record({self.class_path})"


def _rebuild_tensor(storage: torch.Tensor, storage_offset: int, size, stride, requires_grad=False,
                    backward_hooks=None, metadata=None) -> torch.Tensor:
    """`torch._utils._rebuild_tensor_v2`: a view of the (flat, CPU) storage."""
    return storage.as_strided(tuple(size), tuple(stride), storage_offset)


def _rebuild_parameter(data: torch.Tensor, requires_grad=False, backward_hooks=None, state=None) -> torch.Tensor:
    """`torch._utils._rebuild_parameter(_with_state)`: the tensor itself (no Parameter, no hooks)."""
    return data


def _device(*args) -> str:
    """`torch.device(...)` as an inert string: where the tensors were is of no interest here."""
    return ":".join(str(a) for a in args)


# Every global a published checkpoint may name besides the record classes, each mapped to
# what it becomes here. Anything else is refused by name.
ALLOWED_GLOBALS = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("collections", "OrderedDict"): collections.OrderedDict,  # state dicts also set an attribute on it
    ("builtins", "set"): set,
    ("__builtin__", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("torch", "device"): _device,
}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles the `data.pkl` of a torch zip archive without importing or calling what it names.

    `read_storage(key, dtype, numel)` returns a storage's elements as a flat CPU tensor;
    the location the storage was saved on (e.g. `cuda:0`) is ignored.
    """

    def __init__(self, file, read_storage):
        super().__init__(file)
        self._read_storage = read_storage
        self._records: Dict[str, type] = {}
        self._storages: Dict[str, torch.Tensor] = {}

    def find_class(self, module: str, name: str):
        allowed = ALLOWED_GLOBALS.get((module, name))
        if allowed is not None:
            return allowed
        if module == "torch" and name in STORAGE_DTYPES:
            return STORAGE_DTYPES[name]  # only ever used as the type tag of a persistent id
        class_path = f"{module}.{name}"
        if class_path.startswith(RECORD_PACKAGES) and name.isidentifier():
            if class_path not in self._records:
                self._records[class_path] = type(name, (Record,), {"class_path": class_path})
            return self._records[class_path]
        raise pickle.UnpicklingError(f"refusing to load global {class_path!r}: a published MVCGAN checkpoint "
                                     f"holds only modules, tensors and containers")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], torch.dtype)):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r:.80}")
        _, dtype, key, _location, numel = pid
        if key not in self._storages:  # storages shared between tensors are read once
            self._storages[key] = self._read_storage(str(key), dtype, int(numel))
        return self._storages[key]


def read_published(path) -> Any:
    """Unpickle a torch zip-format file with `RestrictedUnpickler`: records, tensors, containers."""
    path = Path(path)
    if not zipfile.is_zipfile(path):
        raise PublishedCheckpointError(
            f"{path} is not a torch zip-format checkpoint (torch >= 1.6 writes those); "
            f"other formats are not read, so nothing in it was run")
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pickles = [n for n in names if n.endswith("data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise PublishedCheckpointError(f"{path}: expected one <name>/data.pkl in the archive, found {pickles}")
        prefix = pickles[0][: -len("data.pkl")]
        byteorder = prefix + "byteorder"
        if byteorder in names and archive.read(byteorder).decode().strip() != "little":
            raise PublishedCheckpointError(f"{path} was written on a big-endian machine: not supported")

        def read_storage(key: str, dtype: torch.dtype, numel: int) -> torch.Tensor:
            raw = archive.read(f"{prefix}data/{key}")
            itemsize = torch.empty((), dtype=dtype).element_size()
            if len(raw) != numel * itemsize:
                raise PublishedCheckpointError(f"{path}: storage {key} holds {len(raw)} bytes, "
                                               f"expected {numel} x {itemsize}")
            if numel == 0:
                return torch.empty(0, dtype=dtype)
            return torch.frombuffer(bytearray(raw), dtype=dtype)  # (numel,), owns its copy of the bytes

        try:
            return RestrictedUnpickler(io.BytesIO(archive.read(pickles[0])), read_storage).load()
        except pickle.UnpicklingError as error:
            raise PublishedCheckpointError(f"{path}: {error}") from error
        except (EOFError, KeyError, ValueError, TypeError, AttributeError, RuntimeError) as error:
            raise PublishedCheckpointError(f"{path} could not be read ({type(error).__name__}: {error})") from error


# --------------------------------------------------------------------------- #
# From the published module tree to our state dicts
# --------------------------------------------------------------------------- #

# Published parameter name -> ours (first matching rule wins); None drops the parameter.
# The published 2D decoder (`generators.refinegan.GNet`) is our `Decoder` (docs/METHOD.md §5):
# adain00 / conv0 + adain01 are its input AdaIN and base styled conv, scaleLayers[i]
# = [conv, AdaIN, conv, AdaIN] its up-blocks, toRGBLayers its ToRGBs. Its 10 noise
# modules (a 1x1 weight each) are built but never used by the published forward.
GENERATOR_NAME_RULES = (
    (r"decoder\.(noiseModulators\.\d+\.\d+|noiseMod0[01])\.module\.weight", None),
    (r"siren\.color_layer_linear\.0\.(weight|bias)", r"siren.color_layer_linear.\1"),  # a Sequential there
    # The mapping network's last Linear (after 3 x (Linear, LeakyReLU)) is our output_layer.
    (r"siren\.mapping_network\.network\.6\.(weight|bias)", r"siren.mapping_network.output_layer.\1"),
    (r"siren\.((network\.\d+\.layer|final_layer|color_layer_sine\.layer|mapping_network\.network\.[024])"
     r"\.(weight|bias))", r"siren.\1"),
    (r"decoder\.adain00\.styleModulator\.(weight|bias)", r"decoder.in_norm.style.\1"),
    (r"decoder\.conv0\.module\.(weight|bias)", r"decoder.base.conv.\1"),
    (r"decoder\.adain01\.styleModulator\.(weight|bias)", r"decoder.base.norm.style.\1"),
    (r"decoder\.scaleLayers\.(\d+)\.0\.module\.(weight|bias)", r"decoder.blocks.\1.conv1.conv.\2"),
    (r"decoder\.scaleLayers\.(\d+)\.1\.styleModulator\.(weight|bias)", r"decoder.blocks.\1.conv1.norm.style.\2"),
    (r"decoder\.scaleLayers\.(\d+)\.2\.module\.(weight|bias)", r"decoder.blocks.\1.conv2.conv.\2"),
    (r"decoder\.scaleLayers\.(\d+)\.3\.styleModulator\.(weight|bias)", r"decoder.blocks.\1.conv2.norm.style.\2"),
    (r"decoder\.toRGBLayers\.(\d+)\.conv\.module\.(weight|bias)", r"decoder.to_rgb.\1.\2"),
)

# `discriminators.sgdiscriminators.CCSEncoderDiscriminator` -> ours (docs/METHOD.md §6).
DISCRIMINATOR_NAME_RULES = (
    (r"layers\.(\d+)\.network\.0\.conv\.(weight|bias)", r"blocks.\1.conv1.conv.\2"),
    (r"layers\.(\d+)\.network\.2\.conv\.(weight|bias)", r"blocks.\1.conv2.conv.\2"),
    (r"layers\.(\d+)\.proj\.(weight|bias)", r"blocks.\1.proj.\2"),
    (r"fromRGB\.(\d+)\.model\.0\.(weight|bias)", r"from_rgb.\1.0.\2"),
    (r"final_layer\.(weight|bias)", r"final.\1"),
)


def _rename(name: str, rules) -> Tuple[bool, Optional[str]]:
    """(matched, our name or None to drop) for a published parameter name."""
    for pattern, replacement in rules:
        match = re.fullmatch(pattern, name)
        if match:
            return True, None if replacement is None else match.expand(replacement)
    return False, None


def rename_parameters(named: List[Tuple[str, torch.Tensor]], rules, what: str) -> Dict[str, torch.Tensor]:
    """Our state dict from published (name, tensor) pairs: renamed by `rules`, dropped where a
    rule says so, each tensor a contiguous copy (the published ones may be views of shared storage)."""
    state, unknown = {}, []
    for name, tensor in named:
        matched, ours = _rename(name, rules)
        if not matched:
            unknown.append(name)
        elif ours is not None:
            state[ours] = tensor.clone(memory_format=torch.contiguous_format)
    if unknown:
        raise PublishedCheckpointError(f"the {what} has parameters that MVCGAN's {what} does not: "
                                       f"{', '.join(unknown[:6])}{' ...' if len(unknown) > 6 else ''}")
    return state


def equalized_conv_factors(generator: Record) -> Dict[str, float]:
    """{published bias name of each EqualizedConv2d's wrapped conv: the factor its output is
    multiplied by} (the layer stores c = sqrt(2 / fan_in) in a float attribute `weight`)."""
    factors = {}
    for prefix, record in generator.named_records():
        if record.class_name == "EqualizedConv2d":
            factor = float(record.attribute("weight", 1.0)) if record.attribute("equalized", True) else 1.0
            factors[f"{prefix}module.bias"] = factor
    return factors


def convert_generator_parameters(named: List[Tuple[str, torch.Tensor]], conv_factors: Dict[str, float]) -> dict:
    """Our generator state dict from the published `named_parameters()` (or EMA shadows under those names).

    Both EqualizedConv2d layers compute c * (W x + b) (docs/METHOD.md §5), ours with c = sqrt(2 / fan_in):
    W and b map over unchanged when the published factor is that c, as the published code sets
    it; any other factor (a learning-rate multiplier) is folded into W and b.
    """
    state = rename_parameters(named, GENERATOR_NAME_RULES, "generator")
    published_factor = {_rename(name, GENERATOR_NAME_RULES)[1]: factor for name, factor in conv_factors.items()}
    for bias_key, ours in equalized_bias_scales(state).items():
        if bias_key not in published_factor:
            raise PublishedCheckpointError(f"the published layer behind {bias_key} is not an equalised conv")
        ratio = published_factor[bias_key] / ours
        if not math.isclose(ratio, 1.0, rel_tol=1e-9):
            weight_key = bias_key[: -len("bias")] + "weight"
            state[weight_key], state[bias_key] = state[weight_key] * ratio, state[bias_key] * ratio
    return state


def generator_architecture(generator: Record, state: dict) -> dict:
    """The curriculum keys that decide our generator's architecture, read from the shapes."""
    siren_class = generator.modules["siren"].class_name
    if siren_class not in SIRENS:
        raise PublishedCheckpointError(f"the generator's field is a {siren_class}; this project has "
                                       f"{', '.join(sorted(SIRENS))}")
    channels, block = [], 0
    while f"decoder.blocks.{block}.conv1.conv.weight" in state:
        channels.append(int(state[f"decoder.blocks.{block}.conv1.conv.weight"].shape[0]))
        block += 1
    return {"model": siren_class,
            "latent_dim": int(state["siren.mapping_network.network.0.weight"].shape[1]),
            "hidden_dim": int(state["siren.network.0.layer.weight"].shape[0]),
            "decoder_channels": tuple(channels)}


def discriminator_architecture(state: dict) -> dict:
    """latent_dim and disc_width_factor of a discriminator state dict, read from the shapes."""
    return {"latent_dim": int(state["final.weight"].shape[0]) - 3,  # logit, latent, (pitch, yaw)
            "disc_width_factor": int(state["from_rgb.0.0.weight"].shape[0]) / FROM_RGB_CHANNELS[0]}


def _check_loads(module: torch.nn.Module, state: dict, what: str) -> None:
    try:
        module.load_state_dict(state)
    except RuntimeError as error:
        raise PublishedCheckpointError(f"the published {what} does not fit this project's {what}: {error}") from None


# --------------------------------------------------------------------------- #
# Reading the files
# --------------------------------------------------------------------------- #

PUBLISHED_FILE_NAMES = {"generator": "generator.pth", "ema": "ema.pth", "ema2": "ema2.pth",
                        "discriminator": "discriminator.pth"}


@dataclass
class PublishedFiles:
    """The files of one published run; EMAs and discriminator may be missing."""

    generator: Path
    ema: Optional[Path] = None
    ema2: Optional[Path] = None
    discriminator: Optional[Path] = None


def find_published_files(path=None, **explicit) -> PublishedFiles:
    """`path` is a folder holding generator.pth (ema.pth, ema2.pth, discriminator.pth beside it)
    or the generator file itself; `explicit` files (generator=, ema=, ema2=, discriminator=) win."""
    found = {}
    if path is not None:
        path = Path(path)
        if path.is_dir():
            folder = path
            if not (folder / PUBLISHED_FILE_NAMES["generator"]).is_file() and (folder / LATEST_NAME).is_file():
                raise PublishedCheckpointError(f"{folder} is a run directory of this project: it needs no import "
                                               f"(pass it to the scripts as it is)")
        elif path.is_file():
            folder, found["generator"] = path.parent, path
        else:
            raise PublishedCheckpointError(f"not found: {path}")
        for role, name in PUBLISHED_FILE_NAMES.items():
            if role not in found and (folder / name).is_file():
                found[role] = folder / name
    for role, file in explicit.items():
        if file is not None:
            if not Path(file).is_file():
                raise PublishedCheckpointError(f"--{role} file not found: {file}")
            found[role] = Path(file)
    if "generator" not in found:
        where = f" in {path}" if path is not None else ""
        raise PublishedCheckpointError(f"no published generator{where}: expected {PUBLISHED_FILE_NAMES['generator']} "
                                       f"(or name it with --generator)")
    return PublishedFiles(**found)


def _read_record(path: Path, role: str) -> Record:
    """A published pickle's top-level record, or a clear error for files of other kinds."""
    obj = read_published(path)
    if isinstance(obj, dict) and "format_version" in obj:
        raise PublishedCheckpointError(f"{path} is a checkpoint of this project (format {obj['format_version']}): "
                                       f"it needs no import; pass it to the scripts as it is")
    if not isinstance(obj, Record):
        raise PublishedCheckpointError(f"{path} is not a published MVCGAN {role} (it holds a {type(obj).__name__})")
    return obj


def read_generator(path: Path) -> Record:
    record = _read_record(path, "generator")
    modules = record.modules
    if "siren" not in modules:
        hint = " (an EMA file: pass it with --ema)" if "shadow_params" in record.state else ""
        raise PublishedCheckpointError(f"{path} holds a {record.class_path}{hint}, not a published MVCGAN generator")
    if "decoder" not in modules:
        raise PublishedCheckpointError(
            f"{path} holds a generator with no 2D decoder: a pi-GAN checkpoint, not an MVCGAN one (only those, "
            f"SIREN + decoder, can be imported)")
    return record


def read_ema_shadows(path: Path, names: List[str], shapes: List[torch.Size]) -> Tuple[List[torch.Tensor], int]:
    """(shadow tensors, num_updates) of a `torch_ema` file written for a generator whose
    parameters, in `generator.parameters()` order, have these names and shapes."""
    record = _read_record(path, "EMA")
    shadows = record.attribute("shadow_params")
    if not isinstance(shadows, list):
        raise PublishedCheckpointError(f"{path} holds a {record.class_path}, not a torch_ema ExponentialMovingAverage")
    if len(shadows) != len(names) or any(tuple(s.shape) != tuple(t) for s, t in zip(shadows, shapes)):
        raise PublishedCheckpointError(
            f"{path} does not average this generator: {len(shadows)} shadow tensors for {len(names)} parameters, "
            f"or shapes that differ")
    return shadows, int(record.attribute("num_updates") or 0)


def read_discriminator(path: Path) -> dict:
    record = _read_record(path, "discriminator")
    if "fromRGB" not in record.modules:
        raise PublishedCheckpointError(f"{path} holds a {record.class_path}, not a published CCSEncoderDiscriminator")
    return rename_parameters(record.named_parameters(), DISCRIMINATOR_NAME_RULES, "discriminator")


# --------------------------------------------------------------------------- #
# The whole import
# --------------------------------------------------------------------------- #

def import_published(files: PublishedFiles, curriculum_name: str) -> dict:
    """A checkpoint of this project (the dict `save_checkpoint` writes) from published files.

    It holds the published step, the raw generator, both EMAs (raw weights, with a warning,
    for a missing EMA file), the discriminator when given, and the named curriculum with the
    architecture keys read from the shapes; no optimiser, scaler, RNG or data-position state.
    """
    curriculum = get_curriculum(curriculum_name)
    generator = read_generator(files.generator)
    named = generator.named_parameters()
    factors = equalized_conv_factors(generator)
    raw = convert_generator_parameters(named, factors)
    curriculum.update(generator_architecture(generator, raw))
    metadata = extract_metadata(curriculum, 0)
    _check_loads(build_generator(metadata), raw, "generator")

    step = generator.attribute("step")
    if not isinstance(step, int):
        logger.warning("%s records no training step: importing as step 0", files.generator)
        step = 0
    epoch = generator.attribute("epoch")
    state = TrainingState(step=step, curriculum_name=curriculum_name, curriculum=curriculum, generator=raw,
                          emas=[], ema_num_updates=[], epoch=epoch if isinstance(epoch, int) else 0,
                          imported_from={role: str(p) for role, p in vars(files).items() if p is not None})

    names, shapes = [n for n, _ in named], [t.shape for _, t in named]
    for role, key in zip(("ema", "ema2"), EMA_KEYS):
        path = getattr(files, role)
        if path is None:
            logger.warning("no %s file (%s): %s starts from the raw generator weights",
                           role, PUBLISHED_FILE_NAMES[role], key)
            state.emas.append(raw)
            state.ema_num_updates.append(step)
            continue
        shadows, updates = read_ema_shadows(path, names, shapes)
        state.emas.append(convert_generator_parameters(list(zip(names, shadows)), factors))
        state.ema_num_updates.append(updates)

    if files.discriminator is not None:
        discriminator = read_discriminator(files.discriminator)
        architecture = discriminator_architecture(discriminator)
        if architecture["latent_dim"] != metadata["latent_dim"]:
            raise PublishedCheckpointError(
                f"the discriminator predicts {architecture['latent_dim']}-d latents, the generator takes "
                f"{metadata['latent_dim']}-d ones: not from the same run")
        curriculum["disc_width_factor"] = architecture["disc_width_factor"]
        _check_loads(CCSEncoderDiscriminator(architecture["latent_dim"], architecture["disc_width_factor"]),
                     discriminator, "discriminator")
        state.discriminator = discriminator
    return state.to_checkpoint()
