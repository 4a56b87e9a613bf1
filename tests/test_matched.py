"""The `synthetic_matched` metric (metrics/matched.py): shape scores for a family of procedural objects that match
each generated object to its nearest real one and back, so that neither a perfect generator of *other* family
members nor a generator collapsed onto one training object is scored wrongly."""
import math

import pytest
import torch

from curriculums import extract_metadata, get_curriculum
from generators.generators import build_generator
from metrics import matched
from metrics.matched import ObjectMaps, _object_sets, _truth, match_scores, pair_distances, real_object_maps
from metrics.metric_utils import eval_poses
from metrics.synthetic import HeadMaps
from synthetic_heads import Critters

CRITTERS = extract_metadata(get_curriculum("Critters"), 0)


def _repeat(maps: ObjectMaps, index: int, count: int) -> ObjectMaps:
    return ObjectMaps(maps.mask[index:index + 1].expand(count, -1, -1, -1),
                      maps.depth[index:index + 1].expand(count, -1, -1, -1))


def test_the_pool_scores_itself_perfectly_and_distances_are_the_synthetic_metrics():
    yaw, pitch = eval_poses(4, CRITTERS, 0)
    pool = real_object_maps(CRITTERS, range(4096, 4102), yaw, pitch)
    depth, iou = pair_distances(pool, pool)
    assert torch.allclose(depth.diagonal(), torch.zeros(6)) and torch.allclose(iou.diagonal(), torch.ones(6))
    assert (depth + torch.eye(6)).min() > 0 and (iou - torch.eye(6)).max() < 1  # the critters differ
    scores = match_scores(depth, iou)
    assert scores["depth_l1_fg"] == 0 and scores["iou"] == 1
    # pair_distances' depth is the synthetic metric's depth_l1_fg over all views of the pair
    a, b = pool.depth[0], pool.depth[1]
    assert float(depth[0, 1]) == pytest.approx(float((a - b).abs()[pool.mask[1]].mean()), rel=1e-5)


def test_a_family_is_scored_against_objects_the_generator_never_saw():
    pool, others, trained = _object_sets(CRITTERS, 16)
    assert min(pool) >= CRITTERS["synthetic_size"] and min(others) >= CRITTERS["synthetic_size"]
    assert not set(pool) & set(others) and max(trained) < CRITTERS["synthetic_size"]
    one = dict(CRITTERS, synthetic_objects=1)
    dataset = Critters(16, one, length=8)
    assert all({dataset.object_of(i) for i in indices} == {0} for indices in _object_sets(one, 4))
    # there the one training object is the truth, not a trivial answer: the baselines leave it out
    matched._MATCHED_TRUTH.clear()
    _, _, _, ceiling, trivial = _truth(one, 4, 4, 0)
    assert ceiling["depth_l1_fg"] == 0 and trivial["depth_l1_one_real"] == 0
    assert trivial["depth_l1_best_trivial"] == min(trivial[f"depth_l1_{n}"] for n in ("plane", "sphere", "ellipsoid",
                                                                                    "mean_object")) > 0


def test_a_collapsed_generator_does_not_beat_the_trivial_answers_but_a_perfect_one_does():
    """Precision alone rewards a generator that draws one training object for every latent; recall charges it
    with every other real object's distance to that one. A perfect generator of the family (other real
    objects) is the ceiling; at the metric's default 256 objects it scores better than every fixed answer on
    IoU (with a smaller pool its nearest neighbours are too far: at 24 objects the mean critter beats it)."""
    matched._MATCHED_TRUTH.clear()
    count = 256
    yaw, pitch, pool, ceiling, trivial = _truth(CRITTERS, count, 8, 0)
    trained = real_object_maps(CRITTERS, _object_sets(CRITTERS, count)[2][:16], yaw, pitch)
    for index in range(3):
        collapsed = match_scores(*pair_distances(_repeat(trained, index, count), pool))
        assert collapsed["depth_l1_fg"] >= trivial["depth_l1_one_real"] - 1e-9
        assert collapsed["iou"] <= trivial["iou_one_real"] + 1e-9
        assert collapsed["depth_recall"] > ceiling["depth_recall"]
    assert trivial["iou_best_trivial"] == max(trivial[f"iou_{n}"] for n in matched.TRIVIAL_IOU)
    assert trivial["depth_l1_best_trivial"] == min(trivial[f"depth_l1_{n}"] for n in matched.TRIVIAL_DEPTH)
    assert trivial["iou_ellipsoid"] >= trivial["iou_sphere"] and trivial["depth_l1_ellipsoid"] <= trivial["depth_l1_sphere"]
    assert ceiling["iou"] > trivial["iou_best_trivial"]
    others = real_object_maps(CRITTERS, _object_sets(CRITTERS, count)[1], yaw, pitch)
    assert match_scores(*pair_distances(others, pool)) == ceiling


def test_synthetic_matched_is_a_registered_metric_and_aligns_a_turned_family(monkeypatch):
    """Registered and scored end to end on an untrained generator (no shape: worse than the trivial answers);
    then with the generator replaced by the pool's own objects turned by a quarter turn, the alignment turns
    them back and the aligned score is perfect while the plain one is not."""
    from metrics.metric_main import evaluate, list_metrics

    assert "synthetic_matched" in list_metrics()
    matched._MATCHED_TRUTH.clear()
    torch.manual_seed(0)
    metadata = dict(CRITTERS, hidden_dim=16, latent_dim=16)
    generator = build_generator(metadata).eval()
    results = evaluate(generator, metadata, "synthetic_matched", num_synthetic=8)
    assert results["synthetic_matched_depth_vs_trivial"] > 1
    assert results["synthetic_matched_depth_vs_trivial"] == pytest.approx(
        results["synthetic_matched_depth_l1_fg"] / results["synthetic_matched_depth_l1_best_trivial"])
    assert 0 <= results["synthetic_matched_aligned_turn"] < 2 * math.pi
    assert results["synthetic_matched_aligned_depth_l1_fg"] <= results["synthetic_matched_depth_l1_fg"] + 1e-9 or \
        results["synthetic_matched_aligned_turn"] != 0

    # A "generator" that draws pool object i for latent i, turned by a quarter turn about the vertical axis: seen
    # from yaw it shows the object seen from yaw + pi/2 (turned_maps' convention).
    pool_objects = _object_sets(metadata, 8)[0]
    quarter = math.pi / 2

    def turned_pool(generator, metadata, codes, cam2world, **render):
        views = matched.MATCHED_VIEWS
        count = len(codes) // views
        yaw = torch.atan2(cam2world[:views, 2, 3], cam2world[:views, 0, 3])   # the camera's position angles
        pitch = torch.acos((cam2world[:views, 1, 3] / cam2world[:views, :3, 3].norm(dim=-1)).clamp(-1, 1))
        maps = real_object_maps(metadata, pool_objects[:count], yaw + quarter, pitch)
        return HeadMaps(maps.mask.flatten(0, 1), maps.depth.flatten(0, 1), torch.zeros(len(codes), 3, 1, 1))

    monkeypatch.setattr(matched, "generated_head_maps", turned_pool)
    scores = matched.matched_synthetic_scores(generator, metadata, num_objects=8, turns=8)
    assert scores["synthetic_matched_depth_l1_fg"] > 0.01
    assert scores["synthetic_matched_aligned_turn"] == pytest.approx(2 * math.pi - quarter)
    assert not scores["synthetic_matched_aligned_mirror"]
    assert scores["synthetic_matched_aligned_depth_l1_fg"] < 1e-4 and scores["synthetic_matched_aligned_iou"] == 1
