"""Tests for fid_evaluation.py: distances, offline Inception loading, the cached FID
pipeline, the multi-view consistency score and the CLI. CPU only, no downloads."""
import json
import math
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch

import curriculums
import datasets
import fid_evaluation as fe
from generators.generators import build_generator
from utils.checkpoint import save_checkpoint


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

    def __init__(self, inception, dims=64):
        super().__init__()
        self.inception, self.dims = inception, dims
        self.fingerprint = f"{inception.fingerprint}_first{dims}"

    def forward(self, images):
        return [self.inception(images)[0][:, :self.dims]]


@pytest.fixture(scope="module")
def small_inception():
    """Random-weight FID Inception on 75 px inputs, 64 features: same code path, a fraction of the cost."""
    torch.manual_seed(0)
    return FirstChannels(fe.load_inception(random_init=True, input_size=75)).eval()


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """An empty torch hub cache and a network that refuses instantly."""
    hub = tmp_path / "hub"
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))

    def refuse(url, destination, timeout=None):
        raise urllib.error.URLError("network is unreachable (test)")

    monkeypatch.setattr(fe, "_download_weights", refuse)
    return hub


# --------------------------------------------------------------------------- #
# Distances
# --------------------------------------------------------------------------- #

def test_frechet_distance_matches_closed_form_for_gaussians():
    # diagonal: ||mu1 - mu2||^2 + sum (sqrt(s1) - sqrt(s2))^2
    mu1, mu2 = np.array([0.0, 1.0, -2.0]), np.array([1.0, 1.0, 0.5])
    s1, s2 = np.array([1.0, 2.0, 0.5]), np.array([3.0, 0.2, 0.5])
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(s1) - np.sqrt(s2)) ** 2).sum()
    assert fe.frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expected, abs=1e-6)
    # 2-D, same covariance: only the means count
    assert fe.frechet_distance([0, 0], np.eye(2), [3, 4], np.eye(2)) == pytest.approx(25, abs=1e-6)
    # full covariances: tr((s1 s2)^(1/2)) from the eigenvalues of s1 s2
    rng = np.random.RandomState(0)
    a, b = rng.randn(200, 24), rng.randn(200, 24) @ rng.randn(24, 24) * 0.3 + 1
    (mu_a, sigma_a), (mu_b, sigma_b) = fe.feature_statistics(a), fe.feature_statistics(b)
    trace_sqrt = np.sqrt(np.linalg.eigvals(sigma_a @ sigma_b).astype(complex)).real.sum()
    expected = ((mu_a - mu_b) ** 2).sum() + np.trace(sigma_a) + np.trace(sigma_b) - 2 * trace_sqrt
    assert fe.frechet_distance(mu_a, sigma_a, mu_b, sigma_b) == pytest.approx(expected, rel=1e-6)


def test_frechet_distance_of_identical_statistics_is_zero():
    features = np.random.RandomState(0).randn(500, 16)
    mu, sigma = fe.feature_statistics(features)
    assert sigma.shape == (16, 16)
    assert abs(fe.frechet_distance(mu, sigma, mu, sigma)) < 1e-6


def test_kid_near_zero_for_same_features_and_positive_when_shifted():
    rng = np.random.RandomState(0)
    a, b = rng.randn(300, 64), rng.randn(300, 64)
    same, _ = fe.kid(a, a, num_subsets=10, subset_size=1000)  # subsets capped at 300
    similar, _ = fe.kid(a, b, num_subsets=10)
    shifted, shifted_std = fe.kid(a, b + 0.5, num_subsets=10)
    # the unbiased estimator on one set against itself is -2 (mean diagonal - mean off-diagonal
    # kernel) / m: small, slightly negative
    assert abs(same) < 0.1 * shifted and abs(similar) < 0.02 * shifted
    assert shifted > 0.5
    assert shifted_std >= 0
    # deterministic for a given seed
    assert fe.kid(a, b, num_subsets=5, subset_size=50) == fe.kid(a, b, num_subsets=5, subset_size=50)


# --------------------------------------------------------------------------- #
# Inception, offline
# --------------------------------------------------------------------------- #

def test_missing_weights_error_names_file_url_and_place(offline_hub):
    from pytorch_fid.inception import FID_WEIGHTS_URL

    with pytest.raises(fe.InceptionWeightsMissing) as caught:
        fe.load_inception()
    message = str(caught.value)
    expected_path = offline_hub / "checkpoints" / fe.FID_WEIGHTS_FILENAME
    assert fe.FID_WEIGHTS_FILENAME in message
    assert FID_WEIGHTS_URL in message
    assert str(expected_path) in message
    assert "--inception_weights" in message
    assert isinstance(caught.value, RuntimeError)

    with pytest.raises(fe.InceptionWeightsMissing, match="no file at"):
        fe.load_inception(weights=str(offline_hub / "nowhere.pth"))


def test_inception_loads_local_file_and_hub_cache_without_network(offline_hub, tmp_path):
    torch.manual_seed(1)
    reference = fe.fid_inception_architecture().state_dict()
    weights = tmp_path / "weights.pth"
    torch.save(reference, weights)

    model = fe.load_inception(weights=str(weights))
    assert torch.equal(model.blocks[0][0].conv.weight, reference["Conv2d_1a_3x3.conv.weight"])
    assert torch.equal(model.blocks[3][1].branch_pool.conv.weight, reference["Mixed_7b.branch_pool.conv.weight"])
    assert not model.training

    cached = fe.hub_weights_path()
    cached.parent.mkdir(parents=True)
    weights.rename(cached)
    from_hub = fe.load_inception()  # the download is patched to fail: this must come from the cache
    assert from_hub.fingerprint == model.fingerprint
    with torch.no_grad():
        features = from_hub(torch.rand(2, 3, 80, 80))[0]
    assert features.shape == (2, fe.FEATURE_DIM, 1, 1)


# --------------------------------------------------------------------------- #
# The FID/KID pipeline
# --------------------------------------------------------------------------- #

def test_generated_images_are_deterministic(tiny_generator, metadata):
    first = torch.cat(list(fe.generated_batches(tiny_generator, metadata, 3, batch_size=2, seed=5)))
    second = torch.cat(list(fe.generated_batches(tiny_generator, metadata, 3, batch_size=3, seed=5)))
    assert first.shape == (3, 3, 16, 16)
    assert first.min() >= 0 and first.max() <= 1
    assert torch.allclose(first, second, atol=1 / 255 + 1e-6)


def test_fid_pipeline_end_to_end_caches_reals(tiny_generator, metadata, small_inception, tmp_path, monkeypatch):
    results = fe.evaluate(tiny_generator, metadata, metrics=("fid", "kid"), num_real=20, num_fake=12,
                          real_dir=str(tmp_path), inception=small_inception, batch_size=8, device="cpu")
    assert math.isfinite(results["fid"]) and results["fid"] > 0
    assert math.isfinite(results["kid"]) and math.isfinite(results["kid_std"])
    assert results["num_real"] == 20 and results["num_fake"] == 12
    assert results["img_size"] == 16 and results["output_size"] == 16 and results["psi"] == 1.0

    folder = fe.real_images_dir(metadata, 16, 20, str(tmp_path))
    assert Path(results["real_dir"]) == folder
    pngs = sorted(folder.glob("*.png"))
    assert len(pngs) == 20
    stats = list(folder.glob("inception_*.npz"))
    assert len(stats) == 1
    stamps = {p: p.stat().st_mtime_ns for p in pngs + stats}

    def no_rebuild(*args, **kwargs):
        raise AssertionError("the real images should come from the cache")

    monkeypatch.setattr(datasets, "build_dataset", no_rebuild)
    again = fe.evaluate(tiny_generator, metadata, metrics="kid", num_real=20, num_fake=12,
                        real_dir=str(tmp_path), inception=small_inception, batch_size=8, device="cpu")
    assert again["kid"] == pytest.approx(results["kid"])
    assert {p: p.stat().st_mtime_ns for p in pngs + stats} == stamps


def test_parse_metrics():
    assert fe.parse_metrics("fid, kid") == ("fid", "kid")
    assert fe.parse_metrics(("mvc",)) == ("mvc",)
    with pytest.raises(ValueError, match="unknown metrics"):
        fe.parse_metrics("fid,is")


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

    consistent = fe.warp_consistency(image_a, image_b, depth_a, cam_a, cam_b, dataset.fov, mask=mask_a)
    assert consistent["l1"] < 0.02 and consistent["psnr"] > 25
    assert 0.2 < consistent["valid_fraction"] <= 1

    # view b of other heads: not the same object
    _, other_b, _, _, _, _ = _synthetic_views(dataset, [3, 4, 5], math.pi / 2 - step / 2, math.pi / 2 + step / 2)
    other = fe.warp_consistency(image_a, other_b, depth_a, cam_a, cam_b, dataset.fov, mask=mask_a)
    assert other["l1"] > 4 * consistent["l1"] and other["l1"] > 0.05

    # the right images but a wrong pose for view b
    wrong_pose = fe.warp_consistency(image_a, image_b, depth_a, cam_a, cam_a, dataset.fov, mask=mask_a)
    assert wrong_pose["l1"] > 2.5 * consistent["l1"]

    # a view against itself is exact
    itself = fe.warp_consistency(image_a, image_a, depth_a, cam_a, cam_a, dataset.fov)
    assert itself["l1"] < 1e-4


def test_warp_consistency_upsamples_depth_to_the_image(metadata):
    dataset = datasets.Synthetic(32, metadata=metadata, length=4)
    step = 0.1
    image_a, image_b, _, cam_a, cam_b, _ = _synthetic_views(dataset, [0, 1], math.pi / 2 - step / 2,
                                                            math.pi / 2 + step / 2)
    coarse_depth = torch.stack([dataset.render(i, yaw=math.pi / 2 - step / 2, pitch=math.pi / 2,
                                               img_size=16)["depth"] for i in (0, 1)])
    result = fe.warp_consistency(image_a, image_b, coarse_depth, cam_a, cam_b, dataset.fov)
    assert math.isfinite(result["l1"]) and result["l1"] < 0.1 and result["valid_fraction"] > 0.5


def test_multiview_consistency_of_a_generator(tiny_generator, metadata):
    results = fe.evaluate(tiny_generator, metadata, metrics=("mvc",), num_mvc=4, batch_size=2, device="cpu")
    for key in ("mvc_nerf_l1", "mvc_nerf_psnr", "mvc_image_l1", "mvc_image_psnr"):
        assert math.isfinite(results[key]), key
    assert 0 <= results["mvc_nerf_l1"] <= 1 and 0 <= results["mvc_image_l1"] <= 1
    assert 0 < results["mvc_nerf_valid"] <= 1 and 0 < results["mvc_image_valid"] <= 1
    assert results["num_mvc"] == 4 and results["mvc_yaw_step"] == fe.MVC_YAW_STEP
    assert "fid" not in results


def _dense(generator):
    """A copy of `generator` whose field is opaque everywhere (density bias +100)."""
    import copy

    dense = copy.deepcopy(generator)
    with torch.no_grad():
        dense.siren.final_layer.bias.fill_(100.0)
    return dense


def test_mvc_reports_the_opaque_fraction_and_warns_for_an_empty_field(plain_generator, metadata):
    empty = fe.multiview_consistency(plain_generator, metadata, num_samples=2, batch_size=2)
    assert empty["mvc_nerf_opaque"] < fe.MVC_MIN_OPAQUE  # an untrained field is empty...
    assert "say nothing" in empty["mvc_warning"]          # ...and the output says what that means
    dense = fe.multiview_consistency(_dense(plain_generator), metadata, num_samples=2, batch_size=2)
    assert dense["mvc_nerf_opaque"] == 1.0 and "mvc_warning" not in dense


# --------------------------------------------------------------------------- #
# Ground truth for Synthetic
# --------------------------------------------------------------------------- #

def test_head_map_comparison_on_known_cases(metadata):
    yaw = torch.full((6,), math.pi / 2)
    pitch = torch.full((6,), math.pi / 2)
    real = fe.real_head_maps(metadata, yaw, pitch)
    assert real.mask.shape == (6, 16, 16) and real.image.shape == (6, 3, 16, 16)
    assert 0.1 < real.mask.float().mean() < 0.6  # a head, not an empty or a full frame
    same = fe.compare_head_maps(real, real)
    assert same["iou"] == 1.0 and same["depth_l1"] == 0.0 and same["depth_l1_fg"] == 0.0
    # A candidate shifted by one pixel: IoU drops, and the depth error where both agree grows.
    shifted = fe.HeadMaps(real.mask.roll(1, dims=-1), real.depth.roll(1, dims=-1), real.image)
    moved = fe.compare_head_maps(shifted, real)
    assert 0.5 < moved["iou"] < 1.0 and moved["depth_l1"] > 0 and moved["depth_l1_fg"] > moved["depth_l1"]
    # An empty candidate (background at ray_end everywhere): IoU 0, no common foreground.
    empty = fe.HeadMaps(torch.zeros_like(real.mask), torch.full_like(real.depth, metadata["ray_end"]),
                        real.image)
    nothing = fe.compare_head_maps(empty, real)
    assert nothing["iou"] == 0.0 and math.isnan(nothing["depth_l1"]) and nothing["depth_l1_fg"] > 0.1
    assert fe._gap_closed(0.5, 0.0, 1.0) == 0.5 and fe._gap_closed(0.02, 0.1, 0.0) == pytest.approx(0.8)


def test_synthetic_metric_leaves_the_callers_rng_alone(tiny_generator, metadata):
    # Training evaluates mid-run: building the untrained baselines (floor, prior) must not move
    # the global RNG the training loop draws its latents and poses from.
    fe._SYNTHETIC_CALIBRATION.clear()  # force the baselines to be built
    torch.manual_seed(123)
    before = torch.get_rng_state()
    scores = fe.synthetic_scores(tiny_generator, metadata, num_samples=4)
    assert "synthetic_iou_prior" in scores and torch.equal(before, torch.get_rng_state())


def test_synthetic_metric_ceiling_beats_floor_and_an_untrained_generator_is_the_floor(
        plain_generator, tiny_generator, metadata):
    results = fe.evaluate(plain_generator, metadata, metrics=("synthetic",), num_synthetic=48, device="cpu")
    # Real heads against other real heads: same silhouettes to within identity, depth within ~1 cm.
    assert results["synthetic_iou_ceiling"] > 0.75 and results["synthetic_iou_floor"] < 0.1
    assert results["synthetic_depth_l1_fg_ceiling"] < 0.3 * results["synthetic_depth_l1_fg_floor"]
    assert results["synthetic_kid_ceiling"] < 0.2 * results["synthetic_kid_floor"]
    # The floor is an untrained generator with the seed-0 init and no prior: plain_generator's weights.
    assert results["synthetic_iou_closed"] == 0.0 and results["synthetic_depth_closed"] == 0.0
    # Synthetic's sphere prior alone, untrained, already draws a head-sized silhouette at the right
    # depth: reported as its own baseline (_prior), which the untrained generator with it scores.
    with_prior = fe.synthetic_scores(tiny_generator, metadata, num_samples=48)
    for name in ("iou", "depth_l1_fg", "kid"):
        assert with_prior[f"synthetic_{name}"] == with_prior[f"synthetic_{name}_prior"]
        assert with_prior[f"synthetic_{name}_floor"] == results[f"synthetic_{name}_floor"]
    assert with_prior["synthetic_iou_prior"] > 0.6 and with_prior["synthetic_iou_closed"] > 0.6
    assert with_prior["synthetic_depth_l1_fg_prior"] < 0.5 * results["synthetic_depth_l1_fg_floor"]
    no_prior = fe.synthetic_scores(plain_generator, dict(metadata, sphere_prior_density=0.0), num_samples=4)
    assert "synthetic_iou_prior" not in no_prior  # a curriculum without a prior has no prior baseline
    # A field that is opaque everywhere covers every head (IoU = head area) but is no closer in depth.
    dense = fe.synthetic_scores(_dense(plain_generator), metadata, num_samples=48)
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
        fe.evaluate(tiny_generator, {**metadata, "dataset": "FFHQ"}, metrics=("synthetic",), num_synthetic=4)


# --------------------------------------------------------------------------- #
# Command line
# --------------------------------------------------------------------------- #

@pytest.fixture
def run_dir(tmp_path, tiny_generator):
    folder = tmp_path / "run"
    state = tiny_generator.state_dict()
    save_checkpoint(folder / "checkpoint.pth", {"step": 7, "curriculum": curriculums.get_curriculum("Synthetic"),
                                                "curriculum_name": "Synthetic", "generator": state,
                                                "generator_ema": state})
    return folder


def test_cli_prints_json_and_appends_to_run_metrics(run_dir, capsys):
    record = fe.main(["--path", str(run_dir / "checkpoint.pth"), "--metrics", "mvc", "--num_mvc", "2",
                      "--device", "cpu", "--num_workers", "0"])
    printed = capsys.readouterr().out.strip().splitlines()[-1]
    parsed = json.loads(printed)
    assert parsed == json.loads(json.dumps(record))
    assert parsed["step"] == 7 and parsed["psi"] == 1.0 and parsed["ema"] is True
    assert parsed["checkpoint"].endswith("checkpoint.pth")
    assert math.isfinite(parsed["mvc_nerf_l1"])
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == [parsed]


def test_cli_missing_checkpoint_is_a_usage_error(tmp_path, capsys):
    """Exit code 2, like render_multiview_image.py and extract_shapes.py for the same mistake."""
    with pytest.raises(SystemExit) as caught:
        fe.main(["--path", str(tmp_path / "missing.pth"), "--device", "cpu"])
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "checkpoint not found" in err


def test_cli_png_is_not_a_checkpoint(tmp_path, capsys):
    from PIL import Image

    Image.new("RGB", (4, 4)).save(tmp_path / "photo.png")
    with pytest.raises(SystemExit) as caught:
        fe.main(["--path", str(tmp_path / "photo.png"), "--metrics", "mvc", "--device", "cpu"])
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert "not a checkpoint" in err and "PNG" in err and "weights_only" not in err


@pytest.mark.parametrize("flags", [["--num_fake", "0"], ["--num_fake", "1"], ["--num_real", "0"],
                                   ["--num_fake", "-5"], ["--num_real", "-1", "--metrics", "mvc"],
                                   ["--psi", "nan"], ["--mvc_yaw_step", "inf"], ["--num_mvc", "0"]])
def test_cli_rejects_bad_counts_and_non_finite_floats(run_dir, flags, capsys):
    """Before the fix, 0 or 1 images hung forever inside the covariance's matrix square root."""
    with pytest.raises(SystemExit) as caught:
        fe.main(["--path", str(run_dir), "--device", "cpu", *flags])
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert flags[0] in err and "Traceback" not in err
    assert not (run_dir / "metrics.jsonl").exists()


def test_frechet_distance_refuses_non_finite_statistics():
    """The covariance of a single sample is NaN; scipy's sqrtm never returns on it."""
    features = np.ones((1, 4))
    mu, sigma = fe.feature_statistics(features)  # sigma NaN (and a numpy warning)
    with pytest.raises(ValueError, match="not finite"):
        fe.frechet_distance(mu, sigma, np.zeros(4), np.eye(4))


def test_cli_missing_weights_exits_with_code_2(run_dir, offline_hub, capsys):
    with pytest.raises(SystemExit) as caught:
        fe.main(["--path", str(run_dir), "--metrics", "fid", "--device", "cpu", "--num_fake", "100"])
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert fe.FID_WEIGHTS_FILENAME in err
    assert "--num_fake 100 is below 2048" in err  # small counts are allowed, with a warning
    assert not (run_dir / "metrics.jsonl").exists()


def test_cli_scores_a_checkpoint_written_at_the_end_of_training(tmp_path, tiny_generator, capsys):
    """Training ends at the empty final stage; the model was trained at the stage before it."""
    curriculum = curriculums.get_curriculum("Synthetic")
    final = curriculums.stage_boundaries(curriculum)[-1]
    state = tiny_generator.state_dict()
    save_checkpoint(tmp_path / "end" / "checkpoint.pth",
                    {"step": final, "curriculum": curriculum, "curriculum_name": "Synthetic",
                     "generator": state, "generator_ema": state})
    record = fe.main(["--path", str(tmp_path / "end"), "--metrics", "mvc", "--num_mvc", "2", "--device", "cpu",
                      "--num_workers", "0", "--no_append"])
    last_stage = curriculums.extract_metadata(curriculum, final - 1)
    assert record["step"] == final and record["output_size"] == last_stage["output_size"]
