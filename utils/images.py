"""Image helpers shared by the rendering scripts: tensors to uint8 pictures, rows and
grids, a depth colormap, animated GIFs.

Everything here works on plain numpy uint8 arrays (H, W, 3) once a tensor has gone
through `to_uint8`, so the scripts never touch PIL directly except through
`save_image` / `save_gif`. Entry points: `to_uint8`, `depth_to_uint8`, `turbo`,
`depth_legend`, `make_grid`, `save_image`, `save_gif`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence, Tuple

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

# Polynomial fit of Google's "turbo" colormap (A. Mikhailov / R. Du, 2019): coefficients
# of 1, x, ..., x^5 for R, G, B. Max error against the table is a few percent.
_TURBO_COEFFS = np.array([
    [0.13572138, 4.61539260, -42.66032258, 132.13108234, -152.94239396, 59.28637943],   # R
    [0.09140261, 2.19418839, 4.84296658, -14.18503333, 4.27729857, 2.82956604],          # G
    [0.10667330, 12.64194608, -60.58204836, 110.36276771, -89.90310912, 27.34824973],   # B
])


def to_uint8(images: torch.Tensor, value_range: Tuple[float, float] = (-1.0, 1.0)) -> np.ndarray:
    """(B, 3, H, W) or (3, H, W) tensor with values in `value_range` -> uint8 (B, H, W, 3) / (H, W, 3).

    Values outside the range are clamped (the generator's images are only roughly in [-1, 1]).
    """
    low, high = value_range
    x = images.detach().float().cpu()
    x = ((x - low) / (high - low)).clamp(0, 1)
    x = (x * 255).round().to(torch.uint8)
    return x.movedim(-3, -1).numpy()  # channels last


def turbo(x: np.ndarray) -> np.ndarray:
    """Turbo colormap: values in [0, 1] (clamped), any shape (...) -> uint8 (..., 3)."""
    x = np.clip(np.asarray(x, dtype=np.float64), 0.0, 1.0)
    powers = np.stack([x ** k for k in range(6)], axis=-1)  # (..., 6)
    rgb = np.clip(powers @ _TURBO_COEFFS.T, 0.0, 1.0)     # (..., 3)
    return (rgb * 255).round().astype(np.uint8)


def depth_to_uint8(depth: torch.Tensor, near: float, far: float) -> np.ndarray:
    """Colour-mapped depth: (B, H, W) or (H, W) tensor -> uint8 (..., H, W, 3).

    Depth is normalised over [near, far] (the ray range) and clamped, so the same colour
    means the same depth in every view. Turbo colour map: near is its dark-red end, far its
    dark-purple end (through yellow, green and blue); `depth_legend` draws the scale.
    """
    d = depth.detach().float().cpu().numpy()
    closeness = 1.0 - (d - near) / (far - near)
    return turbo(closeness)


def depth_legend(width: int, near: float, far: float, bar_height: int = 8) -> np.ndarray:
    """A uint8 (bar_height + text, width, 3) strip to put under depth images: the colour bar of
    `depth_to_uint8` from near (left) to far (right), and the labels "near <near>" and "far <far>"."""
    font = ImageFont.load_default()
    left, right = f"near {near:g}", f"far {far:g}"
    text_height = font.getbbox("near far 0123456789")[3] + 2
    bar = turbo(1.0 - np.linspace(0.0, 1.0, width))                           # (width, 3): near -> far
    strip = Image.new("RGB", (width, bar_height + text_height), (255, 255, 255))
    strip.paste(Image.fromarray(np.ascontiguousarray(np.broadcast_to(bar, (bar_height, width, 3)))), (0, 0))
    draw = ImageDraw.Draw(strip)
    draw.text((1, bar_height + 1), left, fill=(0, 0, 0), font=font)
    draw.text((max(1, width - 1 - draw.textlength(right, font=font)), bar_height + 1), right, fill=(0, 0, 0),
              font=font)
    return np.asarray(strip)


def depth_row(depth: torch.Tensor, near: float, far: float, size: int) -> np.ndarray:
    """Depth maps (n, S, S) as one row of `depth_to_uint8` pictures, nearest-upscaled to size x size
    each (so they line up with the images), with the `depth_legend` colour bar below."""
    row = make_row([resize(d, size) for d in depth_to_uint8(depth, near, far)])
    return np.concatenate([row, depth_legend(row.shape[1], near, far)])


def resize(image: np.ndarray, size: int, nearest: bool = True) -> np.ndarray:
    """Square-resize a uint8 (H, W, 3) image to size x size."""
    if image.shape[0] == size and image.shape[1] == size:
        return image
    resample = Image.Resampling.NEAREST if nearest else Image.Resampling.BILINEAR
    return np.asarray(Image.fromarray(image).resize((size, size), resample))


def make_grid(images: Sequence[np.ndarray], ncols: int) -> np.ndarray:
    """Tile equally sized uint8 (H, W, 3) images, row-major, `ncols` per row; missing cells black."""
    images = [np.asarray(im) for im in images]
    if not images:
        raise ValueError("make_grid needs at least one image")
    h, w, c = images[0].shape
    if any(im.shape != (h, w, c) for im in images):
        raise ValueError(f"make_grid needs images of one shape, got {sorted({im.shape for im in images})}")
    ncols = max(1, min(ncols, len(images)))
    nrows = -(-len(images) // ncols)
    grid = np.zeros((nrows * h, ncols * w, c), dtype=np.uint8)
    for i, im in enumerate(images):
        r, col = divmod(i, ncols)
        grid[r * h:(r + 1) * h, col * w:(col + 1) * w] = im
    return grid


def make_row(images: Sequence[np.ndarray]) -> np.ndarray:
    """Images side by side, left to right."""
    return make_grid(images, ncols=len(images))


def save_image(image: np.ndarray, path) -> Path:
    """Write a uint8 (H, W, 3) array (PNG, JPEG ... from the suffix); creates the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(path)
    return path


def save_gif(frames: Sequence[np.ndarray], path, fps: float = 24.0) -> Path:
    """Animated GIF, looping forever, from uint8 (H, W, 3) frames.

    PIL merges consecutive identical frames into one (adding their durations), so
    a static animation can have fewer frames than given; playback time is the same.
    """
    if not frames:
        raise ValueError("save_gif needs at least one frame")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pictures = [Image.fromarray(np.asarray(f, dtype=np.uint8)) for f in frames]
    duration = max(20, int(round(1000.0 / fps)))  # ms; most viewers clamp below 20 ms
    # Adaptive palette per frame; dithering off so static regions do not flicker.
    pictures = [p.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
                for p in pictures]
    pictures[0].save(path, save_all=True, append_images=pictures[1:], duration=duration, loop=0,
                     optimize=False, disposal=1)
    return path
