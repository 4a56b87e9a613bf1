"""One frame of the viewer: a generated object seen from a camera on its orbit.

The generator's cameras sit on the unit sphere and look at the origin (docs/METHOD.md §1),
so a browser's orbiting camera is reduced to its direction from the orbit centre (yaw,
pitch) and its distance, which zooms by narrowing the field of view instead of moving the
camera off the sphere the rays were trained on (`pose_from_camera`, `zoomed_fov`).
`FrameRenderer.render(settings, moving)` renders one frame with the inference path of the
rendering scripts (EMA weights, truncated codes, eval_last_back, the trained stage's
decoder fade-in): the decoded image, the NeRF's low-resolution RGB, its depth (turbo,
as in `render_multiview_image.py --depth`) or its shaded geometry (`utils.shading`); at a
lower NeRF size while the camera moves. `letterbox` fits the square frame into a
browser canvas of any shape. Entry points: `ViewSettings`, `FrameRenderer`, `letterbox`,
`pose_from_camera`, `camera_position`, `zoomed_fov`.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from typing import NamedTuple, Optional, Sequence

import numpy as np
import torch

from generators.cameras import PITCH_EPS, cam2world_from_poses, camera_origins
from generators.generators import LatentCodes, RenderOptions
from generators.pretrained import FittedCodes, LoadedModel, decoder_alpha, latent_for_seed
from utils.images import depth_to_uint8, resize, to_uint8
from utils.shading import geometry_images

MODES = ("image", "NeRF RGB", "depth", "geometry")
ORBIT_DISTANCE = 1.0        # the browser camera's distance at zoom 1: the generator's camera radius
MAX_CANVAS_SIDE = 1024      # frames are sent at the canvas size, scaled down to at most this per side
BAR_COLOUR = (40, 40, 40)   # around the square frame in a canvas of another shape


@dataclass(frozen=True)
class ViewSettings:
    """Everything one frame depends on."""

    seed: int = 0
    psi: float = 0.5
    style_seed: Optional[int] = None   # decoder style from this seed's z (style mixing); None: the seed's own
    use_codes_file: bool = False       # render the codes file's object instead of the seed
    mode: str = "image"                # one of MODES
    yaw: float = math.pi / 2           # radians (docs/METHOD.md §1); the front is the curriculum's h_mean
    pitch: float = math.pi / 2
    fov: float = 12.0                  # degrees, zoom included


class Frame(NamedTuple):
    image: np.ndarray        # uint8 (size, size, 3) at the render's own resolution
    seconds: float           # rendering time (codes, field, integration, decoder, colour map)
    nerf_size: int           # the NeRF resolution it was rendered at
    moving: bool             # rendered at the lower "while moving" size
    settings: ViewSettings


# -------------------------------------------------------------------- cameras
def pose_from_camera(position: Sequence[float], look_at: Sequence[float] = (0.0, 0.0, 0.0)):
    """(yaw, pitch, distance) of a camera at `position` orbiting `look_at` (world up +y):
    the inverse of `camera_position`. Pitch is kept inside [1e-5, pi - 1e-5]."""
    offset = np.asarray(position, dtype=np.float64) - np.asarray(look_at, dtype=np.float64)
    distance = float(np.linalg.norm(offset))
    if not distance > 0:
        return math.pi / 2, math.pi / 2, ORBIT_DISTANCE
    x, y, z = offset / distance
    pitch = float(np.clip(math.acos(float(np.clip(y, -1.0, 1.0))), PITCH_EPS, math.pi - PITCH_EPS))
    return math.atan2(z, x), pitch, distance


def camera_position(yaw: float, pitch: float, distance: float = ORBIT_DISTANCE) -> np.ndarray:
    """World position (3,) of the camera at (yaw, pitch) on the sphere of radius `distance`."""
    origin = camera_origins(torch.tensor([float(yaw)], dtype=torch.float64),
                            torch.tensor([float(pitch)], dtype=torch.float64))[0]
    return origin.numpy() * distance


def zoomed_fov(fov: float, distance: float, reference: float = ORBIT_DISTANCE) -> float:
    """The field of view (degrees) that frames the object as a camera `distance` away would
    frame it with `fov` at `reference`: 2 atan(distance / reference * tan(fov / 2))."""
    return math.degrees(2 * math.atan(distance / reference * math.tan(math.radians(fov) / 2)))


def wrapped_offset(angle: float, centre: float) -> float:
    """angle - centre wrapped into (-pi, pi]."""
    return (angle - centre + math.pi) % (2 * math.pi) - math.pi


# -------------------------------------------------------------------- frames
def moving_options(options: RenderOptions, image_size: int) -> RenderOptions:
    """`options` at a NeRF size of `image_size` with the same number of decoder blocks."""
    blocks = int(round(math.log2(options.output_size / options.rays.img_size)))
    return options.replace(rays=replace(options.rays, img_size=image_size), output_size=image_size * 2 ** blocks)


class FrameRenderer:
    """Renders frames of one checkpoint; `options` are the full-size ones (`render_options`),
    `moving_size` the NeRF size while the camera moves."""

    def __init__(self, model: LoadedModel, options: RenderOptions, moving_size: int, max_batch_size: int,
                 codes_file: Optional[FittedCodes] = None):
        self.model, self.full, self.max_batch_size = model, options, max_batch_size
        self.moving = moving_options(options, moving_size)
        self.alpha = decoder_alpha(model, options)  # the same blocks at both sizes, so the same fade-in
        self.codes_file = codes_file
        self._codes_key, self._codes = None, None

    def codes(self, settings: ViewSettings) -> LatentCodes:
        """The object's codes (batch 1): the codes file's as they are, or the seed's truncated codes
        with, when style_seed is set, the style code of that seed (`style_mix_forward`'s mixing)."""
        if settings.use_codes_file and self.codes_file is not None:
            return self.codes_file.codes
        key = (settings.seed, settings.psi, settings.style_seed)
        if key != self._codes_key:
            generator = self.model.generator
            with torch.no_grad():
                codes = generator.truncated_mapping(latent_for_seed(self.model, settings.seed), settings.psi)
                if settings.style_seed is not None:
                    style = generator.truncated_mapping(latent_for_seed(self.model, settings.style_seed), settings.psi)
                    codes = LatentCodes(codes.frequencies, codes.phases, style.style)
            self._codes_key, self._codes = key, codes
        return self._codes

    def options(self, settings: ViewSettings, moving: bool = False) -> RenderOptions:
        options = self.moving if moving else self.full
        return options.replace(rays=replace(options.rays, fov=float(settings.fov)))

    def cam2world(self, settings: ViewSettings) -> torch.Tensor:
        pitch = min(max(float(settings.pitch), PITCH_EPS), math.pi - PITCH_EPS)
        return cam2world_from_poses(torch.tensor([float(settings.yaw)]), torch.tensor([pitch])).to(self.model.device)

    @torch.no_grad()
    def render(self, settings: ViewSettings, moving: bool = False) -> Frame:
        """One frame (uint8, square) of `settings`, at the moving or the full size."""
        if settings.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {settings.mode!r}")
        start = time.perf_counter()
        options = self.options(settings, moving)
        generator, codes, cam2world = self.model.generator, self.codes(settings), self.cam2world(settings)
        if settings.mode == "image":
            out = generator.render_codes(codes, options, cam2world, self.alpha, self.max_batch_size)
            image = to_uint8(out.image[0])
        else:  # the NeRF alone: no decoder
            view = generator.render_view(codes, cam2world, options, max_batch_size=self.max_batch_size)
            if settings.mode == "NeRF RGB":
                image = to_uint8(view.rgb[0], value_range=(0.0, 1.0))
            elif settings.mode == "depth":
                image = depth_to_uint8(view.depth[0], options.rays.ray_start, options.rays.ray_end)
            else:
                image = geometry_images(view.depth.cpu(), view.opacity.cpu(), options.rays.fov,
                                        options.rays.ray_end if options.integration.last_back else None)[0]
        return Frame(np.ascontiguousarray(image), time.perf_counter() - start, options.rays.img_size, moving, settings)


def _sent_size(width: int, height: int, max_side: int):
    """(scale, width, height) of the picture sent for a canvas: the canvas scaled down to at most max_side."""
    scale = min(1.0, max_side / max(width, height, 1))
    return scale, max(1, round(width * scale)), max(1, round(height * scale))


def letterbox(frame: np.ndarray, width: int, height: int, max_side: int = MAX_CANVAS_SIDE) -> np.ndarray:
    """The square uint8 frame (s, s, 3) nearest-upscaled into the middle of a canvas of width x height
    (scaled down to at most `max_side` per side, same shape), the rest `BAR_COLOUR`: uint8 (H, W, 3)."""
    _, width, height = _sent_size(width, height, max_side)
    side = min(width, height)
    canvas = np.empty((height, width, 3), dtype=np.uint8)
    canvas[:] = BAR_COLOUR
    top, left = (height - side) // 2, (width - side) // 2
    canvas[top:top + side, left:left + side] = resize(frame, side)
    return canvas


def frame_square(width: int, height: int, max_side: int = MAX_CANVAS_SIDE):
    """(left, top, side) of the frame inside a canvas of width x height, in the canvas's own pixels."""
    scale, sent_width, sent_height = _sent_size(width, height, max_side)
    side = min(sent_width, sent_height)
    return (sent_width - side) // 2 / scale, (sent_height - side) // 2 / scale, side / scale
