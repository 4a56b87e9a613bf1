"""Tests for inversion (invert.py, inversion/, the --codes option of the rendering scripts).

All on the CPU at tiny sizes. The fitting tests use generators whose images are smooth (FiLM
frequencies near 3 instead of 30): an untrained SIREN renders noise, in which a pose 0.05 rad off
is as bad as any. The camera tests use one whose latents change nothing (one object): whenever
codes can change the picture, they and the decoder's style can repaint a smooth 16 px picture at
a pose some degrees off about as well (docs/METHOD.md §11.1), so only there is the camera all
there is to find.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import extract_shapes
from test_extract_shapes import read_ply
import invert
import render_multiview_image
from curriculums import extract_metadata, get_curriculum
from generators.cameras import PoseDistribution
from generators.generators import RenderOptions, build_generator
from inversion.codes_file import load_codes, read_codes_file
from inversion.fitting import (InversionSettings, LatentParameters, code_statistics, invert as fit,
                               render_at, tune_generator)
from inversion.photo import align_face, face_crop_box, prepare_target, read_photo
from utils.checkpoint import save_checkpoint
from utils.cli import CLIError

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "published_mvcgan"  # written by the published code
MEAN = math.pi / 2
# 8 px NeRF, 6 samples, decoded to 16 px: a fit step takes ~15 ms on one core.
SIZES = dict(img_size=8, output_size=16, num_steps=6)
CLI_SIZES = ["--image_size", "8", "--output_size", "16", "--num_steps", "6", "--threads", "1"]
FAST = ["--search_steps", "4", "--steps", "6", "--num_frames", "3", "--voxel_resolution", "16"]


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(-10 * torch.log10((a - b).square().mean()))


@pytest.fixture(scope="module")
def metadata():
    return extract_metadata(get_curriculum("Synthetic"), 900)


@pytest.fixture(scope="module")
def smooth_generator(metadata):
    """The Synthetic architecture, seed 0, with FiLM frequencies 15 * raw + 30 near 3 and the
    mapping's last layer scaled by 0.1: smooth images that latents change a little."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        generator = build_generator(metadata).eval()
    layer = generator.siren.mapping_network.output_layer
    with torch.no_grad():
        layer.weight.mul_(0.1)
        layer.bias[:layer.out_features // 2] = (3 - 30) / 15
    return generator


@pytest.fixture(scope="module")
def one_object_generator(smooth_generator):
    """`smooth_generator` with the mapping's last layer and the decoder's style layers made constant
    (their values at the mean code): every latent renders the same object."""
    import copy

    from generators.decoder import AdaIN

    generator = copy.deepcopy(smooth_generator)
    mean_style = generator.average_codes().style
    with torch.no_grad():
        generator.siren.mapping_network.output_layer.weight.zero_()
        for module in generator.decoder.modules():
            if isinstance(module, AdaIN):
                module.style.bias.copy_(module.style(mean_style)[0])
                module.style.weight.zero_()
    return generator


@pytest.fixture(scope="module")
def options(metadata):
    return RenderOptions.from_metadata(metadata, evaluation=True, **SIZES)


def target_of(generator, options, seed, yaw_offset, pitch_offset):
    """The generator's own render of the codes of a seeded z at a known pose: (1, 3, 16, 16) in [0, 1]."""
    z = torch.randn(1, generator.z_dim, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return render_at(generator, generator.mapping(z), torch.tensor([MEAN + yaw_offset]),
                         torch.tensor([MEAN + pitch_offset]), options, 1.0)


# ------------------------------------------------------------- latent spaces
def test_the_fit_starts_from_the_mean_codes_in_either_space(smooth_generator):
    stats = code_statistics(smooth_generator)
    mean = smooth_generator.average_codes()
    for space in ("w", "codes"):
        codes = LatentParameters(smooth_generator, space, stats, count=2).codes()
        for fitted, expected in zip(codes, mean):
            assert fitted.shape == (2, expected.shape[-1])
            # the mapping's last layer is affine: output_layer(mean w) is the mean of the codes
            torch.testing.assert_close(fitted, expected.expand_as(fitted), rtol=0, atol=1e-5)
    assert (stats.std.style > 0).all() and (stats.std.frequencies > 0).all()


def test_w_space_codes_are_those_of_the_mapping(smooth_generator):
    """Fitting w can reach exactly the codes of any z: frequencies and phases follow from w."""
    stats = code_statistics(smooth_generator)
    latent = LatentParameters(smooth_generator, "w", stats, count=1)
    z = torch.randn(1, smooth_generator.z_dim, generator=torch.Generator().manual_seed(3))
    target = smooth_generator.mapping(z)
    with torch.no_grad():
        latent.offsets[0].copy_((target.style - stats.mean.style) / stats.std.style)
    for fitted, expected in zip(latent.codes(), target):
        torch.testing.assert_close(fitted, expected, rtol=0, atol=1e-5)


# ------------------------------------------------------------------- fitting
# Fewer steps than invert.py's defaults (10 per search round, 100 after): seconds per test.
QUICK = dict(search_steps=6, steps=30)


@pytest.mark.slow
@pytest.mark.parametrize("yaw, pitch", [(0.25, -0.1), (-0.4, 0.1), (0.4, 0.0)])
def test_the_camera_search_finds_the_pose(one_object_generator, options, yaw, pitch):
    """Off the grid of starts too (0.25, -0.1 and -0.4, 0.1: the starts are 0.2 apart in yaw and
    0.15 in pitch), and a turned head (yaw 0.4) is not fitted as frontal. Measured: within 0.01 deg
    at 10 + 100 steps; 1 deg leaves room for fewer steps and other CPUs' rounding."""
    target = target_of(one_object_generator, options, 5, yaw, pitch)
    result = fit(one_object_generator, target, options, InversionSettings(latent_space="w", **QUICK))
    assert abs(math.degrees(result.yaw - MEAN - yaw)) < 1 and abs(math.degrees(result.pitch - MEAN - pitch)) < 1
    frontal = fit(one_object_generator, target, options, InversionSettings(latent_space="w", fit_camera=False,
                                                                           **QUICK))
    assert (frontal.yaw, frontal.pitch) == pytest.approx((MEAN, MEAN)) and frontal.loss > 10 * result.loss + 1e-3


def test_codes_reconstruct_a_generated_picture(smooth_generator, options):
    """The codes of a random z at a known camera: from the mean codes (about 18 dB against the
    target) to above 28 dB, an RMS error of 4 % of the range (measured: 30-34 dB)."""
    target = target_of(smooth_generator, options, 6, 0.2, -0.1)
    with torch.no_grad():
        start = render_at(smooth_generator, smooth_generator.average_codes(), torch.tensor([MEAN + 0.2]),
                          torch.tensor([MEAN - 0.1]), options, 1.0)
    assert psnr(start, target) < 22
    # fit_camera=False keeps the pose distribution's mean: put it at the true camera
    true_camera = options.replace(pose=PoseDistribution(MEAN + 0.2, MEAN - 0.1))
    result = fit(smooth_generator, target, true_camera, InversionSettings(fit_camera=False, steps=100))
    with torch.no_grad():
        image = render_at(smooth_generator, result.codes, torch.tensor([result.yaw]), torch.tensor([result.pitch]),
                          options, 1.0)
    assert psnr(image, target) > 28
    for generator_parameter in smooth_generator.parameters():  # the fit froze the generator and restored it
        assert generator_parameter.requires_grad and generator_parameter.grad is None


def test_tuning_fits_the_picture_and_keeps_other_latents(metadata, options):
    """Pivotal tuning lowers the loss on the picture; with the locality term, other latents'
    renders (other z, another pose) move less than without it. On this untrained generator with
    latents at full strength (measured, 15 steps at lr 1e-4): loss 0.23 -> 0.04 without the term,
    0.11 with weight 10; other latents move 0.082 and 0.033. (At invert.py's 3e-4 the first step
    of this untrained field overshoots: 0.23 -> 0.40.)"""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        generator = build_generator(metadata).eval()
    layer = generator.siren.mapping_network.output_layer
    with torch.no_grad():
        layer.bias[:layer.out_features // 2] = (3 - 30) / 15
    target = target_of(generator, options, 7, 0.0, 0.0) * 0.5 + 0.25  # a picture the codes cannot reach
    codes = generator.average_codes()
    yaw, pitch = torch.tensor([MEAN]), torch.tensor([MEAN])
    z = torch.randn(4, generator.z_dim, generator=torch.Generator().manual_seed(9))
    cameras = (torch.full((4,), MEAN + 0.2), torch.full((4,), MEAN))

    def others(tuned):
        with torch.no_grad():
            return render_at(tuned, tuned.mapping(z), *cameras, options, 1.0)

    before = others(generator)
    changes = {}
    for weight in (0.0, 10.0):
        settings = InversionSettings(tune_steps=15, tune_lr=1e-4, locality_weight=weight)
        tuned, history = tune_generator(generator, codes, yaw, pitch, target, options, settings)
        assert history[-1] < 0.6 * history[0]
        changes[weight] = float((others(tuned) - before).abs().mean())
    assert changes[10.0] < 0.6 * changes[0.0]


# ------------------------------------------------------------------- photos
def write(image: Image.Image, path: Path) -> Path:
    image.save(path)
    return path


def test_read_photo_converts_what_it_can(tmp_path):
    rgb = np.zeros((20, 24, 3), np.uint8)
    rgb[..., 0] = 200
    image, notes = read_photo(write(Image.fromarray(rgb), tmp_path / "rgb.png"))
    assert image.mode == "RGB" and image.size == (24, 20) and notes == []

    rgba = np.zeros((20, 20, 4), np.uint8)
    rgba[..., 2] = 255          # blue, fully transparent on the left half, opaque on the right
    rgba[:, 10:, 3] = 255
    image, notes = read_photo(write(Image.fromarray(rgba, "RGBA"), tmp_path / "rgba.png"))
    pixels = np.asarray(image)
    assert (pixels[:, :10] == 255).all() and (pixels[:, 10:] == [0, 0, 255]).all()  # flattened on white
    assert "transparency" in notes[0]

    gray16 = Image.fromarray(np.full((20, 20), 32896, np.uint16))  # half of 65535: mid gray, not white
    image, notes = read_photo(write(gray16, tmp_path / "gray16.png"))
    assert np.abs(np.asarray(image).astype(int) - 128).max() <= 1 and "scaled to 8 bits" in notes[0]

    image, notes = read_photo(write(Image.fromarray(np.full((20, 20), 77, np.uint8)), tmp_path / "gray.png"))
    assert image.mode == "RGB" and (np.asarray(image) == 77).all() and "grayscale" in notes[0]


@pytest.mark.parametrize("content, message", [
    (b"not an image at all", "not a picture"),
    (None, "at least 16x16"),
])
def test_read_photo_refuses_what_it_cannot(tmp_path, content, message):
    path = tmp_path / "bad.png"
    if content is None:
        Image.fromarray(np.zeros((8, 40, 3), np.uint8)).save(path)
    else:
        path.write_bytes(content)
    with pytest.raises(CLIError, match=message):
        read_photo(path)
    with pytest.raises(CLIError, match="no such file"):
        read_photo(tmp_path / "missing.png")


def test_prepare_target_uses_the_training_crop():
    # A 40 x 20 picture whose middle square is red: Synthetic takes the centre square.
    array = np.zeros((20, 40, 3), np.uint8)
    array[:, 10:30, 0] = 255
    target = prepare_target(Image.fromarray(array), "Synthetic", 16)
    assert target.shape == (1, 3, 16, 16) and target.min() >= 0 and target.max() <= 1
    assert target[0, 0].min() > 0.99 and target[0, 1:].max() < 0.01
    # FFHQ: short side to 576, centre 512 crop: a border of 1/18 of the side is cut off
    framed = np.zeros((576, 576, 3), np.uint8)
    framed[32:-32, 32:-32] = 255
    target = prepare_target(Image.fromarray(framed), "FFHQ", 64)
    assert target.min() > 0.99  # all of the black frame is outside the crop


def test_align_crops_the_face_of_a_photo():
    from skimage.data import astronaut

    photo = Image.fromarray(astronaut())  # Eileen Collins: face at rows 64-167, columns 172-275
    crop, notes = align_face(photo, "FFHQ")
    assert notes == [] and crop.size[0] == crop.size[1]
    # the face box is 103 px: the FFHQ-like square is 1.7 times that, around the eyes
    assert 150 <= crop.size[0] <= 200
    left, top, right, bottom = face_crop_box((172, 64, 103, 103))
    assert left < 172 and right > 275 and top < 64 and 167 - 10 < bottom


def test_align_refuses_cats_synthetic_and_faceless_pictures():
    from skimage.data import chelsea

    cat = Image.fromarray(chelsea())
    with pytest.raises(CLIError, match="no cat-face detector"):
        align_face(cat, "Cat")
    with pytest.raises(CLIError, match="face checkpoints"):
        align_face(cat, "Synthetic")
    with pytest.raises(CLIError, match="no frontal face found"):
        align_face(Image.fromarray(np.full((64, 64, 3), 128, np.uint8)), "FFHQ")


# ------------------------------------------------------------------- the CLI
@pytest.fixture(scope="module")
def head_png(tmp_path_factory, metadata):
    """A held-out Synthetic head (its own seed) at a turned pose, as a 64 px PNG."""
    from datasets import Synthetic

    view = Synthetic(64, metadata=metadata, length=1, seed=999).render(0, MEAN + 0.3, MEAN)
    path = tmp_path_factory.mktemp("photo") / "head.png"
    Image.fromarray(((view["image"] + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()).save(path)
    return path


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory, tiny_generator):
    """The tiny generator saved in Synthetic's 16 -> 32 px stage after its fade-in (step 900): one
    trained decoder block, so an 8 px NeRF decodes to 16 px."""
    path = tmp_path_factory.mktemp("stage1") / "checkpoint.pth"
    state = tiny_generator.state_dict()
    save_checkpoint(path, {"generator": state, "generator_ema": state, "curriculum": get_curriculum("Synthetic"),
                           "curriculum_name": "Synthetic", "step": 900})
    return path


@pytest.fixture(scope="module")
def inverted(tmp_path_factory, tiny_checkpoint, head_png):
    """invert.py run on the tiny checkpoint with 2 tuning steps: (exit code, output folder)."""
    out = tmp_path_factory.mktemp("inverted")
    code = invert.main(["--path", str(tiny_checkpoint), "--image", str(head_png), "--output_dir", str(out),
                        "--tune_generator", "2", *CLI_SIZES, *FAST])
    return code, out


def test_invert_writes_every_output(inverted, tiny_checkpoint):
    code, out = inverted
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == ["codes.pth", "comparison.png", "depth.png", "multiview.png",
                                                   "shape.ply", "turntable.gif"]
    scale = 128 // 16  # --display_size 128 enlarges the 16 px images 8 times
    with Image.open(out / "comparison.png") as im:
        assert im.size == (2 * 16 * scale, 16 * scale)
    with Image.open(out / "multiview.png") as im:
        assert im.size == (7 * 16 * scale, 16 * scale)
    with Image.open(out / "turntable.gif") as im:
        assert im.n_frames == 3 and im.size == (16 * scale, 16 * scale)
    vertices, faces = read_ply(out / "shape.ply")
    assert len(vertices) > 0 and len(faces) > 0


def test_codes_file_loads_weights_only_and_renders_its_reconstruction(inverted, tiny_checkpoint):
    _, out = inverted
    state = torch.load(out / "codes.pth", weights_only=True)
    assert state["kind"] == "mvcgan-inversion" and state["latent_space"] == "codes"
    assert state["frequencies"].shape == (1, 9 * 64) and state["style"].shape == (1, 256) and "generator" in state
    # The file's codes, camera and tuned weights render the reconstruction of comparison.png.
    from generators.pretrained import load_model

    model = load_model(tiny_checkpoint, device="cpu")
    loaded = load_codes(out / "codes.pth", model.generator)
    assert loaded.generator is not model.generator  # the tuned copy
    options = RenderOptions.from_metadata(model.metadata, evaluation=True, **SIZES)
    with torch.no_grad():
        image = render_at(loaded.generator, loaded.codes, torch.tensor([loaded.yaw]), torch.tensor([loaded.pitch]),
                          options, 1.0)
    with Image.open(out / "comparison.png") as im:
        right = np.asarray(im)[::8, 16 * 8::8]  # the reconstruction, back at 16 px
    np.testing.assert_allclose(right / 255, image[0].clamp(0, 1).permute(1, 2, 0).numpy(), atol=1 / 255 + 1e-6)


def test_rendering_scripts_accept_the_codes(inverted, tiny_checkpoint, tmp_path):
    _, out = inverted
    codes = str(out / "codes.pth")
    assert render_multiview_image.main(["--path", str(tiny_checkpoint), "--codes", codes, "--depth",
                                        "--output_dir", str(tmp_path), "--image_size", "8", "--num_steps", "6",
                                        "--output_size", "16"]) == 0
    assert extract_shapes.main(["--path", str(tiny_checkpoint), "--codes", codes, "--output_dir", str(tmp_path),
                                "--voxel_resolution", "16"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["depth_codes.png", "image_codes.png", "shape_codes.ply"]
    with Image.open(tmp_path / "image_codes.png") as im:
        assert im.size == (7 * 16, 16)


def test_codes_of_other_weights_are_refused(inverted, tmp_path, capsys, metadata):
    _, out = inverted
    other = build_generator(metadata)  # freshly initialised: other weights, same architecture
    path = tmp_path / "other.pth"
    state = other.state_dict()
    save_checkpoint(path, {"generator": state, "generator_ema": state, "curriculum": get_curriculum("Synthetic"),
                           "curriculum_name": "Synthetic", "step": 0})
    code = render_multiview_image.main(["--path", str(path), "--codes", str(out / "codes.pth"),
                                        "--output_dir", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: --codes") and "other weights" in err[0]
    # and a checkpoint passed as --codes, or a file that is not torch's
    with pytest.raises(CLIError, match="it is a checkpoint"):
        read_codes_file(path)
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(CLIError, match="not a codes file"):
        read_codes_file(tmp_path / "junk.pth")


@pytest.mark.parametrize("args, message", [
    (["--image", "{missing}"], "no such file"),
    (["--image", "{text}"], "not a picture"),
    (["--image", "{head}", "--steps", "0"], "--steps must be at least 1"),
    (["--image", "{head}", "--ssim_weight", "1.5"], "--ssim_weight must be in [0, 1]"),
    (["--image", "{head}", "--align"], "--align is for face checkpoints"),
])
def test_invert_input_errors_are_one_line(tmp_path, tiny_checkpoint, head_png, capsys, args, message):
    text = tmp_path / "notes.txt"
    text.write_text("not a picture")
    args = [a.format(missing=tmp_path / "missing.png", text=text, head=head_png) for a in args]
    code = invert.main(["--path", str(tiny_checkpoint), "--output_dir", str(tmp_path / "out"), *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and message in err[0]


def test_every_invert_flag_has_help():
    for action in invert.build_parser()._actions:
        assert action.help, action.option_strings


@pytest.mark.slow
def test_a_photo_inverts_end_to_end_with_the_imported_published_checkpoint(tmp_path, capsys):
    """The published checkpoint fixture (FFHQ widths) imported, then a real photo (scikit-image's
    astronaut) aligned and inverted: every file written, the codes loadable for that checkpoint."""
    from skimage.data import astronaut

    import import_checkpoint

    checkpoint = tmp_path / "ffhq_official.pth"
    assert import_checkpoint.main(["--path", str(FIXTURE), "--curriculum", "FFHQ", "--output", str(checkpoint)]) == 0
    photo = write(Image.fromarray(astronaut()), tmp_path / "astronaut.png")
    out = tmp_path / "inv"
    code = invert.main(["--path", str(checkpoint), "--image", str(photo), "--align", "--output_dir", str(out),
                        "--image_size", "16", "--output_size", "16", "--num_steps", "6", "--threads", "1",
                        "--yaw_starts=-0.2,0.2", "--pitch_starts=0", *FAST, "--no_mesh"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert sorted(p.name for p in out.iterdir()) == ["codes.pth", "comparison.png", "depth.png", "multiview.png",
                                                   "turntable.gif"]
    state = torch.load(out / "codes.pth", weights_only=True)
    assert state["frequencies"].shape == (1, 9 * 256) and state["checkpoint"] == str(checkpoint)
    assert render_multiview_image.main(["--path", str(checkpoint), "--codes", str(out / "codes.pth"),
                                        "--output_dir", str(tmp_path / "r"), "--image_size", "16",
                                        "--num_steps", "6"]) == 0


def test_a_second_inversion_into_the_same_folder_is_refused_unless_start_over(inverted, tiny_checkpoint, head_png,
                                                                               tmp_path, capsys):
    """Issue 32: invert.py run again into the same --output_dir replaced codes.pth and the pictures silently."""
    import shutil

    folder = tmp_path / "inv"
    shutil.copytree(inverted[1], folder)
    before = {path.name: path.read_bytes() for path in folder.iterdir()}
    args = ["--path", str(tiny_checkpoint), "--image", str(head_png), "--output_dir", str(folder), *CLI_SIZES, *FAST,
            "--no_mesh"]
    assert invert.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: --output_dir {folder} holds an earlier inversion (codes.pth")
    assert "--start_over" in err[0]
    assert {path.name: path.read_bytes() for path in folder.iterdir()} == before
    assert invert.main([*args, "--start_over"]) == 0
    (previous,) = folder.glob("previous_*")
    assert {path.name: path.read_bytes() for path in previous.iterdir()} == before
    assert (folder / "codes.pth").read_bytes() != before["codes.pth"] and not (folder / "shape.ply").exists()


def test_output_dir_and_image_errors_name_the_flag(tmp_path, tiny_checkpoint, head_png, capsys):
    """Issue 32: a file or /proc as --output_dir said `File exists`, a folder as --image "no such file"."""
    (tmp_path / "file").write_text("x")
    cases = [(["--image", str(head_png), "--output_dir", str(tmp_path / "file")], f"--output_dir {tmp_path / 'file'}"),
             (["--image", str(head_png), "--output_dir", "/proc/inversion"], "--output_dir /proc/inversion: cannot write"),
             (["--image", str(tmp_path), "--output_dir", str(tmp_path / "out")], f"--image {tmp_path} is a folder")]
    for args, message in cases:
        assert invert.main(["--path", str(tiny_checkpoint), *args, *CLI_SIZES, *FAST]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"error: {message}"), err
    assert not (tmp_path / "out" / "codes.pth").exists()


def render_codes(checkpoint, codes, output_dir) -> int:
    return render_multiview_image.main(["--path", str(checkpoint), "--codes", str(codes), "--output_dir",
                                        str(output_dir), "--image_size", "8", "--num_steps", "6", "--output_size", "16"])


@pytest.mark.parametrize("key", ["frequencies", "yaw", "generator"])
def test_non_finite_codes_cameras_and_weights_are_refused(inverted, tiny_checkpoint, tmp_path, capsys, key):
    """Issue 32: codes whose frequencies were NaN (checksum valid) rendered an all-black picture, exit 0."""
    state = torch.load(inverted[1] / "codes.pth", weights_only=True)
    state.pop("checksum")
    if key == "generator":
        name = next(iter(state["generator"]))
        state["generator"][name] = torch.full_like(state["generator"][name], float("inf"))
    elif key == "yaw":
        state["yaw"], name = float("nan"), "yaw"
    else:
        state["frequencies"][0, 3], name = float("nan"), "frequencies"
    codes = tmp_path / "bad.pth"
    save_checkpoint(codes, state)  # a valid checksum over the bad values
    assert render_codes(tiny_checkpoint, codes, tmp_path / "out") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0] == f"error: --codes {codes}: its {name} holds NaN or infinite values; run " \
                                       f"invert.py again to write it anew"
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_a_checkpoint_with_non_finite_weights_is_refused(tiny_checkpoint, tmp_path, capsys):
    state = torch.load(tiny_checkpoint, weights_only=True)
    state.pop("checksum")
    name = next(iter(state["generator_ema"]))
    state["generator_ema"][name] = torch.full_like(state["generator_ema"][name], float("nan"))
    path = tmp_path / "nan.pth"
    save_checkpoint(path, state)
    assert render_multiview_image.main(["--path", str(path), "--output_dir", str(tmp_path / "out"), "--seeds", "0",
                                        "--image_size", "8", "--num_steps", "6", "--output_size", "16"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {path}: its generator_ema weights hold NaN") and name in err[0]
    assert not (tmp_path / "out").exists()


def test_a_codes_file_with_a_stale_checksum_says_run_invert_again(inverted, tiny_checkpoint, tmp_path, capsys):
    """Issue 32: a damaged codes file got a checkpoint's advice (use a numbered checkpoint_*.pth)."""
    state = torch.load(inverted[1] / "codes.pth", weights_only=True)
    state["yaw"] += 0.1  # the stored checksum no longer matches
    codes = tmp_path / "stale.pth"
    torch.save(state, codes)
    assert render_codes(tiny_checkpoint, codes, tmp_path / "out") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: --codes {codes} is corrupted")
    assert err[0].endswith("run invert.py again to write it anew") and "checkpoint_" not in err[0]


def test_a_folder_as_codes_is_named():
    with pytest.raises(CLIError, match=r"^--codes .* is a folder; name a file in it$"):
        read_codes_file(Path(__file__).parent)
