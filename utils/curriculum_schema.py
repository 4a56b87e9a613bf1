"""The schema of a training curriculum (the curricula themselves are in curriculums.py).

Every key a curriculum may hold, with its default and the values it accepts (`KEYS`); the checks
of a whole curriculum (`validate_curriculum`); reading it at a step (`extract_metadata` and the
stage helpers: `stage_start`, `last_upsample_step`, `fade_alpha` ...); and the command line's
`--set KEY=VALUE` overrides (`parse_override`, `apply_overrides`). curriculums.py describes the
format and re-exports these names (`curriculums.extract_metadata`); docs/METHOD.md §8 says what
every value means.
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
    "density_scale": Key(GLOBAL, 1.0, valid=POSITIVE),
    # > 0: the field is a signed distance (the sphere prior's, minus the density head) turned into density with
    # VolSDF's Laplace CDF of this width (world units); 0: the published raw density (§4)
    "sdf_beta": Key(GLOBAL, 0.0, valid=NON_NEGATIVE),
    # > 0: sdf_beta starts at this width and narrows geometrically to sdf_beta over sdf_beta_anneal_steps
    # (a narrow beta from the first step can fill the frame with an opaque wall whose gradients vanish); 0: none
    "sdf_beta_start": Key(GLOBAL, 0.0, valid=NON_NEGATIVE),
    "sdf_beta_anneal_steps": Key(GLOBAL, 0, valid=interval("[0, inf)", integer=True)),
    # multi-view consistency
    "stereo_auxiliary": Key(GLOBAL),
    "max_mixup_ratio": Key(GLOBAL, valid=interval("[0, 1]")),
    # volume rendering
    "last_back": Key(GLOBAL),
    "eval_last_back": Key(GLOBAL),
    "white_back": Key(GLOBAL, False),
    "far_background_depth": Key(GLOBAL, False),
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
# Reading a curriculum at a step, and checking it
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
    """Progressive fade-in: min(1, (step - last_upsample_step) / fade_steps), from where the current
    output size began, not the current stage (docs/METHOD.md §7); a fade_steps below 1 counts as 1."""
    fade_steps = max(1, extract_metadata(curriculum, step)["fade_steps"])
    return min(1.0, (step - last_upsample_step(curriculum, step)) / fade_steps)


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
    if (curriculum.get("sdf_beta") or 0) > 0 and curriculum.get("clamp_mode") != "relu":
        problems.append(f"sdf_beta needs clamp_mode 'relu' (its density is already >= 0; softplus would add a fog "
                        f"of density log 2 everywhere), not {curriculum.get('clamp_mode')!r}")
    if (curriculum.get("sdf_beta_start") or 0) > 0 and not (
            (curriculum.get("sdf_beta") or 0) > 0 and (curriculum.get("sdf_beta_anneal_steps") or 0) > 0):
        problems.append("sdf_beta_start needs sdf_beta > 0 (the width it narrows to) and sdf_beta_anneal_steps >= 1")
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
