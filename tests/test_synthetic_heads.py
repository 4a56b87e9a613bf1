"""The procedural Synthetic heads (synthetic_heads.py): determinism, flips, exact depth and cameras,
eyes large enough to learn, and multi-view consistency of the ground truth."""
import math
import pickle

import pytest
import torch

from curriculums import extract_metadata, get_curriculum
from generators.cameras import cam2world_from_poses, camera_ray_directions, to_world
from generators.warp import stereo_warp, unproject_depth
from synthetic_heads import Synthetic

HEADS = extract_metadata(get_curriculum("Synthetic"), 0)  # the face curricula's camera, 4096 heads, seed 0


def test_synthetic_deterministic_range_shape():
    ds = Synthetic(32, HEADS, length=10)
    a, pose = ds[3]
    assert a.shape == (3, 32, 32) and a.dtype == torch.float32
    # the label is the image's true pose (pitch, yaw), as the generator's poses are ordered
    assert pose.tolist() == pytest.approx([ds.pose_of(3)[1], ds.pose_of(3)[0]])
    assert a.min() >= -1 and a.max() <= 1
    assert torch.equal(a, Synthetic(32, HEADS, length=10)[3][0])
    assert (a - ds[4][0]).abs().mean() > 0.05
    assert (a - Synthetic(32, HEADS, length=10, seed=1)[3][0]).abs().mean() > 0.05
    assert len(ds) == 10
    with pytest.raises(IndexError):
        ds[10]
    pickle.loads(pickle.dumps(ds))  # DataLoader workers


def test_synthetic_flip_is_deterministic():
    plain, flipped = Synthetic(16, HEADS, length=32), Synthetic(16, HEADS, length=32, flip=True)
    outcomes = set()
    for i in range(32):
        image = flipped[i][0]
        assert torch.equal(image, flipped[i][0])
        was_flipped = torch.equal(image, plain[i][0].flip(-1)) and not torch.equal(image, plain[i][0])
        outcomes.add(was_flipped)
        # a flipped head (symmetric about x = 0) is the view from yaw pi - yaw: its pose label says so
        yaw = plain.pose_of(i)[0]
        assert flipped[i][1][1].item() == pytest.approx(math.pi - yaw if was_flipped else yaw, abs=1e-6)
    assert outcomes == {True, False}


def test_synthetic_render_pose_and_depth():
    ds = Synthetic(64, HEADS)
    out = ds.render(2, yaw=math.pi / 2, pitch=math.pi / 2)
    assert out["image"].shape == (3, 64, 64) and out["depth"].shape == (64, 64)
    assert out["mask"].dtype == torch.bool and out["cam2world"].shape == (4, 4)
    assert torch.allclose(out["cam2world"][:3, 3], torch.tensor([0.0, 0.0, 1.0]), atol=1e-6)
    mask, depth = out["mask"], out["depth"]
    assert 0.15 < mask.float().mean() < 0.7
    assert not mask[0].any() and not mask[:, 0].any()  # the head fits in the frame
    assert (depth[~mask] == 1.12).all()
    assert depth[mask].min() > 0.88 and depth[mask].max() < 1.12  # inside [ray_start, ray_end]
    # Depth is the distance along the unit ray: unprojected hits lie on the head's surfaces.
    points = to_world(out["cam2world"][None], unproject_depth(depth[None], ds.fov))[0]
    head = ds.head(2)
    q = (points[mask.reshape(-1)][:, None].double() - head.centres.double()) / head.radii.double()
    on_surface = ((q ** 2).sum(-1) - 1).abs().min(dim=1).values
    assert on_surface.max() < 1e-3
    assert (points[mask.reshape(-1)].abs() < 0.12).all()  # inside the SIREN's box
    # Default pose comes from the distribution, deterministic per index.
    own = ds.render(2)
    assert (own["yaw"], own["pitch"]) == ds.pose_of(2) and own["yaw"] != math.pi / 2
    assert torch.equal(own["image"], ds[2][0])


def test_synthetic_eyes_are_resolved_at_the_training_resolution():
    """The demo trains at 16 px first: an eye has to span more than one pixel there to be learnt.

    Counts the pixel centres of a frontal 16 px view that hit an eyeball or iris (primitives
    1-4, labels 2-5). With the earlier eye radius (0.009-0.012) many eyes hit one pixel.
    """
    ds = Synthetic(16, HEADS)
    cam2world = cam2world_from_poses(torch.tensor([math.pi / 2]), torch.tensor([math.pi / 2]))[0]
    dirs = camera_ray_directions(16, ds.fov) @ cam2world[:3, :3].T
    pixels_per_eye = []
    for index in range(50):
        label = ds.head(index).radiance(cam2world[:3, 3], dirs)[3]
        pixels_per_eye += [int(((label == 2) | (label == 3)).sum()), int(((label == 4) | (label == 5)).sum())]
    assert min(pixels_per_eye) >= 2
    assert sum(pixels_per_eye) / len(pixels_per_eye) >= 3


def test_synthetic_multiview_ground_truth_consistency():
    """Warping view b into view a with the true cameras reproduces view a; a wrong pose does not."""
    ds = Synthetic(64, HEADS)
    yaw, pitch = math.pi / 2, math.pi / 2
    for index in (0, 1):
        a = ds.render(index, yaw=yaw, pitch=pitch)
        b = ds.render(index, yaw=yaw + 0.15, pitch=pitch - 0.05)
        wrong_b = ds.render(index, yaw=yaw + 0.45, pitch=pitch - 0.05)["cam2world"]

        def warp(maps, cam_b):
            warped, valid = stereo_warp(aux_maps=maps[None], primary_depth=a["depth"][None],
                                        primary_cam2world=a["cam2world"][None],
                                        aux_cam2world=cam_b[None], fov=ds.fov, projection="pinhole")
            return warped[0], valid[0]

        warped, valid = warp(b["image"], b["cam2world"])
        # Co-visible pixels: the head in both views, not occluded in b (the distance from
        # camera b to the 3D point agrees with b's depth map there), away from b's silhouette.
        points = to_world(a["cam2world"][None], unproject_depth(a["depth"][None], ds.fov))[0]
        dist_b = (points - b["cam2world"][:3, 3]).norm(dim=-1).reshape(64, 64)
        depth_b_at, _ = warp(b["depth"][None], b["cam2world"])
        mask_b_at, _ = warp(b["mask"][None].float(), b["cam2world"])
        candidates = a["mask"] & valid
        agree = (depth_b_at[0] - dist_b).abs() < 2e-3
        assert (agree & candidates).sum() > 0.85 * candidates.sum()  # geometry matches
        covisible = candidates & agree & (mask_b_at[0] > 0.999)
        assert covisible.sum() > 800

        error = (warped - a["image"]).abs().mean(0)[covisible].mean()
        wrong, _ = warp(b["image"], wrong_b)
        wrong_error = (wrong - a["image"]).abs().mean(0)[covisible].mean()
        assert error < 0.04
        assert wrong_error > 3 * error
