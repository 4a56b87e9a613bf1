"""What every "load a checkpoint and render something" script shares.

`render_multiview_image.py`, `extract_shapes.py` (and anything else that turns a
trained generator into pictures or meshes) use these instead of copies of them:
the common command-line flags (`add_model_arguments`), loading a checkpoint with
its curriculum and checking it against a `--curriculum` the user named
(`load_model`), the stage the weights were last trained in (`trained_stage`),
inference `RenderOptions` that default to that stage and refuse untrained decoder
blocks (`render_options`), seeded latents (`latent_for_seed`), camera poses around
the curriculum's mean pose, argparse types that reject NaN and infinities
(`finite_float`), an output folder checked before the work (`prepare_output_dir`), its files never
replaced unless `--overwrite` says so (`add_overwrite_argument`, `output_files`), a size
refused before it is allocated when it cannot fit in memory (`check_memory`), and the
exit-code convention of every CLI (`run_cli`): 0 success, 2 a usage or input error (one
`error: ...` line), 1 a failure during the work.
"""
from __future__ import annotations

import argparse
import math
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple, Optional, Sequence

import torch

from curriculums import extract_metadata, fade_alpha, get_curriculum, last_trained_step
from generators.cameras import cam2world_from_poses
from generators.generators import ImplicitGenerator3d, LatentCodes, RenderOptions, sample_z
from utils.checkpoint import (CheckpointError, describe_os_error, load_checkpoint, load_generator,
                              resolve_checkpoint_path)
from utils.cpu_runtime import add_threads_argument
from utils.run_dir import ExistingFile, OutputFiles, check_output_path

DEFAULT_MAX_BATCH_SIZE = 2_400_000  # SIREN points per chunk: fits a 16 GB GPU at H = 256

# The keys that decide the generator's architecture: a checkpoint can only be read
# with a curriculum that agrees on all of them.
ARCHITECTURE_KEYS = ("model", "latent_dim", "hidden_dim", "decoder_channels")


class CLIError(RuntimeError):
    """A user error a script reports as one line (no traceback) with exit code 2."""


@dataclass(frozen=True)
class TrainedStage:
    """The curriculum stage a checkpoint's weights were last trained in: what the CLIs default to.

    A checkpoint saved at the final (empty) stage was trained in the stage before it
    (`curriculums.last_trained_step`). Decoder blocks beyond `decoder_blocks` never
    saw a gradient: rendering through them gives noise.
    """

    step: int          # the step whose stage describes the weights
    img_size: int      # NeRF resolution S
    output_size: int   # decoder output resolution
    num_steps: int     # depth samples per ray
    alpha: float       # the decoder's fade-in of its newest block at `step`
    metadata: dict     # extract_metadata(curriculum, step)

    @property
    def decoder_blocks(self) -> int:
        """Trained 2x decoder blocks: log2(output_size / img_size)."""
        return int(round(math.log2(self.output_size / self.img_size)))


def trained_stage(curriculum: dict, step: int) -> TrainedStage:
    """The TrainedStage of weights saved at `step` of `curriculum`."""
    trained_step = last_trained_step(curriculum, step)
    metadata = extract_metadata(curriculum, trained_step)
    return TrainedStage(trained_step, int(metadata["img_size"]), int(metadata["output_size"]),
                        int(metadata["num_steps"]), float(fade_alpha(curriculum, trained_step)), metadata)


@dataclass
class LoadedModel:
    """A generator ready for inference and what it came with."""

    generator: ImplicitGenerator3d
    curriculum: dict          # the checkpoint's own copy (the one the weights were trained with)
    curriculum_name: Optional[str]
    metadata: dict            # the trained stage's values plus the globals (stage.metadata)
    step: int                 # the step the checkpoint was saved at
    stage: TrainedStage
    checkpoint_path: str
    device: torch.device
    use_ema: bool


# ----------------------------------------------------------------------- flags
class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends "(default: X)" unless the help already says what the default is, or there is none."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default in (None, False, argparse.SUPPRESS) or action.required:
            return text
        return super()._get_help_string(action)


def add_model_arguments(parser: argparse.ArgumentParser, truncation: bool = True) -> None:
    """Flags for choosing the checkpoint, the weights, the device and (unless `truncation` is
    False) the truncation."""
    parser.add_argument("--path", required=True,
                        help="checkpoint file, or a run directory (its latest checkpoint.pth is used)")
    parser.add_argument("--curriculum", default=None,
                        help="name of the curriculum the checkpoint was trained with (e.g. FFHQ). Optional: "
                             "the checkpoint carries its own curriculum, which is what is used; when given, "
                             "it is checked to agree with the checkpoint's")
    parser.add_argument("--no_ema", action="store_true",
                        help="use the raw generator weights instead of the EMA weights")
    if truncation:
        parser.add_argument("--psi", type=finite_float, default=0.5,
                            help="truncation: codes = mean + psi * (codes - mean); 1 disables it (not applied "
                                 "to --codes)")
    parser.add_argument("--max_batch_size", type=int, default=DEFAULT_MAX_BATCH_SIZE,
                        help="at most this many 3D points go through the SIREN at once; lower it if "
                             "memory runs out")
    parser.add_argument("--device", default=None,
                        help="torch device, e.g. cuda, cuda:1, cpu (default: cuda if available, else cpu)")
    add_threads_argument(parser)


def resolve_device(name: Optional[str] = None) -> torch.device:
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise CLIError(f"invalid --device {name!r}: {error}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CLIError(f"--device {name} asked for, but CUDA is not available here (use --device cpu)")
    return device


# --------------------------------------------------------------------- loading
def _architecture(curriculum: dict) -> dict:
    metadata = extract_metadata(curriculum, 0)
    values = {}
    for key in ARCHITECTURE_KEYS:
        value = metadata[key]
        values[key] = tuple(value) if isinstance(value, (list, tuple)) else value
    return values


def check_curriculum(checkpoint_curriculum: dict, checkpoint_name: Optional[str], requested: str) -> None:
    """Raise CLIError unless the curriculum named on the command line agrees with the checkpoint's.

    Same name: fine. Different (or unrecorded) name: fine when the architecture keys
    (model, latent_dim, hidden_dim, decoder_channels) are equal, since the weights load
    either way; otherwise the error lists the mismatching keys.
    """
    if checkpoint_name is not None and checkpoint_name == requested:
        return
    try:
        named = get_curriculum(requested)
    except ValueError as error:
        raise CLIError(f"--curriculum: {error}") from None
    ours, theirs = _architecture(named), _architecture(checkpoint_curriculum)
    mismatches = [f"{key}: --curriculum {requested} has {ours[key]!r}, the checkpoint has {theirs[key]!r}"
                  for key in ARCHITECTURE_KEYS if ours[key] != theirs[key]]
    if mismatches:
        trained = f"curriculum {checkpoint_name!r}" if checkpoint_name else "a different curriculum"
        raise CLIError(f"--curriculum {requested} does not match the checkpoint, which was trained with "
                       f"{trained}; architecture differs in " + "; ".join(mismatches))


def load_model(path, curriculum_name: Optional[str] = None, use_ema: bool = True,
               device=None) -> LoadedModel:
    """Load a checkpoint (file or run directory) into an eval-mode generator on `device`.

    Raises CheckpointError for missing/unreadable checkpoints and CLIError when
    `curriculum_name` disagrees with the checkpoint's curriculum.
    """
    device = device if isinstance(device, torch.device) else resolve_device(device)
    checkpoint_path = resolve_checkpoint_path(path)
    state = load_checkpoint(checkpoint_path)
    checkpoint_name = state.get("curriculum_name")
    if curriculum_name is not None:
        check_curriculum(state["curriculum"], checkpoint_name, curriculum_name)
        if checkpoint_name != curriculum_name:
            print(f"note: --curriculum {curriculum_name} has the checkpoint's architecture, but the checkpoint "
                  f"was trained with {checkpoint_name or 'an unnamed curriculum'}; its own curriculum "
                  "(camera, ray range) is used", file=sys.stderr)
    ema = use_ema and "generator_ema" in state
    if use_ema and not ema:
        print(f"note: {checkpoint_path} has no EMA weights; using the raw generator", file=sys.stderr)
    generator, curriculum, step = load_generator(checkpoint_path, device=device, use_ema=use_ema, state=state)
    del state  # optimiser states and the discriminator are not needed
    stage = trained_stage(curriculum, step)
    return LoadedModel(generator, curriculum, checkpoint_name, stage.metadata, step, stage, str(checkpoint_path),
                       device, ema)


def render_options(model: LoadedModel, image_size: Optional[int] = None, output_size: Optional[int] = None,
                   num_steps: Optional[int] = None, lock_view_dependence: bool = False,
                   allow_untrained_blocks: bool = False) -> RenderOptions:
    """Inference options (eval_last_back, no NeRF noise) that default to the checkpoint's trained stage.

    image_size and num_steps default to the stage's; output_size to image_size * 2^(trained decoder
    blocks), which at the stage's image size is its output size. Raises CLIError unless output_size =
    image_size * 2^n with n <= the decoder's block count, and when n exceeds the trained blocks unless
    `allow_untrained_blocks` (then it prints a warning).
    """
    stage = model.stage
    image_size = stage.img_size if image_size is None else image_size
    if image_size < 1:
        raise CLIError(f"--image_size must be positive, got {image_size}")
    if output_size is None:
        output_size = image_size * 2 ** stage.decoder_blocks
    if num_steps is not None and num_steps < 2:
        raise CLIError(f"--num_steps must be at least 2, got {num_steps}")
    try:
        blocks = model.generator.decoder.num_blocks(image_size, output_size)
    except ValueError as error:
        raise CLIError(f"--output_size {output_size} with --image_size {image_size}: {error}") from None
    if blocks > stage.decoder_blocks:
        untrained = (f"--output_size {output_size} from a {image_size} px NeRF needs {blocks} decoder block(s), "
                     f"but the checkpoint (step {model.step}) trained {stage.decoder_blocks} ({stage.img_size} -> "
                     f"{stage.output_size} px); untrained blocks turn the image into noise")
        if not allow_untrained_blocks:
            raise CLIError(f"{untrained}. Use --output_size {image_size * 2 ** stage.decoder_blocks} or less, "
                           "or pass --allow_untrained_blocks")
        print(f"warning: {untrained}", file=sys.stderr)
    return RenderOptions.from_metadata(model.metadata, evaluation=True, img_size=image_size, num_steps=num_steps,
                                       output_size=output_size, lock_view_dependence=lock_view_dependence)


def decoder_alpha(model: LoadedModel, options: RenderOptions) -> float:
    """The fade-in to render with: the trained stage's alpha when `options` use exactly its decoder
    blocks (its newest block may still be fading in), 1 when they use fewer (those finished fading)."""
    blocks = model.generator.decoder.num_blocks(options.rays.img_size, options.output_size)
    return model.stage.alpha if blocks == model.stage.decoder_blocks else 1.0


def finite_float(text: str) -> float:
    """argparse type: a float that is neither NaN nor infinite (argparse's float accepts both)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def available_memory_bytes() -> Optional[int]:
    """MemAvailable from /proc/meminfo (Linux), else psutil when installed, else None (unknown)."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024  # the file counts kB
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil
    except ImportError:
        return None
    return int(psutil.virtual_memory().available)


def check_memory(needed: dict, device, what: str, advice: str, host_available: Optional[int] = None) -> None:
    """CLIError when `needed` bytes ({"host": ..., "device": ...}, either may be absent) exceed the memory
    available now (main memory, `host_available` if given; the GPU's free memory on CUDA): `what` needs
    ..., then `advice`."""
    available = {"host": available_memory_bytes() if host_available is None else host_available}
    if torch.device(device).type == "cuda" and "device" in needed:
        available["device"] = torch.cuda.mem_get_info(torch.device(device))[0]
    for where, free in available.items():
        if free is not None and needed.get(where, 0) > free:
            raise CLIError(f"{what} needs about {needed[where] / 2**30:.1f} GiB of "
                           f"{'GPU' if where == 'device' else 'main'} memory, {free / 2**30:.1f} GiB is available; "
                           f"{advice}")


def render_memory_bytes(model: "LoadedModel", options: RenderOptions, views: int) -> int:
    """A lower bound of the bytes rendering `views` views at once holds (float32): the field's outputs at
    every depth sample of the S x S rays (features, colour, density, the point and its depth), which
    the volume integral reads together, and the decoder's last activations and image at the output size."""
    size, samples = options.rays.img_size, options.rays.num_steps * (2 if options.hierarchical_sample else 1)
    features, last_channels = int(model.metadata["hidden_dim"]), int(model.metadata["decoder_channels"][-1])
    per_view = size * size * samples * (features + 8) + options.output_size ** 2 * (2 * last_channels + 3)
    return 4 * views * per_view


def prepare_output_dir(path, flag: str = "--output_dir") -> Path:
    """The output folder, created, after checking that a file can be written there: CLIError (one line,
    naming `flag`) when it cannot (a file, under a file, read-only, /proc), before any work is done."""
    folder = Path(path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        if isinstance(error, (FileExistsError, NotADirectoryError)):  # a file in the way: say which
            try:
                check_output_path(path, flag)
            except ValueError as named:
                raise CLIError(str(named)) from None
        raise CLIError(f"{flag} {path}: cannot write there ({describe_os_error(error)})") from None
    return folder


OVERWRITE_HELP = ("replace files of the same names already in --output_dir; without it a run that would replace a "
                  "file it did not write itself is refused before it starts (other files there are never touched)")


def add_overwrite_argument(parser: argparse.ArgumentParser, help: str = OVERWRITE_HELP) -> None:
    parser.add_argument("--overwrite", action="store_true", help=help)


def output_files(args, names: Sequence = ()) -> OutputFiles:
    """The files of --output_dir this run writes (`utils.run_dir.OutputFiles`, --overwrite), `names`, those
    known before the work, checked now: ExistingFile (run_cli: one `error:` line, exit 2) when one of them is
    already there. Reads the folder only: it is created by `prepare_output_dir`."""
    files = OutputFiles(args.output_dir, overwrite=args.overwrite)
    files.check(names)
    return files


def input_file(path, flag: str) -> Path:
    """`path` as a Path when it is a file; CLIError naming `flag` when it is missing or a folder."""
    path = Path(path)
    if path.is_dir():
        raise CLIError(f"{flag} {path} is a folder; name a file in it")
    if not path.is_file():
        raise CLIError(f"{flag} {path}: no such file")
    return path


SEED_MAX = 2 ** 63 - 1  # seeds of torch.Generator (and seed + 1, seed + rank) stay in int64


def seed_value(text: str) -> int:
    """argparse type: a seed, a whole number from 0 to SEED_MAX, so that every seed of a list is checked
    before the first one's files are written (torch.Generator.manual_seed would refuse it only then)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if not 0 <= value <= SEED_MAX:
        raise argparse.ArgumentTypeError(f"seed {value} is out of range: seeds are whole numbers from 0 to "
                                         f"{SEED_MAX} (2^63 - 1)")
    return value


# ---------------------------------------------------------------- latents, poses
class FittedCodes(NamedTuple):
    """A `--codes` file (written by invert.py) standing in for a seed: its codes are rendered as
    they are (no truncation), and `str()` is the name output files get."""

    name: str
    codes: LatentCodes  # (1, ...) each
    yaw: float          # the fitted camera, radians
    pitch: float

    def __str__(self) -> str:
        return self.name


def add_codes_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--codes", default=None,
                        help="a codes file written by invert.py (e.g. inv/codes.pth): render its fitted codes "
                             "(and its tuned generator, when it has one) instead of --seeds; files are named "
                             "after it. Needs the checkpoint the codes were fitted to as --path")


def load_fitted_codes(model: "LoadedModel", path) -> FittedCodes:
    """Read a `--codes` file for `model` (CLIError when it was fitted to other weights); a tuned
    generator in the file replaces `model.generator`."""
    from inversion.codes_file import load_codes

    loaded = load_codes(path, model.generator)
    model.generator = loaded.generator
    return FittedCodes(codes_name(path), loaded.codes, loaded.yaw, loaded.pitch)


def codes_name(path) -> str:
    """What a `--codes` file is called in output file names, in place of a seed (inv/codes.pth: codes)."""
    return Path(path).stem


def latent_for_seed(model: "LoadedModel", seed) -> torch.Tensor:
    """The seed's z (1, z_dim) from the curriculum's z_dist, drawn on the CPU so that a seed
    gives the same z on every device; returned on the model's device. A `FittedCodes` gives its
    LatentCodes instead."""
    if isinstance(seed, FittedCodes):
        return seed.codes
    rng = torch.Generator(device="cpu").manual_seed(int(seed))
    z_dist = model.metadata["z_dist"]
    return sample_z(1, model.generator.z_dim, z_dist, generator=rng).to(model.device)


@torch.no_grad()
def codes_for_seed(model: "LoadedModel", seed, psi: float) -> LatentCodes:
    """The seed's codes (batch 1): its z's truncated codes, or a `FittedCodes`' codes as they are."""
    latent = latent_for_seed(model, seed)
    return latent if isinstance(latent, LatentCodes) else model.generator.truncated_mapping(latent, psi)


def cameras_around_mean(options: RenderOptions, yaw_offsets: Sequence[float] = (0.0,),
                        pitch_offsets: Optional[Sequence[float]] = None, device="cpu") -> torch.Tensor:
    """(n, 4, 4) cameras at the curriculum's mean pose turned by the given offsets (radians)."""
    yaw = torch.tensor([options.pose.h_mean + float(o) for o in yaw_offsets], device=device)
    pitch_offsets = [0.0] * len(yaw_offsets) if pitch_offsets is None else pitch_offsets
    if len(pitch_offsets) != len(yaw_offsets):
        raise ValueError("yaw_offsets and pitch_offsets must have the same length")
    pitch = torch.tensor([options.pose.v_mean + float(o) for o in pitch_offsets], device=device)
    return cam2world_from_poses(yaw, pitch.clamp(1e-5, torch.pi - 1e-5))


# ------------------------------------------------------------------------ main
USAGE_ERROR = 2  # bad flags, missing or unreadable inputs: nothing was done
WORK_FAILED = 1  # the inputs were fine but the work itself failed


def run_cli(body: Callable[[], None]) -> int:
    """Run a script's body and return its exit code (the convention of every CLI of the project).

    Usage and input errors (CLIError, CheckpointError, an output file already there: ExistingFile) print one
    `error: ...` line and return 2;
    running out of memory prints one line with the flags that help and returns 1, as does an OSError
    (a full disk: a failure during the work, as is anything else, which keeps its traceback: Python
    exits with 1).
    """
    try:
        body()
    except (CheckpointError, CLIError, ExistingFile) as error:
        print(f"error: {error}", file=sys.stderr)
        return USAGE_ERROR
    except (torch.cuda.OutOfMemoryError, MemoryError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        print(f"error: out of memory ({reason}); lower --max_batch_size or --batch_size, or use a smaller "
              "resolution", file=sys.stderr)
        return WORK_FAILED
    except OSError as error:  # a full disk, the output folder gone: the work failed, say why in one line
        print(f"error: {describe_os_error(error)}", file=sys.stderr)
        return WORK_FAILED
    return 0
