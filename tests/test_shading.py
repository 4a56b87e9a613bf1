"""Tests for utils/shading.py: normals from analytic depth maps, and the shaded picture."""
import math

import numpy as np
import pytest
import torch

from generators.cameras import camera_ray_directions
from utils.shading import BACKGROUND, geometry_images, normals_from_depth, shade, surface_depth

FOV = 12.0


def sphere_depth(size, radius=0.07, centre=(0.0, 0.0, -1.0)):
    """Depth (distance along the unit ray) of a sphere seen from a camera at the origin looking
    down -z, and where the rays hit it; the true camera-space normals."""
    d = camera_ray_directions(size, FOV).reshape(size, size, 3)
    c = torch.tensor(centre)
    b = (d * c).sum(-1)
    disc = b ** 2 - (c @ c - radius ** 2)
    hit = disc > 0
    t = torch.where(hit, b - disc.clamp(min=0).sqrt(), torch.full_like(b, 1.12))
    normals = torch.nn.functional.normalize(t[..., None] * d - c, dim=-1)
    return t, hit, normals


def angle_degrees(a, b):
    return torch.rad2deg(torch.acos((a * b).sum(-1).clamp(-1, 1)))


def test_plane_normals():
    """A plane z = -1 facing the camera, and one tilted about the y axis."""
    size = 16
    d = camera_ray_directions(size, FOV).reshape(size, size, 3)
    frontal = normals_from_depth((1 / -d[..., 2])[None], FOV)[0]
    assert angle_degrees(frontal, torch.tensor([0.0, 0, 1])).max() < 0.1   # float32 acos near 1
    normal = torch.nn.functional.normalize(torch.tensor([0.5, 0.0, 1.0]), dim=0)  # n . p = -1
    tilted = normals_from_depth((-1 / (d @ normal))[None], FOV)[0]
    assert angle_degrees(tilted, normal).max() < 0.1   # float32 acos near 1


def test_sphere_normals_inside_and_at_the_silhouette():
    t, hit, true = sphere_depth(48)
    normals = normals_from_depth(t[None], FOV, hit[None])[0]
    error = angle_degrees(normals, true)[hit]
    assert error.median() < 1 and error.max() < 15   # one-sided differences at the rim
    assert (normals[~hit] == 0).all()


def test_shade_lights_the_upper_left_and_keeps_the_background():
    t, hit, _ = sphere_depth(32)
    opacity = hit.float()[None]
    image = geometry_images(t[None], opacity, FOV)[0]
    assert image.shape == (32, 32, 3) and image.dtype == np.uint8
    np.testing.assert_array_equal(image[~hit.numpy()], np.broadcast_to(BACKGROUND, ((~hit).sum().item(), 3)))
    grey = image[..., 0].astype(int)
    assert (image[..., 0] == image[..., 1]).all()
    assert grey[10, 10] > grey[21, 21] + 60       # upper left lit, lower right in shade
    assert grey[hit.numpy()].min() > 0            # ambient: nothing on the surface is black


def test_shade_is_the_lambert_formula():
    normals = torch.nn.functional.normalize(torch.tensor([[[[0.0, 0.0, 1.0], [-0.5, 0.6, 0.62]]]]), dim=-1)
    image = shade(normals, torch.ones(1, 1, 2, dtype=torch.bool))
    light = np.array([-0.5, 0.6, 0.62]) / math.sqrt(0.25 + 0.36 + 0.62 ** 2)
    expected = np.round(255 * 0.85 * (0.2 + 0.8 * np.array([light[2], 1.0])))
    np.testing.assert_array_equal(image[0, 0, :, 0], expected)


def test_surface_depth_undoes_the_light_that_passed():
    """A silhouette pixel 60 % opaque: its rendered depth is 0.6 t + 0.4 far with last_back, 0.6 t without."""
    t, opacity = torch.tensor([[[0.95, 0.97]]]), torch.tensor([[[1.0, 0.6]]])
    rendered = opacity * t + (1 - opacity) * 1.12
    torch.testing.assert_close(surface_depth(rendered, opacity, far=1.12), t)
    torch.testing.assert_close(surface_depth(opacity * t, opacity), t)
    assert surface_depth(torch.tensor([1.12]), torch.tensor([0.0]), far=1.12).item() == pytest.approx(1.12)  # empty
