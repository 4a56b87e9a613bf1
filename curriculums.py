"""Training curricula: every hyper-parameter of a run, in one plain dict per dataset (docs/METHOD.md §8).

This is the file users edit: point `dataset_path` at your images and change numbers
here. Entry points: `get_curriculum(name)` and `extract_metadata(curriculum, step)`.
What every value means, and where the paper's tables come from, is in docs/METHOD.md §8.

Format of a curriculum
----------------------
* **Integer keys** are training steps that start a *stage*. A stage's dict holds the
  per-stage values (batch_size, num_steps, img_size, output_size, batch_split,
  gen_lr, disc_lr, pos_lambda, reproj_lambda). A stage starts at its step and lasts
  until the next integer key. Stage 0 must exist.
* The **last stage must be empty** (`{}`): training ends when it is reached.
* **String keys** are global values shared by all stages (camera, pose
  distribution, losses, model classes, dataset ...).
* `extract_metadata(curriculum, step)` merges the globals with the stage that is
  active at `step` (the latest integer key <= step); as published, a global wins where
  a key appears in both. Keys neither sets take their default from `KEYS`, the table
  of every key (REQUIRED ones must be set).
* `batch_size` is per process; a batch is processed in `batch_split` chunks.
* `output_size` is the image size of the 2D upsampler, `img_size` the size of the
  NeRF feature map: output_size = img_size * 2**n with 0 <= n <= 4.

Not in here on purpose: `sample_interval`, `model_save_interval` and `eval_freq`
are command-line flags of main.py. The NeRF density noise is max(0, 1 - step/5000)
(docs/METHOD.md §2); a curriculum may shorten it with `nerf_noise_steps` (Synthetic does).
"""
from __future__ import annotations

import ast
import copy
import math
from dataclasses import dataclass
from typing import Any, Mapping, Optional

from datasets import REAL_RESIZES
from discriminators.discriminators import RESOLUTION_TO_ENTRY
from generators.generators import IMAGE_SOURCES
from generators.warp import WARP_PROJECTIONS
from losses import PHOTOMETRIC_INPUTS
from synthetic_heads import PROCEDURAL_DATASETS

class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED = _Required()  # no default: every curriculum sets the key (validate_curriculum says where it is missing)
STAGE, GLOBAL = "stage", "global"


@dataclass(frozen=True)
class Range:
    """The numbers a key accepts: finite, within an interval whose ends are included or not, perhaps
    integers only, perhaps a sequence of `length` such numbers, perhaps None as well. `interval()`
    builds one from its usual notation."""

    low: float = -math.inf
    high: float = math.inf
    low_included: bool = True
    high_included: bool = True
    integer: bool = False
    length: Optional[int] = None  # a tuple (or list) of this many numbers, each in the interval
    nullable: bool = False        # None is accepted too (it switches something off / means "as in training")

    def __str__(self) -> str:
        kind = "an integer" if self.integer else "a finite number"
        text = (f"{'[' if self.low_included else '('}{self.low:g}, {self.high:g}"
                f"{']' if self.high_included else ')'}")
        if self.integer and self.low == 1 and self.low_included and math.isinf(self.high):
            text = "a positive integer"
        elif math.isinf(self.low) and math.isinf(self.high):
            text = kind
        elif math.isinf(self.high):
            text = f"{kind} {'>=' if self.low_included else '>'} {self.low:g}"
        elif math.isinf(self.low):
            text = f"{kind} {'<=' if self.high_included else '<'} {self.high:g}"
        else:
            text = f"{kind} in {text}"
        if self.length is not None:
            text = f"{self.length} values, each {text}"
        return f"{text} or None" if self.nullable else text

    def contains(self, value) -> bool:
        if value is None:
            return self.nullable
        if self.length is not None:
            return isinstance(value, (tuple, list)) and len(value) == self.length and \
                all(Range(self.low, self.high, self.low_included, self.high_included, self.integer).contains(v)
                    for v in value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.integer and not isinstance(value, int):
            return False
        if not math.isfinite(value):
            return False
        above = value >= self.low if self.low_included else value > self.low
        below = value <= self.high if self.high_included else value < self.high
        return above and below


def interval(text: str, **options) -> Range:
    """A Range from interval notation: "[1, inf)", "(0, 180)", "[0, 1]"; `options` as Range's fields."""
    low, high = (part.strip() for part in text.strip()[1:-1].split(","))
    return Range(float(low), float(high), text.strip()[0] == "[", text.strip()[-1] == "]", **options)


@dataclass(frozen=True)
class Key:
    """One row of KEYS."""

    scope: str                 # STAGE: in each stage's dict (or a global, which then applies to every stage);
                               # GLOBAL: a string key of the curriculum
    default: Any = REQUIRED    # what extract_metadata fills in where a curriculum leaves the key out
    choices: tuple = ()        # the values it may take, where they are a fixed set; the first is the
                               # published behaviour, the others opt-in corrections (docs/METHOD.md §13)
    valid: Optional[Range] = None  # the numbers it may take (validate_curriculum); None: not a number
    words: tuple = ()          # strings it accepts besides its numbers (batch_split: "auto")

    def accepts(self, value) -> bool:
        """Whether `value` is within `valid` or one of `words`."""
        return (isinstance(value, str) and value in self.words) or self.valid.contains(value)

    def expected(self) -> str:
        """What `accepts` takes, in words: "an integer >= 1 or 'auto'"."""
        return " or ".join([str(self.valid), *map(repr, self.words)])


# Every key a curriculum may hold, with its default and, for numbers, the values it accepts: the one
# table. `extract_metadata` fills the defaults in, so code reads `metadata[key]` and never carries a
# default of its own; `validate_curriculum` checks every value against its row before any process
# starts. A key that the code added later defaults to the behaviour from before it existed (the
# published one), so the curricula recorded in older checkpoints still read. What each value means:
# docs/METHOD.md §8.
POSITIVE_INT = interval("[1, inf)", integer=True)
NON_NEGATIVE = interval("[0, inf)")
POSITIVE = interval("(0, inf)")
ANY_NUMBER = interval("(-inf, inf)")
KEYS = {
    # per stage (the rows of the docs/METHOD.md §8 table)
    "batch_size": Key(STAGE, valid=POSITIVE_INT),     # images per process and step
    "num_steps": Key(STAGE, valid=interval("[2, inf)", integer=True)),  # depth samples per ray
    "img_size": Key(STAGE, valid=POSITIVE_INT),       # NeRF resolution S
    # decoder output: img_size * 2**n, a resolution the discriminator takes (a power of 2, checked below)
    "output_size": Key(STAGE, valid=interval("[2, 1024]", integer=True)),
    # a batch is processed in this many chunks; "auto": the fewest that fit the device's memory
    # (utils/memory_model.py)
    "batch_split": Key(STAGE, valid=POSITIVE_INT, words=("auto",)),
    "gen_lr": Key(STAGE, valid=NON_NEGATIVE),
    "disc_lr": Key(STAGE, valid=NON_NEGATIVE),
    "pos_lambda": Key(STAGE, valid=NON_NEGATIVE),     # weight of the discriminator's pose loss
    "reproj_lambda": Key(STAGE, valid=NON_NEGATIVE),  # weight of the photometric (reprojection) loss
    # camera and pose distribution; the *_eval keys replace theirs at evaluation (None: the training value)
    "fov": Key(GLOBAL, valid=interval("(0, 180)")),   # degrees
    "ray_start": Key(GLOBAL, valid=POSITIVE),         # and ray_start < ray_end
    "ray_end": Key(GLOBAL, valid=POSITIVE),
    "h_mean": Key(GLOBAL, valid=ANY_NUMBER),
    "v_mean": Key(GLOBAL, valid=ANY_NUMBER),
    "h_stddev": Key(GLOBAL, valid=NON_NEGATIVE),
    "v_stddev": Key(GLOBAL, valid=NON_NEGATIVE),
    "sample_dist": Key(GLOBAL),
    "h_stddev_eval": Key(GLOBAL, None, valid=interval("[0, inf)", nullable=True)),
    "v_stddev_eval": Key(GLOBAL, None, valid=interval("[0, inf)", nullable=True)),
    "sample_dist_eval": Key(GLOBAL, None),
    "hierarchical_sample": Key(GLOBAL),
    # optimisation
    "fade_steps": Key(GLOBAL, valid=NON_NEGATIVE),
    "topk_interval": Key(GLOBAL, valid=interval("[0, inf)", nullable=True)),  # None or 0: no top-k
    "topk_v": Key(GLOBAL, valid=interval("[0, 1]", nullable=True)),
    "betas": Key(GLOBAL, valid=interval("[0, 1)", length=2)),
    "unique_lr": Key(GLOBAL),
    "weight_decay": Key(GLOBAL, valid=NON_NEGATIVE),
    "r1_lambda": Key(GLOBAL, valid=NON_NEGATIVE),
    "grad_clip": Key(GLOBAL, valid=POSITIVE),         # the largest gradient norm (0 would zero every step)
    "z_lambda": Key(GLOBAL, valid=NON_NEGATIVE),
    # density noise max(0, 1 - step / nerf_noise_steps) (§2)
    "nerf_noise_steps": Key(GLOBAL, 5000, valid=POSITIVE),
    # models
    "model": Key(GLOBAL),
    "generator": Key(GLOBAL),
    "discriminator": Key(GLOBAL),
    "latent_dim": Key(GLOBAL, valid=POSITIVE_INT),
    "hidden_dim": Key(GLOBAL, valid=POSITIVE_INT),
    "decoder_channels": Key(GLOBAL, valid=interval("[1, inf)", integer=True, length=4)),  # one per decoder block
    "disc_width_factor": Key(GLOBAL, valid=POSITIVE),
    "clamp_mode": Key(GLOBAL),
    "z_dist": Key(GLOBAL),
    # the field's initial density sphere (§3); 0: none
    "sphere_prior_radius": Key(GLOBAL, 0.0, valid=NON_NEGATIVE),
    "sphere_prior_density": Key(GLOBAL, 0.0, valid=NON_NEGATIVE),
    # multi-view consistency
    "stereo_auxiliary": Key(GLOBAL),
    "max_mixup_ratio": Key(GLOBAL, valid=interval("[0, 1]")),
    # volume rendering
    "last_back": Key(GLOBAL),
    "eval_last_back": Key(GLOBAL),
    "white_back": Key(GLOBAL, False),
    # data
    "dataset": Key(GLOBAL),
    "dataset_path": Key(GLOBAL),
    "synthetic_size": Key(GLOBAL, 4096, valid=POSITIVE_INT),  # procedural data: number of images (poses)
    "synthetic_seed": Key(GLOBAL, 0, valid=interval("[0, inf)", integer=True)),
    # procedural data: distinct objects, image i showing object i % synthetic_objects; 0: one per image
    "synthetic_objects": Key(GLOBAL, 0, valid=interval("[0, inf)", integer=True)),
    # what the discriminator sees: the 2D decoder's output (published) or the field's own RGB (pi-GAN)
    "image_source": Key(GLOBAL, "decoder", choices=IMAGE_SOURCES),
    # warn when the median g_grad_norm of the last 100 steps passes this (train.DriftWatch); None: no watch
    "drift_g_grad_norm": Key(GLOBAL, None, valid=interval("(0, inf)", nullable=True)),
    # D's pose regression on real images too, with their true poses (procedural data only); 0: as published
    "real_pose_lambda": Key(GLOBAL, 0.0, valid=NON_NEGATIVE),
    # the field's colour ignores the ray direction in training too (as at inference when asked); False: published
    "lock_view_dependence": Key(GLOBAL, False),
    # the published behaviour by default; each has an opt-in correction
    "photometric_input": Key(GLOBAL, "shifted", choices=tuple(PHOTOMETRIC_INPUTS)),  # or "unit"
    "warp_projection": Key(GLOBAL, "ray_norm", choices=WARP_PROJECTIONS),            # or "pinhole"
    "real_resize": Key(GLOBAL, "nearest", choices=tuple(REAL_RESIZES)),              # or "antialias"
}

# The per-stage keys (a view of KEYS, in its order).
STAGE_KEYS = tuple(name for name, key in KEYS.items() if key.scope == STAGE)

# What checkpoints written before these keys existed were trained with (the corrections were
# then the only behaviour); a resumed run of such a checkpoint keeps them (run_spec.run_curriculum).
LEGACY_CORRECTIONS = {"photometric_input": "unit", "warp_projection": "pinhole", "real_resize": "antialias"}

MAX_UPSAMPLE_LEVELS = 4  # the 2D decoder has 4 scale blocks (docs/METHOD.md §5)
DISCRIMINATOR_SIZES = frozenset(RESOLUTION_TO_ENTRY)  # the output sizes the discriminator takes (§6)


# --------------------------------------------------------------------------- #
# Real-data curricula (docs/METHOD.md §8).
# --------------------------------------------------------------------------- #

def _stage(*, batch_size, num_steps, output_size, gen_lr, disc_lr, pos_lambda, img_size=64, batch_split=4,
           reproj_lambda=1):
    """One row of the docs/METHOD.md §8 table. Keyword-only: img_size and output_size cannot be swapped by
    position."""
    return {"batch_size": batch_size, "num_steps": num_steps, "img_size": img_size, "output_size": output_size,
            "batch_split": batch_split, "gen_lr": gen_lr, "disc_lr": disc_lr, "pos_lambda": pos_lambda,
            "reproj_lambda": reproj_lambda}


# Globals shared by the face curricula (CelebAHQ, FFHQ); Cat and Synthetic override some.
FACE_GLOBALS = {
    # camera and pose distribution
    "fov": 12,
    "ray_start": 0.88,
    "ray_end": 1.12,
    "h_stddev": 0.3,
    "v_stddev": 0.155,
    "h_mean": math.pi * 0.5,
    "v_mean": math.pi * 0.5,
    "sample_dist": "gaussian",
    "hierarchical_sample": False,  # the published code ignored this flag (docs/METHOD.md §2)
    # optimisation
    "fade_steps": 2000,
    "topk_interval": 2000,
    "topk_v": 0.6,
    "betas": (0.0, 0.9),
    "unique_lr": False,
    "weight_decay": 0,
    "r1_lambda": 0.2,
    "grad_clip": 10,
    "z_lambda": 0,
    # models
    "latent_dim": 256,
    "hidden_dim": 256,
    "decoder_channels": (256, 256, 128, 64),
    "disc_width_factor": 1.0,
    "model": "SPATIALSIRENBASELINE",
    "generator": "ImplicitGenerator3d",
    "discriminator": "CCSEncoderDiscriminator",
    "clamp_mode": "relu",
    "z_dist": "gaussian",
    # multi-view consistency
    "stereo_auxiliary": True,
    "max_mixup_ratio": 0.1,
    # volume rendering
    "last_back": False,
    "eval_last_back": True,
    # the published behaviour; each has an opt-in correction (KEYS' choices, docs/METHOD.md §13)
    "photometric_input": "shifted",  # the photometric loss on (x + 1) / 2 of the [0, 1] NeRF RGB
    "warp_projection": "ray_norm",   # the warp grid scaled by the primary ray's norm, not by f
    "real_resize": "nearest",        # real images resized to the stage's size by nearest neighbour
}

CelebAHQ = {
    0:      _stage(batch_size=56, num_steps=16, output_size=64, gen_lr=6e-5, disc_lr=2e-4, pos_lambda=15),
    25000:  _stage(batch_size=52, num_steps=16, output_size=128, gen_lr=5e-5, disc_lr=2e-4, pos_lambda=15),
    50000:  _stage(batch_size=44, num_steps=16, output_size=256, gen_lr=3e-5, disc_lr=1e-4, pos_lambda=0),
    100000: _stage(batch_size=28, num_steps=16, output_size=512, gen_lr=2e-5, disc_lr=8e-5, pos_lambda=0),
    200000: {},  # end of training
    **FACE_GLOBALS,
    # EDIT THIS: a glob (or a folder) matching your CelebA-HQ images.
    "dataset_path": "/path/to/celebahq/*.jpg",
    "dataset": "CelebAHQ",
    "max_mixup_ratio": 0.1,
}

FFHQ = {
    0:      _stage(batch_size=56, num_steps=16, output_size=64, gen_lr=6e-5, disc_lr=2e-4, pos_lambda=15),
    25000:  _stage(batch_size=52, num_steps=16, output_size=128, gen_lr=5e-5, disc_lr=2e-4, pos_lambda=15),
    50000:  _stage(batch_size=40, num_steps=16, output_size=256, gen_lr=3e-5, disc_lr=1e-4, pos_lambda=0),
    100000: _stage(batch_size=28, num_steps=16, output_size=512, gen_lr=2e-5, disc_lr=8e-5, pos_lambda=0),
    200000: {},  # end of training
    **FACE_GLOBALS,
    # EDIT THIS: a glob (or a folder) matching your FFHQ images.
    "dataset_path": "/path/to/ffhq/*.png",
    "dataset": "FFHQ",
    "max_mixup_ratio": 0.3,
}

Cat = {  # AFHQv2 cats
    0:      _stage(batch_size=56, num_steps=12, output_size=64, gen_lr=6e-5, disc_lr=2e-4, pos_lambda=15),
    25000:  _stage(batch_size=52, num_steps=12, output_size=128, gen_lr=5e-5, disc_lr=1.8e-4, pos_lambda=15),
    50000:  _stage(batch_size=40, num_steps=12, output_size=256, gen_lr=3e-5, disc_lr=1e-4, pos_lambda=0),
    100000: _stage(batch_size=32, num_steps=12, output_size=512, gen_lr=2e-5, disc_lr=8e-5, pos_lambda=0),
    200000: {},  # end of training
    **FACE_GLOBALS,
    # EDIT THIS: a glob (or a folder) matching your AFHQv2 cat images.
    "dataset_path": "/path/to/afhqv2/cat/*.png",
    "dataset": "Cat",
    "ray_start": 0.8,
    "ray_end": 1.2,
    "h_stddev": 0.4,
    "v_stddev": 0.2,
    "sample_dist": "uniform",
    "fade_steps": 10000,
    "max_mixup_ratio": 0.1,
}


# --------------------------------------------------------------------------- #
# The embedded default: procedural heads (synthetic_heads.py), small enough for
# a laptop CPU. Same camera and pose distribution as the face curricula.
# --------------------------------------------------------------------------- #

# Why each value differs from the face curricula (measured with `fid_evaluation.py --metrics
# synthetic`, docs/METHOD.md §8.1): the decoder's AdaIN removes the scale of the feature map, so
# only the warp + mixup and the photometric loss ask the field for density, while the pose loss
# pushes it down; at the faces' settings the field stays empty for the whole run.
_SYNTHETIC_STAGE = _stage(batch_size=8, num_steps=12, img_size=16, output_size=16, batch_split=1,
                          gen_lr=2e-4, disc_lr=4e-4,
                          pos_lambda=1,       # 15 dominates D's early loss and empties the field
                          reproj_lambda=10)   # photometric consistency: the strongest pull toward density

Synthetic = {
    0:    dict(_SYNTHETIC_STAGE),
    800:  dict(_SYNTHETIC_STAGE, output_size=32),  # the eyes need the 800 steps at 32 px
    1600: {},  # end of training: about 9 minutes on 2 CPU cores
    **FACE_GLOBALS,
    "dataset_path": None,      # procedural: nothing to download
    "dataset": "Synthetic",
    "synthetic_size": 4096,    # number of distinct heads
    "fade_steps": 100,
    "topk_interval": 100,
    "nerf_noise_steps": 300,   # density noise decays within the short run (5000 when absent)
    "clamp_mode": "softplus",  # relu passes no gradient to the (initially negative) density
    "max_mixup_ratio": 1.0,    # pulls density up; at 0.1 and 0.5 some runs drifted to noise
    # photometric_input, warp_projection: the published "shifted" and "ray_norm" (FACE_GLOBALS); with the
    # corrections on, the demo's appearance was worse (docs/EXPERIMENTS.md).
    "r1_lambda": 10,           # as pi-GAN's synthetic CARLA curriculum; 0.2 lets D win outright
    # healthy demo runs kept g_grad_norm below 70, drifted ones passed 100 by step 500 (docs/EXPERIMENTS.md)
    "drift_g_grad_norm": 100,
    # Without a prior the field settles into an opaque wall at the heads' distance (docs/METHOD.md
    # §8.1): it starts as a sphere of the heads' size instead, and empty rays end at ray_end.
    "sphere_prior_radius": 0.075,
    "sphere_prior_density": 300.0,
    "last_back": True,
    "hidden_dim": 64,
    "decoder_channels": (64, 64, 32, 16),
    "disc_width_factor": 0.25,
}

# --------------------------------------------------------------------------- #
# Procedural four-legged animals seen from all around (synthetic_heads.Critter): the data set where
# 3D shape shows (a sphere, an ellipsoid or a wall is visibly wrong from the side or the front).
# The recipe and the measurements that chose it: docs/EXPERIMENTS.md, "Critters". It does not learn
# the shape yet: the best recipe so far (this one) loses to a fitted ellipsoid.
# --------------------------------------------------------------------------- #

_CRITTERS_STAGE = _stage(batch_size=8, num_steps=14, img_size=16, output_size=16, batch_split=1,
                         gen_lr=2e-4, disc_lr=4e-4, pos_lambda=1, reproj_lambda=1)

Critters = {
    0:    dict(_CRITTERS_STAGE),
    4000: {},  # end of training (the first rung measured 1600 steps; its curve had not flattened)
    **FACE_GLOBALS,
    "dataset_path": None,       # procedural: nothing to download
    "dataset": "Critters",
    "synthetic_size": 4096,     # images (poses)
    "synthetic_objects": 0,     # 0: every image its own critter; 1: one critter from every side
    # all of yaw, densest at the side view (wide but not uniform: the density pins the orientation,
    # which a uniform circle would leave free), a band of pitch a little above the horizon
    "fov": 14,
    "ray_start": 0.87,
    "ray_end": 1.13,
    "sample_dist": "gaussian",
    "h_stddev": 1.2,
    "v_mean": math.pi * 0.5 - 0.2,
    "v_stddev": 0.15,
    # the field's own image (pi-GAN): the decoder cannot draw views without a 3D field behind them
    "image_source": "nerf",
    "fade_steps": 100,
    "topk_interval": None,
    "nerf_noise_steps": 300,
    "clamp_mode": "softplus",
    "max_mixup_ratio": 0.5,
    "r1_lambda": 10,
    # D also learns the real images' poses, so that the pose loss asks each generated view for what that
    # camera really sees (run E, the best measured; without it run D was level with E at 600 steps)
    "real_pose_lambda": 1.0,
    # a weak prior: at 300 (Synthetic's) the field stayed the sphere; without one it became a wall
    "sphere_prior_radius": 0.06,
    "sphere_prior_density": 30.0,
    "last_back": True,
    "hidden_dim": 64,
    "decoder_channels": (16, 16, 8, 8),  # unused with image_source "nerf"; kept small
    "disc_width_factor": 0.25,
}

CURRICULA = {
    "CelebAHQ": CelebAHQ,
    "FFHQ": FFHQ,
    "Cat": Cat,
    "Synthetic": Synthetic,
    "Critters": Critters,
}


# --------------------------------------------------------------------------- #
# Helpers
# --------------------------------------------------------------------------- #

def _is_stage_key(key) -> bool:
    return isinstance(key, int) and not isinstance(key, bool)


def stage_boundaries(curriculum: Mapping) -> list:
    """Sorted steps at which stages start (the integer keys)."""
    return sorted(k for k in curriculum if _is_stage_key(k))


def _stage_start(curriculum: Mapping, step: int):
    """The latest stage boundary <= step, or None if step precedes every stage."""
    start = None
    for boundary in stage_boundaries(curriculum):
        if boundary <= step:
            start = boundary
    return start


def extract_metadata(curriculum: Mapping, step: int) -> dict:
    """The stage active at `step` merged with the globals, and the defaults of KEYS for the keys
    neither sets. As published, a global value wins over a stage's value for the same key (so a
    global `batch_size` applies to every stage)."""
    metadata = {}
    start = _stage_start(curriculum, step)
    if start is not None:
        metadata.update(curriculum[start])
    metadata.update({k: v for k, v in curriculum.items() if not _is_stage_key(k)})
    return with_defaults(metadata)


def with_defaults(metadata: Mapping) -> dict:
    """A copy of `metadata` with the defaults of KEYS for the keys it lacks (REQUIRED ones stay absent)."""
    filled = dict(metadata)
    for name, key in KEYS.items():
        if key.default is not REQUIRED and name not in filled:
            filled[name] = copy.deepcopy(key.default)
    return filled


def stage_start(curriculum: Mapping, step: int) -> int:
    """Start of the stage active at `step` (0 before the first stage)."""
    start = _stage_start(curriculum, step)
    return 0 if start is None else start


def last_upsample_step(curriculum: Mapping, step: int) -> int:
    """Where the fade-in of the current output size began, as published: the first stage at or
    before `step` whose output size is the current one (0 if none). A stage that changes other
    values (a learning rate, the batch size) but keeps the output size does not restart the fade.

    Fade-in alpha = min(1, (step - last_upsample_step) / fade_steps) (docs/METHOD.md §7).
    """
    size = extract_metadata(curriculum, step).get("output_size")  # None in the final (empty) stage
    for boundary in stage_boundaries(curriculum):
        if boundary <= step and extract_metadata(curriculum, boundary).get("output_size") == size:
            return boundary
    return 0


def next_stage_step(curriculum: Mapping, step: int):
    """First stage boundary after `step`; float('inf') when there is none."""
    return next((b for b in stage_boundaries(curriculum) if b > step), float("inf"))


def is_final_stage(curriculum: Mapping, step: int) -> bool:
    """True when the stage active at `step` is empty, i.e. training is over."""
    start = _stage_start(curriculum, step)
    return start is not None and len(curriculum[start]) == 0


def last_trained_step(curriculum: Mapping, step: int) -> int:
    """The step whose stage describes a model saved at `step`: a checkpoint written at
    the final (empty) stage was trained in the stage before it."""
    if is_final_stage(curriculum, step):
        return max(0, _stage_start(curriculum, step) - 1)
    return step


def fade_alpha(curriculum: Mapping, step: int) -> float:
    """Progressive fade-in: min(1, (step - start of the stage) / fade_steps) (docs/METHOD.md §7)."""
    fade_steps = max(1, extract_metadata(curriculum, step)["fade_steps"])
    return min(1.0, (step - last_upsample_step(curriculum, step)) / fade_steps)


def get_curriculum(name: str) -> dict:
    """A deep copy of the named curriculum (safe to modify)."""
    if name not in CURRICULA:
        raise ValueError(f"Unknown curriculum {name!r}; available: {', '.join(CURRICULA)}.")
    return copy.deepcopy(CURRICULA[name])


def validate_curriculum(curriculum: Mapping, name: str = None) -> None:
    """Raise ValueError naming every problem found in `curriculum`, in one line (None if fine): its
    structure, missing keys, and every value against its row of KEYS."""
    label = f"curriculum {name!r}" if name else "curriculum"
    problems = []

    missing_globals = [name for name, key in KEYS.items()
                       if key.scope == GLOBAL and key.default is REQUIRED and name not in curriculum]
    if missing_globals:
        problems.append(f"missing global keys: {', '.join(missing_globals)}")

    boundaries = stage_boundaries(curriculum)
    if 0 not in boundaries:
        problems.append("no stage at step 0 (add an integer key 0 with the first stage's values)")
    if any(b < 0 for b in boundaries):
        problems.append("negative stage steps")
    if not boundaries or len(curriculum[boundaries[-1]]) != 0:
        problems.append("the last stage must be empty ({}): it marks the end of training")

    out_of_range = _values_out_of_range(curriculum, boundaries)
    problems.extend(message for _, message in out_of_range)
    if (curriculum.get("real_pose_lambda") or 0) > 0 and curriculum.get("dataset") not in PROCEDURAL_DATASETS:
        problems.append(f"real_pose_lambda needs the true poses of a procedural data set "
                        f"({', '.join(PROCEDURAL_DATASETS)}), not {curriculum.get('dataset')!r}")
    for boundary in boundaries[:-1]:
        stage = curriculum[boundary]
        if not isinstance(stage, Mapping):
            problems.append(f"stage {boundary} is not a dict")
            continue
        if len(stage) == 0:
            problems.append(f"stage {boundary} is empty but is not the last stage")
            continue
        merged = extract_metadata(curriculum, boundary)
        missing = [name for name, key in KEYS.items()
                   if key.scope == STAGE and key.default is REQUIRED and name not in merged]
        if missing:
            problems.append(f"stage {boundary} is missing keys: {', '.join(missing)}")
            continue
        if {"img_size", "output_size", "batch_size", "batch_split"} & {key for key, _ in out_of_range}:
            continue  # the checks below need these to be positive integers
        img, out = merged["img_size"], merged["output_size"]
        levels = math.log2(out / img)
        if not (levels == int(levels) and 0 <= levels <= MAX_UPSAMPLE_LEVELS):
            problems.append(f"stage {boundary}: output_size ({out}) must be img_size ({img}) "
                            f"times 2**n with 0 <= n <= {MAX_UPSAMPLE_LEVELS}")
        elif out not in DISCRIMINATOR_SIZES:
            problems.append(f"stage {boundary}: output_size ({out}) must be a size the discriminator takes: "
                            f"{', '.join(map(str, sorted(DISCRIMINATOR_SIZES)))}")
        split = merged["batch_split"]
        if split in KEYS["batch_split"].words:
            pass  # chosen at the stage's first step (utils/memory_model.py); it divides the batch
        elif merged["batch_size"] % split != 0:
            problems.append(f"stage {boundary}: batch_size ({merged['batch_size']}) is not "
                            f"divisible by batch_split ({split})")

    if "ray_start" in curriculum and "ray_end" in curriculum \
            and not curriculum["ray_start"] < curriculum["ray_end"]:
        problems.append("ray_start must be smaller than ray_end")
    if "betas" in curriculum and not all(isinstance(b, float) for b in curriculum["betas"]):
        problems.append("betas must be floats, e.g. (0.0, 0.9)")
    for name, key in KEYS.items():
        if key.choices and name in curriculum and curriculum[name] not in key.choices:
            problems.append(f"{name} must be one of {', '.join(map(repr, key.choices))}, not {curriculum[name]!r}")

    if problems:
        raise ValueError(f"invalid {label}: " + "; ".join(problems))


def _values_out_of_range(curriculum: Mapping, boundaries: list) -> list:
    """[(key, message)] for every value outside its KEYS row's `valid` range: a global value (or a default)
    once, a stage's value once per stage that holds it."""
    problems = []
    globals_ = with_defaults({k: v for k, v in curriculum.items() if not _is_stage_key(k)})
    for name, key in KEYS.items():
        if key.valid is None:
            continue
        if name in globals_:  # a global applies to every stage (extract_metadata)
            if not key.accepts(globals_[name]):
                problems.append((name, f"{name} must be {key.expected()}, not {globals_[name]!r}"))
            continue
        for boundary in boundaries[:-1]:
            stage = curriculum[boundary]
            if isinstance(stage, Mapping) and name in stage and not key.accepts(stage[name]):
                problems.append((name, f"stage {boundary}: {name} must be {key.expected()}, not {stage[name]!r}"))
    return problems


# --------------------------------------------------------------------------- #
# Overrides (main.py --set KEY=VALUE)
# --------------------------------------------------------------------------- #

def parse_override(text: str) -> tuple:
    """'KEY=VALUE' -> (key, value). VALUE is read as a Python literal (8, 2e-4, (0.0, 0.9), None,
    True) and otherwise kept as a string (a path). KEY is a global ('dataset_path') or
    'STAGE.KEY' ('0.batch_size')."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ValueError(f"--set {text!r}: expected KEY=VALUE, e.g. dataset_path=/data/ffhq or 0.batch_size=8")
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw
    return key, value


def _same_kind(old, new, words: tuple = (), real: bool = False) -> bool:
    """Whether `new` may replace `old` (a typo such as batch_size=8x must not become a string). `words`:
    the key's strings that stand for a number (Key.words); they replace a number and a number them.
    `real`: the key takes any number (its Range is not integer), so a float replaces an integer default
    (fov=12.5 where the curriculum says 12)."""
    if new in words or old in words:
        return not isinstance(new, str) or new in words
    if old is None or new is None:
        return True
    if isinstance(old, bool) or isinstance(new, bool):
        return isinstance(old, bool) and isinstance(new, bool)
    if isinstance(old, int) and not real:
        return isinstance(new, int)
    if isinstance(old, (int, float)):
        return isinstance(new, (int, float))
    if isinstance(old, (tuple, list)):
        return isinstance(new, (tuple, list))
    return isinstance(new, type(old))


def apply_overrides(curriculum: dict, overrides: Mapping) -> dict:
    """Apply `overrides` to `curriculum` in place (and return it).

    * an integer key is a whole stage: if there is any, the curriculum's stages are all
      replaced by the overrides' stages (how tests build tiny runs);
    * 'STAGE.KEY' sets KEY in the existing stage STAGE;
    * any other key sets a global.
    Unknown keys, missing stages and values of another type than the curriculum's raise
    ValueError; validate_curriculum checks the result as a whole.
    """
    stages = {k: v for k, v in overrides.items() if _is_stage_key(k)}
    if stages:
        for key in stage_boundaries(curriculum):
            del curriculum[key]
        curriculum.update(copy.deepcopy(stages))
    known = set(KEYS) | {k for k in curriculum if isinstance(k, str)}
    for stage in stage_boundaries(curriculum):
        known |= set(curriculum[stage])
    for key, value in overrides.items():
        if _is_stage_key(key):
            continue
        stage_text, dot, name = str(key).partition(".")
        if dot and stage_text.isdigit():
            stage = int(stage_text)
            if stage not in curriculum:
                raise ValueError(f"--set {key}: no stage {stage}; stages start at "
                                 f"{', '.join(map(str, stage_boundaries(curriculum)))}")
            target = curriculum[stage]
        else:
            name, target = str(key), curriculum
        if name not in known:
            raise ValueError(f"--set {key}: unknown key {name!r}; known keys: {', '.join(sorted(known))}")
        old = target.get(name, extract_metadata(curriculum, 0).get(name))
        key_row = KEYS.get(name)
        real = key_row is not None and key_row.valid is not None and not key_row.valid.integer
        if not _same_kind(old, value, key_row.words if key_row else (), real):
            raise ValueError(f"--set {key}={value!r}: expected {type(old).__name__} like the curriculum's {old!r}")
        target[name] = copy.deepcopy(value)
    return curriculum
