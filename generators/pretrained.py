"""A trained generator from Python: load a checkpoint, render seeds from chosen views.

    from generators.pretrained import load_model, render

    model = load_model("runs/demo")             # a checkpoint file or a run directory; EMA weights
    views = render(model, seed=0, yaw_offsets=[-0.3, 0.0, 0.3])
    views.image, views.depth                    # (3, 3, out, out) in [-1, 1], (3, S, S) world units

`load_model` reads any checkpoint the scripts accept (a training run's, or one imported from the
published files: `utils.checkpoint`, loaded with weights_only=True) into an eval-mode generator with
the curriculum it was trained with and the stage its weights were last trained in (`LoadedModel`,
`TrainedStage`). `render_options` gives the inference options of that stage (eval_last_back, no
NeRF noise; other sizes on request, untrained decoder blocks refused), `render` a seed from yaw and
pitch offsets around the curriculum's mean pose, `render_views` any latent from any (n, 4, 4)
cameras. Seeds become latents the same way on every device (`latent_for_seed`, `codes_for_seed`),
and a codes file written by invert.py stands in for a seed (`load_fitted_codes`, `FittedCodes`).

The scripts (render_multiview_image.py, extract_shapes.py, invert.py, viewer.py, fid_evaluation.py)
are command lines over these functions; their flags live in `utils.rendering_cli`.
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Optional, Sequence

import numpy as np
import torch

from curriculums import extract_metadata, fade_alpha, get_curriculum, last_trained_step
from generators.cameras import cam2world_from_poses
from generators.generators import ImplicitGenerator3d, LatentCodes, RenderOptions, StagedOutput, sample_z
from generators.inference import RENDER_BATCH_SIZE, cat_outputs, expand_latents, render_in_batches
from inversion.codes_file import load_codes
from utils.checkpoint import load_checkpoint, load_generator, resolve_checkpoint_path
from utils.cli import CLIError

DEFAULT_MAX_BATCH_SIZE = 2_400_000  # SIREN points per chunk: fits a 16 GB GPU at H = 256
DEFAULT_PSI = 0.5  # the truncation the rendering scripts default to
MULTIVIEW_YAW_OFFSETS = (0.6, 0.5, 0.3, 0.0, -0.3, -0.5, -0.6)  # radians around h_mean (docs/METHOD.md §11)
VIDEO_YAW_AMPLITUDE = 0.5    # radians: about the range of the multiview row
VIDEO_PITCH_AMPLITUDE = 0.15  # radians: about one v_stddev of the face curricula

# The keys that decide the generator's architecture: a checkpoint can only be read
# with a curriculum that agrees on all of them.
ARCHITECTURE_KEYS = ("model", "latent_dim", "hidden_dim", "decoder_channels")


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


# --------------------------------------------------------------------- loading
def resolve_device(name: Optional[str] = None) -> torch.device:
    """The torch device called `name`; None: cuda if available, else cpu. CLIError for a device that
    does not parse or is not here."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise CLIError(f"invalid --device {name!r}: {error}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CLIError(f"--device {name} asked for, but CUDA is not available here (use --device cpu)")
    return device


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
    """Load a checkpoint (file or run directory) into an eval-mode generator on `device` (None: cuda if
    available, else cpu).

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


def load_fitted_codes(model: LoadedModel, path) -> FittedCodes:
    """Read a `--codes` file for `model` (CLIError when it was fitted to other weights); a tuned
    generator in the file replaces `model.generator`."""
    loaded = load_codes(path, model.generator)
    model.generator = loaded.generator
    return FittedCodes(codes_name(path), loaded.codes, loaded.yaw, loaded.pitch)


def codes_name(path) -> str:
    """What a `--codes` file is called in output file names, in place of a seed (inv/codes.pth: codes)."""
    return Path(path).stem


def latent_for_seed(model: LoadedModel, seed) -> torch.Tensor:
    """The seed's z (1, z_dim) from the curriculum's z_dist, drawn on the CPU so that a seed
    gives the same z on every device; returned on the model's device. A `FittedCodes` gives its
    LatentCodes instead."""
    if isinstance(seed, FittedCodes):
        return seed.codes
    rng = torch.Generator(device="cpu").manual_seed(int(seed))
    z_dist = model.metadata["z_dist"]
    return sample_z(1, model.generator.z_dim, z_dist, generator=rng).to(model.device)


@torch.no_grad()
def codes_for_seed(model: LoadedModel, seed, psi: float) -> LatentCodes:
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


def video_offsets(num_frames: int, yaw_amplitude: float = VIDEO_YAW_AMPLITUDE,
                  pitch_amplitude: float = VIDEO_PITCH_AMPLITUDE):
    """A closed loop around the mean pose: yaw = A sin(2 pi t), pitch = B cos(2 pi t), t = i / num_frames."""
    t = np.arange(num_frames) / num_frames
    return (yaw_amplitude * np.sin(2 * np.pi * t)).tolist(), (pitch_amplitude * np.cos(2 * np.pi * t)).tolist()


# ------------------------------------------------------------------- rendering
def render_views(model: LoadedModel, z, cameras: torch.Tensor, options: RenderOptions,
                 psi: float, max_batch_size: int, batch_size: int = RENDER_BATCH_SIZE) -> StagedOutput:
    """One z (1, z_dim) (or fitted LatentCodes of batch 1, rendered without truncation) rendered from
    every camera (n, 4, 4), `batch_size` views at a time, with the decoder fade-in of the trained
    stage (`decoder_alpha`).

    Returns the StagedOutput of all views, on the CPU.
    """
    batches = render_in_batches(model.generator, expand_latents(z, cameras.shape[0]), cameras, options, psi=psi,
                                alpha=decoder_alpha(model, options), batch_size=batch_size,
                                max_batch_size=max_batch_size)
    return cat_outputs([StagedOutput(*(t.cpu() for t in out)) for out in batches])


def render(model: LoadedModel, seed, yaw_offsets: Sequence[float] = MULTIVIEW_YAW_OFFSETS,
           pitch_offsets: Optional[Sequence[float]] = None, options: Optional[RenderOptions] = None,
           psi: float = DEFAULT_PSI, max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
           batch_size: int = RENDER_BATCH_SIZE) -> StagedOutput:
    """The seed's object (or a `FittedCodes`') seen from yaw and pitch offsets (radians) around the
    curriculum's mean pose (default: render_multiview_image.py's row of 7 yaws at the mean pitch),
    with `options` (default: the trained stage's, `render_options(model)`).

    Returns a StagedOutput on the CPU: image (n, 3, out, out) in [-1, 1], depth (n, S, S) in world
    units, nerf_rgb, cam2world and opacity.
    """
    options = render_options(model) if options is None else options
    cameras = cameras_around_mean(options, yaw_offsets, pitch_offsets, device=model.device)
    return render_views(model, latent_for_seed(model, seed), cameras, options, psi, max_batch_size, batch_size)
