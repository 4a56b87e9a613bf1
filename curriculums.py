"""Training curricula: every hyper-parameter of a run, in one plain dict per dataset (docs/METHOD.md §8).

This is the file users edit: point `dataset_path` at your images and change numbers
here. Entry points: `get_curriculum(name)` and `extract_metadata(curriculum, step)`.
What every value means, and where the paper's tables come from, is in docs/METHOD.md §8.
Every key with its default and the values it accepts (`KEYS`), the checks and the helpers
are in utils/curriculum_schema.py; their names are importable from here too.

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

import copy
import math

# The schema, re-exported: code and tests use curriculums.KEYS, curriculums.extract_metadata and so on.
from utils.curriculum_schema import (  # noqa: F401
    DISCRIMINATOR_SIZES, GLOBAL, KEYS, LEGACY_CORRECTIONS, MAX_UPSAMPLE_LEVELS, REQUIRED, STAGE, STAGE_KEYS, Key,
    Range, apply_overrides, extract_metadata, fade_alpha, interval, is_final_stage, last_trained_step,
    last_upsample_step, next_stage_step, parse_override, stage_boundaries, stage_start, validate_curriculum,
    with_defaults)


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
# The embedded faces: procedural heads (synthetic_heads.py), small enough for
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
    1600: {},  # end of training (the README says how long the run takes)
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
# The recipe and the measurements that chose it: docs/EXPERIMENTS.md, "Critters". For one critter its
# silhouettes beat every fixed answer, but its depth error is still above a fitted ellipsoid's (soft surfaces).
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
    # a white background, known to the renderer (pi-GAN's CARLA): the silhouette must come from density
    "white_back": True,
    "last_back": False,
    "eval_last_back": False,
    "far_background_depth": True,
    # the density head's scale: at 1 even a direct fit to one image stays semi-transparent for hundreds of steps
    # (benchmarks/bench_fit.py; docs/EXPERIMENTS.md)
    "density_scale": 10.0,
    # the log warns past it: in the ten runs of the README's first command (seeds 0-4 on 1 and 2 threads) the
    # median of 100 steps' g_grad_norm peaked at 88-222, and none drifted (docs/EXPERIMENTS.md)
    "drift_g_grad_norm": 500,
    "hidden_dim": 64,
    "decoder_channels": (16, 16, 8, 8),  # unused with image_source "nerf"; kept small
    "disc_width_factor": 0.25,
}

# One critter seen from every side, 1600 steps: the embedded default, the README's first command (about 13
# minutes on one core; ten runs, seeds 0-4 on 1 and 2 threads: docs/EXPERIMENTS.md).
# The same run as `--curriculum Critters --set synthetic_objects=1 --max_steps 1600` (tests/test_curriculums.py).
OneCritter = {**{k: v for k, v in Critters.items() if k != 4000}, 1600: {}, "synthetic_objects": 1}

CURRICULA = {
    "CelebAHQ": CelebAHQ,
    "FFHQ": FFHQ,
    "Cat": Cat,
    "Synthetic": Synthetic,
    "Critters": Critters,
    "OneCritter": OneCritter,
}


def get_curriculum(name: str) -> dict:
    """A deep copy of the named curriculum (safe to modify)."""
    if name not in CURRICULA:
        raise ValueError(f"Unknown curriculum {name!r}; available: {', '.join(CURRICULA)}.")
    return copy.deepcopy(CURRICULA[name])
