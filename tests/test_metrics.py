"""Tests for the metrics package: distances, offline Inception loading, the cached FID
pipeline, the multi-view consistency score, the Synthetic ground truth, and the registry.
CPU only, no downloads. (The command line is tested in test_fid_evaluation.py.)"""
import copy
import math
import sys
from pathlib import Path

import numpy as np
from PIL import Image
import pytest
import torch
from pytorch_fid.inception import FID_WEIGHTS_URL

import curriculums
import datasets
from generators.generators import ImplicitGenerator3d, build_generator
from metrics import fid_kid, inception, metric_main, metric_utils, mvc, synthetic


# --------------------------------------------------------------------------- #
# Fixtures
# --------------------------------------------------------------------------- #

@pytest.fixture(scope="module")
def metadata():
    return curriculums.extract_metadata(curriculums.get_curriculum("Synthetic"), 0)  # 16 px NeRF and output


@pytest.fixture(scope="module")
def tiny_generator(metadata):
    torch.manual_seed(0)
    return build_generator(metadata).eval()


@pytest.fixture(scope="module")
def plain_generator(metadata):
    """The same untrained weights without Synthetic's sphere prior: an empty field."""
    torch.manual_seed(0)
    return build_generator(dict(metadata, sphere_prior_density=0.0)).eval()


class FirstChannels(torch.nn.Module):
    """An Inception whose pool features are cut to the first `dims` channels.

    scipy's sqrtm of 2048 x 2048 covariances takes tens of seconds on a small CPU;
    at 64-d the whole pipeline, pytorch-fid's Fréchet distance included, runs as is.
    """

    def __init__(self, network, dims=64):
        super().__init__()
        self.network, self.dims = network, dims
        self.fingerprint = f"{network.fingerprint}_first{dims}"

    def forward(self, images):
        return [self.network(images)[0][:, :self.dims]]


@pytest.fixture(scope="module")
def small_inception():
    """Random-weight FID Inception on 75 px inputs, 64 features: same code path, a fraction of the cost."""
    torch.manual_seed(0)
    return FirstChannels(inception.load_inception(random_init=True, input_size=75)).eval()


# --------------------------------------------------------------------------- #
# Distances
# --------------------------------------------------------------------------- #

def test_frechet_distance_matches_closed_form_for_gaussians():
    # diagonal: ||mu1 - mu2||^2 + sum (sqrt(s1) - sqrt(s2))^2
    mu1, mu2 = np.array([0.0, 1.0, -2.0]), np.array([1.0, 1.0, 0.5])
    s1, s2 = np.array([1.0, 2.0, 0.5]), np.array([3.0, 0.2, 0.5])
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(s1) - np.sqrt(s2)) ** 2).sum()
    assert fid_kid.frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expected, abs=1e-6)
    # 2-D, same covariance: only the means count
    assert fid_kid.frechet_distance([0, 0], np.eye(2), [3, 4], np.eye(2)) == pytest.approx(25, abs=1e-6)
    # full covariances: tr((s1 s2)^(1/2)) from the eigenvalues of s1 s2
    rng = np.random.RandomState(0)
    a, b = rng.randn(200, 24), rng.randn(200, 24) @ rng.randn(24, 24) * 0.3 + 1
    (mu_a, sigma_a), (mu_b, sigma_b) = metric_utils.feature_statistics(a), metric_utils.feature_statistics(b)
    trace_sqrt = np.sqrt(np.linalg.eigvals(sigma_a @ sigma_b).astype(complex)).real.sum()
    expected = ((mu_a - mu_b) ** 2).sum() + np.trace(sigma_a) + np.trace(sigma_b) - 2 * trace_sqrt
    assert fid_kid.frechet_distance(mu_a, sigma_a, mu_b, sigma_b) == pytest.approx(expected, rel=1e-6)


def test_frechet_distance_of_identical_statistics_is_zero():
    features = np.random.RandomState(0).randn(500, 16)
    mu, sigma = metric_utils.feature_statistics(features)
    assert sigma.shape == (16, 16)
    assert abs(fid_kid.frechet_distance(mu, sigma, mu, sigma)) < 1e-6


def test_frechet_distance_refuses_non_finite_statistics():
    """The covariance of a single sample is NaN; scipy's sqrtm never returns on it."""
    features = np.ones((1, 4))
    mu, sigma = metric_utils.feature_statistics(features)  # sigma NaN (and a numpy warning)
    with pytest.raises(ValueError, match="not finite"):
        fid_kid.frechet_distance(mu, sigma, np.zeros(4), np.eye(4))


def test_kid_near_zero_for_same_features_and_positive_when_shifted():
    rng = np.random.RandomState(0)
    a, b = rng.randn(300, 64), rng.randn(300, 64)
    same, _ = fid_kid.kid(a, a, num_subsets=10, subset_size=1000)  # subsets capped at 300
    similar, _ = fid_kid.kid(a, b, num_subsets=10)
    shifted, shifted_std = fid_kid.kid(a, b + 0.5, num_subsets=10)
    # the unbiased estimator on one set against itself is -2 (mean diagonal - mean off-diagonal
    # kernel) / m: small, slightly negative
    assert abs(same) < 0.1 * shifted and abs(similar) < 0.02 * shifted
    assert shifted > 0.5
    assert shifted_std >= 0
    # deterministic for a given seed
    assert fid_kid.kid(a, b, num_subsets=5, subset_size=50) == fid_kid.kid(a, b, num_subsets=5, subset_size=50)


# --------------------------------------------------------------------------- #
# Inception, offline
# --------------------------------------------------------------------------- #

def test_missing_weights_error_names_file_url_and_place(offline_hub):
    with pytest.raises(inception.InceptionWeightsMissing) as caught:
        inception.load_inception()
    message = str(caught.value)
    expected_path = offline_hub / "checkpoints" / inception.FID_WEIGHTS_FILENAME
    assert inception.FID_WEIGHTS_FILENAME in message
    assert FID_WEIGHTS_URL in message
    assert str(expected_path) in message
    assert "--inception_weights" in message
    assert isinstance(caught.value, RuntimeError)

    with pytest.raises(inception.InceptionWeightsMissing, match="no file at"):
        inception.load_inception(weights=str(offline_hub / "nowhere.pth"))


@pytest.mark.slow
def test_inception_loads_local_file_and_hub_cache_without_network(offline_hub, tmp_path):
    torch.manual_seed(1)
    reference = inception.fid_inception_architecture().state_dict()
    weights = tmp_path / "weights.pth"
    torch.save(reference, weights)

    model = inception.load_inception(weights=str(weights))
    assert torch.equal(model.blocks[0][0].conv.weight, reference["Conv2d_1a_3x3.conv.weight"])
    assert torch.equal(model.blocks[3][1].branch_pool.conv.weight, reference["Mixed_7b.branch_pool.conv.weight"])
    assert not model.training

    cached = inception.hub_weights_path()
    cached.parent.mkdir(parents=True)
    weights.rename(cached)
    from_hub = inception.load_inception()  # the download is patched to fail: this must come from the cache
    assert from_hub.fingerprint == model.fingerprint
    with torch.no_grad():
        features = from_hub(torch.rand(2, 3, 80, 80))[0]
    assert features.shape == (2, inception.FEATURE_DIM, 1, 1)


# --------------------------------------------------------------------------- #
# The FID/KID pipeline
# --------------------------------------------------------------------------- #

def test_generated_images_are_deterministic(tiny_generator, metadata):
    first = torch.cat(list(metric_utils.generated_images(tiny_generator, metadata, 3, batch_size=2, seed=5)))
    second = torch.cat(list(metric_utils.generated_images(tiny_generator, metadata, 3, batch_size=3, seed=5)))
    assert first.shape == (3, 3, 16, 16)
    assert first.min() >= 0 and first.max() <= 1
    assert torch.allclose(first, second, atol=1 / 255 + 1e-6)


@pytest.mark.slow
def test_fid_pipeline_end_to_end_caches_reals(tiny_generator, metadata, small_inception, tmp_path, monkeypatch):
    results = metric_main.evaluate(tiny_generator, metadata, metrics=("fid", "kid"), num_real=20, num_fake=12,
                                   real_dir=str(tmp_path), inception=small_inception, batch_size=8, device="cpu")
    assert math.isfinite(results["fid"]) and results["fid"] > 0
    assert math.isfinite(results["kid"]) and math.isfinite(results["kid_std"])
    assert results["num_real"] == 20 and results["num_fake"] == 12
    assert results["img_size"] == 16 and results["output_size"] == 16 and results["psi"] == 1.0

    folder = metric_utils.real_images_dir(metadata, 16, 20, str(tmp_path))
    assert Path(results["real_dir"]) == folder
    pngs = sorted(folder.glob("*.png"))
    assert len(pngs) == 20
    stats = list(folder.glob("inception_*.npz"))
    assert len(stats) == 1
    stamps = {p: p.stat().st_mtime_ns for p in pngs + stats}

    def no_rebuild(*args, **kwargs):
        raise AssertionError("the real images should come from the cache")

    monkeypatch.setattr(metric_utils, "build_dataset", no_rebuild)
    again = metric_main.evaluate(tiny_generator, metadata, metrics="kid", num_real=20, num_fake=12,
                                 real_dir=str(tmp_path), inception=small_inception, batch_size=8, device="cpu")
    assert again["kid"] == pytest.approx(results["kid"])
    assert {p: p.stat().st_mtime_ns for p in pngs + stats} == stamps


def test_parse_metrics():
    assert metric_main.parse_metrics("fid, kid") == ("fid", "kid")
    assert metric_main.parse_metrics(("mvc",)) == ("mvc",)
    with pytest.raises(ValueError, match="unknown metrics"):
        metric_main.parse_metrics("fid,is")


# --------------------------------------------------------------------------- #
# Multi-view consistency
# --------------------------------------------------------------------------- #

def _synthetic_views(dataset, heads, yaw_a, yaw_b, pitch=math.pi / 2):
    views_a = [dataset.render(i, yaw=yaw_a, pitch=pitch) for i in heads]
    views_b = [dataset.render(i, yaw=yaw_b, pitch=pitch) for i in heads]
    stack = lambda views, key: torch.stack([v[key] for v in views])
    return ((stack(views_a, "image") + 1) / 2, (stack(views_b, "image") + 1) / 2, stack(views_a, "depth"),
            stack(views_a, "cam2world"), stack(views_b, "cam2world"), stack(views_a, "mask"))


def test_warp_consistency_on_synthetic_ground_truth(metadata):
    dataset = datasets.Synthetic(64, metadata=metadata, length=16)
    step = 0.1
    image_a, image_b, depth_a, cam_a, cam_b, mask_a = _synthetic_views(
        dataset, [0, 1, 2], math.pi / 2 - step / 2, math.pi / 2 + step / 2)

    consistent = mvc.warp_consistency(image_a, image_b, depth_a, cam_a, cam_b, dataset.fov, mask=mask_a)
    assert consistent["l1"] < 0.02 and consistent["psnr"] > 25
    assert 0.2 < consistent["valid_fraction"] <= 1

    # view b of other heads: not the same object
    _, other_b, _, _, _, _ = _synthetic_views(dataset, [3, 4, 5], math.pi / 2 - step / 2, math.pi / 2 + step / 2)
    other = mvc.warp_consistency(image_a, other_b, depth_a, cam_a, cam_b, dataset.fov, mask=mask_a)
    assert other["l1"] > 4 * consistent["l1"] and other["l1"] > 0.05

    # the right images but a wrong pose for view b
    wrong_pose = mvc.warp_consistency(image_a, image_b, depth_a, cam_a, cam_a, dataset.fov, mask=mask_a)
    assert wrong_pose["l1"] > 2.5 * consistent["l1"]

    # a view against itself is exact
    itself = mvc.warp_consistency(image_a, image_a, depth_a, cam_a, cam_a, dataset.fov)
    assert itself["l1"] < 1e-4


def test_warp_consistency_upsamples_depth_to_the_image(metadata):
    dataset = datasets.Synthetic(32, metadata=metadata, length=4)
    step = 0.1
    image_a, image_b, _, cam_a, cam_b, _ = _synthetic_views(dataset, [0, 1], math.pi / 2 - step / 2,
                                                            math.pi / 2 + step / 2)
    coarse_depth = torch.stack([dataset.render(i, yaw=math.pi / 2 - step / 2, pitch=math.pi / 2,
                                               img_size=16)["depth"] for i in (0, 1)])
    result = mvc.warp_consistency(image_a, image_b, coarse_depth, cam_a, cam_b, dataset.fov)
    assert math.isfinite(result["l1"]) and result["l1"] < 0.1 and result["valid_fraction"] > 0.5


def test_multiview_consistency_of_a_generator(tiny_generator, metadata):
    results = metric_main.evaluate(tiny_generator, metadata, metrics=("mvc",), num_mvc=4, batch_size=2,
                                   device="cpu")
    for key in ("mvc_nerf_l1", "mvc_nerf_psnr", "mvc_image_l1", "mvc_image_psnr"):
        assert math.isfinite(results[key]), key
    assert 0 <= results["mvc_nerf_l1"] <= 1 and 0 <= results["mvc_image_l1"] <= 1
    assert 0 < results["mvc_nerf_valid"] <= 1 and 0 < results["mvc_image_valid"] <= 1
    assert results["num_mvc"] == 4 and results["mvc_yaw_step"] == mvc.MVC_YAW_STEP
    assert "fid" not in results


def _dense(generator):
    """A copy of `generator` whose field is opaque everywhere (density bias +100)."""
    dense = copy.deepcopy(generator)
    with torch.no_grad():
        dense.siren.final_layer.bias.fill_(100.0)
    return dense


def test_mvc_reports_the_opaque_fraction_and_warns_for_an_empty_field(plain_generator, metadata):
    empty = mvc.multiview_consistency(plain_generator, metadata, num_samples=2, batch_size=2)
    assert empty["mvc_nerf_opaque"] < mvc.MVC_MIN_OPAQUE  # an untrained field is empty...
    assert "say nothing" in empty["mvc_warning"]          # ...and the output says what that means
    dense = mvc.multiview_consistency(_dense(plain_generator), metadata, num_samples=2, batch_size=2)
    assert dense["mvc_nerf_opaque"] == 1.0 and "mvc_warning" not in dense


# --------------------------------------------------------------------------- #
# Ground truth for Synthetic
# --------------------------------------------------------------------------- #

def test_head_map_comparison_on_known_cases(metadata):
    yaw = torch.full((6,), math.pi / 2)
    pitch = torch.full((6,), math.pi / 2)
    real = synthetic.real_head_maps(metadata, yaw, pitch)
    assert real.mask.shape == (6, 16, 16) and real.image.shape == (6, 3, 16, 16)
    assert 0.1 < real.mask.float().mean() < 0.6  # a head, not an empty or a full frame
    same = synthetic.compare_head_maps(real, real)
    assert same["iou"] == 1.0 and same["depth_l1"] == 0.0 and same["depth_l1_fg"] == 0.0
    # A candidate shifted by one pixel: IoU drops, and the depth error where both agree grows.
    shifted = synthetic.HeadMaps(real.mask.roll(1, dims=-1), real.depth.roll(1, dims=-1), real.image)
    moved = synthetic.compare_head_maps(shifted, real)
    assert 0.5 < moved["iou"] < 1.0 and moved["depth_l1"] > 0 and moved["depth_l1_fg"] > moved["depth_l1"]
    # An empty candidate (background at ray_end everywhere): IoU 0, no common foreground.
    empty = synthetic.HeadMaps(torch.zeros_like(real.mask), torch.full_like(real.depth, metadata["ray_end"]),
                               real.image)
    nothing = synthetic.compare_head_maps(empty, real)
    assert nothing["iou"] == 0.0 and math.isnan(nothing["depth_l1"]) and nothing["depth_l1_fg"] > 0.1
    assert synthetic._gap_closed(0.5, 0.0, 1.0) == 0.5
    assert synthetic._gap_closed(0.02, 0.1, 0.0) == pytest.approx(0.8)


def test_synthetic_metric_leaves_the_callers_rng_alone(tiny_generator, metadata):
    # Training evaluates mid-run: building the untrained baselines (floor, prior) must not move
    # the global RNG the training loop draws its latents and poses from.
    synthetic._SYNTHETIC_CALIBRATION.clear()  # force the baselines to be built
    torch.manual_seed(123)
    before = torch.get_rng_state()
    scores = synthetic.synthetic_scores(tiny_generator, metadata, num_samples=4)
    assert "synthetic_iou_prior" in scores and torch.equal(before, torch.get_rng_state())


@pytest.mark.slow
def test_synthetic_metric_ceiling_beats_floor_and_an_untrained_generator_is_the_floor(
        plain_generator, tiny_generator, metadata):
    results = metric_main.evaluate(plain_generator, metadata, metrics=("synthetic",), num_synthetic=48,
                                   device="cpu")
    # Real heads against other real heads: same silhouettes to within identity, depth within ~1 cm.
    assert results["synthetic_iou_ceiling"] > 0.75 and results["synthetic_iou_floor"] < 0.1
    assert results["synthetic_depth_l1_fg_ceiling"] < 0.3 * results["synthetic_depth_l1_fg_floor"]
    assert results["synthetic_kid_ceiling"] < 0.2 * results["synthetic_kid_floor"]
    # The floor is an untrained generator with the seed-0 init and no prior: plain_generator's weights.
    assert results["synthetic_iou_closed"] == 0.0 and results["synthetic_depth_closed"] == 0.0
    # Synthetic's sphere prior alone, untrained, already draws a head-sized silhouette at the right
    # depth: reported as its own baseline (_prior), which the untrained generator with it scores.
    with_prior = synthetic.synthetic_scores(tiny_generator, metadata, num_samples=48)
    for name in ("iou", "depth_l1_fg", "kid"):
        assert with_prior[f"synthetic_{name}"] == with_prior[f"synthetic_{name}_prior"]
        assert with_prior[f"synthetic_{name}_floor"] == results[f"synthetic_{name}_floor"]
    assert with_prior["synthetic_iou_prior"] > 0.6 and with_prior["synthetic_iou_closed"] > 0.6
    assert with_prior["synthetic_depth_l1_fg_prior"] < 0.5 * results["synthetic_depth_l1_fg_floor"]
    no_prior = synthetic.synthetic_scores(plain_generator, dict(metadata, sphere_prior_density=0.0),
                                          num_samples=4)
    assert "synthetic_iou_prior" not in no_prior  # a curriculum without a prior has no prior baseline
    # A field that is opaque everywhere covers every head (IoU = head area) but is no closer in depth.
    dense = synthetic.synthetic_scores(_dense(plain_generator), metadata, num_samples=48)
    assert dense["synthetic_opaque"] == 1.0
    assert 0.1 < dense["synthetic_iou"] < 0.6
    assert dense["synthetic_iou"] == pytest.approx(dense["synthetic_iou_fog"])  # fog scores exactly the fog IoU
    # One fixed blob beats fog by far: the heads sit at the centre at every pose, with similar
    # outlines (at the full 256 poses it even edges out the real-vs-real ceiling, 0.905 vs 0.872).
    assert dense["synthetic_iou_blob"] > max(0.75, 2 * dense["synthetic_iou_fog"])
    # The best flat wall is far better than the untrained field, but real heads agree in depth
    # better than it where both are foreground: shape, not only distance.
    assert results["synthetic_depth_l1_ceiling"] < dense["synthetic_depth_l1_plane"] \
        < 0.5 * results["synthetic_depth_l1_fg_floor"]


def test_synthetic_metric_needs_a_synthetic_curriculum(tiny_generator, metadata):
    with pytest.raises(ValueError, match="Synthetic"):
        metric_main.evaluate(tiny_generator, {**metadata, "dataset": "FFHQ"}, metrics=("synthetic",),
                             num_synthetic=4)


# --------------------------------------------------------------------------- #
# The registry
# --------------------------------------------------------------------------- #

def test_unknown_metrics_are_refused_naming_the_known_ones(tiny_generator, metadata):
    assert metric_main.list_metrics() == ["fid", "kid", "mvc", "synthetic", "synthetic_aligned", "synthetic_matched"]  # what the CLI and README document
    for call, unknown in ((lambda: metric_main.parse_metrics("fid,nope"), "['nope']"),
                          (lambda: metric_main.evaluate(tiny_generator, metadata, metrics="mvc,FID,Nope"), "['nope']"),
                          (lambda: metric_main.parse_metrics(" , "), "[]")):
        with pytest.raises(ValueError) as caught:
            call()
        message = str(caught.value)
        assert message.startswith(f"unknown metrics {unknown}; choose from "), message
        assert all(name in message for name in metric_main.list_metrics()), message


@pytest.mark.parametrize("name", metric_main.list_metrics())
def test_every_registered_metric_runs_on_a_tiny_generator_through_the_one_batch_loop(
        name, tiny_generator, metadata, small_inception, tmp_path, monkeypatch):
    callers = []
    staged_forward = ImplicitGenerator3d.staged_forward

    def spy(self, z, *args, **kwargs):
        callers.append(sys._getframe(1).f_code.co_name)
        return staged_forward(self, z, *args, **kwargs)

    monkeypatch.setattr(ImplicitGenerator3d, "staged_forward", spy)
    synthetic._SYNTHETIC_CALIBRATION.clear()  # so that its baselines are rendered here too
    results = metric_main.evaluate(tiny_generator, metadata, metrics=(name,), num_real=6, num_fake=5,
                                   real_dir=str(tmp_path), inception=small_inception, num_mvc=3, num_synthetic=4,
                                   batch_size=2, device="cpu")
    scores = [value for key, value in results.items()
              if (key == name or key.startswith(f"{name}_")) and key != f"{name}_seconds" and isinstance(value, float)]
    assert scores and any(math.isfinite(value) for value in scores)
    assert results[f"{name}_seconds"] >= 0
    assert metric_main.summary_lines(results, (name,))  # something readable to print
    assert callers and set(callers) == {"render_in_batches"}  # no metric keeps a loop of its own
    assert not tiny_generator.training


def test_fid_and_kid_render_the_generated_images_once(tiny_generator, metadata, small_inception, tmp_path,
                                                      monkeypatch):
    rendered = []
    staged_forward = ImplicitGenerator3d.staged_forward

    def count(self, z, *args, **kwargs):
        rendered.append(z.shape[0])
        return staged_forward(self, z, *args, **kwargs)

    monkeypatch.setattr(ImplicitGenerator3d, "staged_forward", count)
    results = metric_main.evaluate(tiny_generator, metadata, metrics="fid,kid", num_real=6, num_fake=5,
                                   real_dir=str(tmp_path), inception=small_inception, batch_size=2, device="cpu")
    assert sum(rendered) == 5 and rendered == [2, 2, 1]
    assert math.isfinite(results["fid"]) and math.isfinite(results["kid"])


def test_synthetic_summary_has_the_readme_table_columns():
    """The CLI's synthetic table is named like the README's (the table a reader compares with)."""
    root = Path(__file__).resolve().parents[1]
    columns = [name for name, _ in synthetic.SUMMARY_COLUMNS]
    header = "| | " + " | ".join(columns) + " |"
    documents = [root / "README.md", *sorted((root / "docs").glob("*.md"))]
    assert any(header in path.read_text() for path in documents), header
    results = {f"synthetic_{key}{suffix}": 0.5 for _, key in synthetic.SUMMARY_COLUMNS
               for _, suffix in synthetic.SUMMARY_ROWS}
    results.update(synthetic_iou_fog=0.3, synthetic_iou_blob=0.9, synthetic_depth_l1_plane=0.015,
                   synthetic_iou_closed=1.01, synthetic_depth_closed=0.88, synthetic_kid_closed=0.92,
                   num_synthetic=256)
    lines = synthetic.summary_lines(results)
    assert all(name in lines[0] for name in columns)
    rows = {line.split("  ")[0] for line in lines[1:]}
    assert rows == {"ceiling: real vs other real heads", "floor: untrained generator, no prior",
                    "trivial: opaque everywhere / a flat wall at the best depth",
                    "trivial: one fixed blob where most heads are",
                    "the sphere prior alone (untrained generator with it)", "this generator"}
    assert "(101 % of the gap)" in lines[-1] and "(88 % of the gap)" in lines[-1]


class MeanColour(torch.nn.Module):
    """A stand-in Inception: the mean colour of each image as its 3 "pool features"."""

    fingerprint = "mean_colour"

    def forward(self, images):
        return [images.mean(dim=(2, 3))[:, :, None, None]]


@pytest.mark.parametrize("damage", ["truncated", "junk", "other_keys"])
def test_a_damaged_inception_statistics_cache_is_named_and_computed_again(tmp_path, capsys, damage):
    """Issue 32: a truncated inception_*.npz stopped fid_evaluation.py with a BadZipFile traceback."""
    for index in range(3):
        Image.fromarray(np.full((8, 8, 3), 40 * index, dtype=np.uint8)).save(tmp_path / f"{index:06d}.png")
    first = metric_utils.real_statistics(tmp_path, MeanColour())
    cache = tmp_path / "inception_mean_colour.npz"
    if damage == "truncated":
        cache.write_bytes(cache.read_bytes()[:100])
    elif damage == "junk":
        cache.write_bytes(b"not a zip")
    else:
        np.savez(cache, something=np.zeros(2))
    again = metric_utils.real_statistics(tmp_path, MeanColour())
    err = capsys.readouterr().err
    assert f"the Inception statistics cache {cache} is damaged" in err and "computing it again" in err
    for key in ("mu", "sigma", "features"):
        np.testing.assert_array_equal(again[key], first[key])
    with np.load(cache) as stats:  # written anew
        np.testing.assert_array_equal(stats["mu"], first["mu"])
