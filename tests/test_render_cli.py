"""Tests for render_multiview_image.py and its helpers (utils/images.py, utils/rendering_cli.py, the Python API
generators/pretrained.py).

All on the CPU with the tiny Synthetic checkpoint from conftest.py.
"""
import numpy as np
import pytest
import torch
from PIL import Image

import render_multiview_image as rmi
from curriculums import get_curriculum, stage_boundaries
from generators.pretrained import (MULTIVIEW_YAW_OFFSETS, VIDEO_PITCH_AMPLITUDE, VIDEO_YAW_AMPLITUDE,
                                   cameras_around_mean, check_curriculum, decoder_alpha, latent_for_seed, load_model,
                                   render, render_options, trained_stage, video_offsets)
from utils.checkpoint import save_checkpoint
from utils.cli import CLIError
from utils.images import depth_legend, depth_to_uint8, make_grid, save_gif, to_uint8, turbo

SMALL = ["--image_size", "8", "--output_size", "16", "--num_steps", "4", "--device", "cpu"]
# Synthetic's second stage (16 -> 32 px, one decoder block) and its final, empty stage.
SYNTHETIC_UPSAMPLE_STEP, SYNTHETIC_END = stage_boundaries(get_curriculum("Synthetic"))[1:3]


def checkpoint_at(folder, generator, step):
    path = folder / "checkpoint.pth"
    state = generator.state_dict()
    save_checkpoint(path, {"generator": state, "generator_ema": state, "curriculum": get_curriculum("Synthetic"),
                           "curriculum_name": "Synthetic", "step": step})
    return path


@pytest.fixture(scope="module")
def trained_checkpoint(tmp_path_factory, tiny_generator):
    """The tiny generator saved in Synthetic's 16 -> 32 px stage after its fade-in: one trained decoder block."""
    fade_steps = get_curriculum("Synthetic")["fade_steps"]
    return checkpoint_at(tmp_path_factory.mktemp("stage1"), tiny_generator, SYNTHETIC_UPSAMPLE_STEP + fade_steps)


def run(tmp_path, checkpoint, *extra, sizes=SMALL):
    out = tmp_path / "render"
    code = rmi.main(["--path", str(checkpoint), "--output_dir", str(out), *sizes, *extra])
    return code, out


def frames_of(path):
    with Image.open(path) as gif:
        return gif.n_frames, gif.size


# ----------------------------------------------------------------------- CLI
def test_multiview_depth_video(tmp_path, trained_checkpoint, capsys):
    code, out = run(tmp_path, trained_checkpoint, "--seeds", "3", "--depth", "--video", "--num_frames", "5",
                    "--curriculum", "Synthetic")
    assert code == 0
    with Image.open(out / "image_3.png") as im:
        assert im.size == (7 * 16, 16) and im.mode == "RGB"
    legend = depth_legend(7 * 16, 0.88, 1.12)
    with Image.open(out / "depth_3.png") as im:
        assert im.size == (7 * 16, 16 + legend.shape[0])  # the row, then the colour bar
        np.testing.assert_array_equal(np.asarray(im)[16:], legend)
    assert frames_of(out / "video_3.gif") == (5, (16, 16))
    assert str(out) in capsys.readouterr().out


def test_geometry_turntable(tmp_path, trained_checkpoint, tiny_model):
    """geometry_{seed}.png: the 7 views shaded from the NeRF's depth, white where it is transparent;
    the tiny generator's sphere prior makes a lit disc, brighter at its upper left."""
    code, out = run(tmp_path, trained_checkpoint, "--seeds", "3", "--geometry", "--video", "--num_frames", "4",
                    "--geometry_size", "16")
    assert code == 0
    with Image.open(out / "geometry_3.png") as im:
        row = np.asarray(im)
    assert row.shape == (16, 7 * 16, 3)
    options = render_options(tiny_model, 8, 16, num_steps=4)
    views = rmi.render_geometry(tiny_model, 3, options, 0.5, 10_000, size=16)
    np.testing.assert_array_equal(row, np.concatenate(list(views), axis=1))
    with torch.no_grad():
        codes = tiny_model.generator.truncated_mapping(latent_for_seed(tiny_model, 3), 0.5)
        cams = cameras_around_mean(options, MULTIVIEW_YAW_OFFSETS)
        view = tiny_model.generator.render_view(rmi.LatentCodes(*(c.expand(7, -1) for c in codes)), cams,
                                                options.replace(rays=rmi.replace(options.rays, img_size=16)))
    surface = (view.opacity > 0.5).numpy()
    assert 0.2 < surface.mean() < 0.9
    assert (views[~surface] == 255).all() and (views[surface] < 255).all()
    frontal = views[3, ..., 0].astype(int)
    assert frontal[5, 5] > frontal[10, 10]
    assert frames_of(out / "geometry_3.gif") == (4, (16, 16))


def test_run_directory_and_raw_weights(tmp_path, trained_checkpoint):
    code, out = run(tmp_path, trained_checkpoint.parent, "--seeds", "0", "1", "--no_ema", "--lock_view_dependence")
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == ["image_0.png", "image_1.png"]


def test_style_mix(tmp_path, trained_checkpoint):
    code, out = run(tmp_path, trained_checkpoint, "--mode", "style_mix", "--seeds", "0", "1",
                    "--style_seeds", "2", "3", "4")
    assert code == 0
    for seed in (0, 1):
        with Image.open(out / f"style_mix_{seed}.png") as im:
            assert im.size == (3 * 16, 16)
    with Image.open(out / "style_mix.png") as im:
        assert im.size == (3 * 16, 2 * 16)


def test_interpolate(tmp_path, trained_checkpoint):
    code, out = run(tmp_path, trained_checkpoint, "--mode", "interpolate", "--seeds", "0", "1", "2",
                    "--num_interp", "4", "--video", "--num_frames", "4")
    assert code == 0
    for a, b in ((0, 1), (1, 2)):
        with Image.open(out / f"interp_{a}_{b}.png") as im:
            assert im.size == (4 * 16, 16)
        assert frames_of(out / f"interp_{a}_{b}.gif") == (4, (16, 16))  # weights 0, .5, 1, .5


def test_interpolate_needs_two_seeds(tmp_path, trained_checkpoint, capsys):
    code, _ = run(tmp_path, trained_checkpoint, "--mode", "interpolate", "--seeds", "0")
    assert code == 2
    assert "two --seeds" in capsys.readouterr().err


def test_missing_checkpoint(tmp_path, capsys):
    code, out = run(tmp_path, tmp_path / "nope.pth")
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "not found" in err and "Traceback" not in err
    assert not out.exists()


def test_run_directory_without_checkpoint(tmp_path, capsys):
    (tmp_path / "empty_run").mkdir()
    code, _ = run(tmp_path, tmp_path / "empty_run")
    assert code == 2
    assert "checkpoint.pth" in capsys.readouterr().err


def test_corrupt_checkpoint(tmp_path, capsys):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    code, _ = run(tmp_path, bad)
    assert code == 2
    assert "is not a checkpoint" in capsys.readouterr().err


def test_image_passed_as_checkpoint(tmp_path, capsys):
    """torch's own message advises weights_only=False, which would run a pickle's code: never repeat it."""
    Image.new("RGB", (8, 8)).save(tmp_path / "photo.png")
    code, _ = run(tmp_path, tmp_path / "photo.png")
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "is not a checkpoint: it is a PNG image" in err
    assert "weights_only" not in err and len(err.strip().splitlines()) == 1


def test_pickled_module_is_refused_without_unsafe_advice(tmp_path, capsys):
    torch.save(torch.nn.Linear(2, 2), tmp_path / "module.pth")  # what the published code saved
    code, _ = run(tmp_path, tmp_path / "module.pth")
    assert code == 2
    err = capsys.readouterr().err
    assert "not an MVCGAN checkpoint" in err and "weights_only" not in err


@pytest.mark.parametrize("flag", [["--psi", "nan"], ["--psi", "inf"], ["--fps", "nan"]])
def test_non_finite_floats_are_usage_errors(tmp_path, tiny_checkpoint, capsys, flag):
    with pytest.raises(SystemExit) as exit_info:
        run(tmp_path, tiny_checkpoint, *flag)
    assert exit_info.value.code == 2
    assert f"argument {flag[0]}" in capsys.readouterr().err


@pytest.mark.parametrize("step, size", [(0, 16), (SYNTHETIC_UPSAMPLE_STEP + 100, 32), (SYNTHETIC_END, 32)])
def test_sizes_default_to_the_trained_stage(tmp_path, tiny_generator, capsys, step, size):
    """No size flags: the NeRF size, output size and samples per ray of the stage the checkpoint was last
    trained in (at the final, empty stage: the one before it), not 64 -> 512."""
    checkpoint = checkpoint_at(tmp_path, tiny_generator, step)
    code, out = run(tmp_path, checkpoint, "--seeds", "0", sizes=["--device", "cpu"])
    assert code == 0
    with Image.open(out / "image_0.png") as im:
        assert im.size == (7 * size, size)
    assert f"16px NeRF x 12 steps -> {size}px" in capsys.readouterr().out


def test_untrained_decoder_blocks_are_refused_unless_asked_for(tmp_path, tiny_checkpoint, capsys):
    """The step-0 checkpoint trained no decoder block: 8 -> 16 px would run an untrained one."""
    code, out = run(tmp_path, tiny_checkpoint, "--seeds", "0")
    assert code == 2
    err = capsys.readouterr().err
    assert "untrained" in err and "--output_size 8 or less" in err and "--allow_untrained_blocks" in err
    assert not out.exists()
    code, out = run(tmp_path, tiny_checkpoint, "--seeds", "0", "--allow_untrained_blocks")
    assert code == 0 and (out / "image_0.png").exists()
    assert "warning:" in capsys.readouterr().err


def test_a_checkpoint_mid_fade_renders_with_its_fade_in(tiny_checkpoint, tiny_generator, tmp_path):
    """At the first step of the 16 -> 32 stage the new block has weight 0: the image is the upsampled
    16 px one, as in training, unless fewer blocks are asked for."""
    model = load_model(checkpoint_at(tmp_path, tiny_generator, SYNTHETIC_UPSAMPLE_STEP), device="cpu")
    assert model.stage.alpha == 0.0 and model.stage.decoder_blocks == 1
    options = render_options(model, num_steps=4)
    assert options.output_size == 32 and decoder_alpha(model, options) == 0.0
    assert decoder_alpha(model, render_options(model, 16, 16, num_steps=4)) == 1.0
    out = render(model, 1, yaw_offsets=[0.0], options=options, psi=0.5, max_batch_size=10_000)
    expected = model.generator.staged_forward(latent_for_seed(model, 1), options, psi=0.5, alpha=0.0,
                                              cam2world=out.cam2world)
    torch.testing.assert_close(out.image, expected.image)
    faded_in = model.generator.staged_forward(latent_for_seed(model, 1), options, psi=0.5, alpha=1.0,
                                              cam2world=out.cam2world)
    assert not torch.allclose(out.image, faded_in.image)


def test_trained_stage_of_official_checkpoints():
    """Past step 100k the paper's curricula train 64 -> 512 px: 512 is the default there, as published."""
    stage = trained_stage(get_curriculum("FFHQ"), 150_000)
    assert (stage.img_size, stage.output_size, stage.num_steps, stage.decoder_blocks) == (64, 512, 16, 3)
    assert stage.alpha == 1.0
    assert trained_stage(get_curriculum("FFHQ"), 200_000).output_size == 512  # saved at the end
    assert trained_stage(get_curriculum("FFHQ"), 30_000).output_size == 128


def test_curriculum_mismatch(tmp_path, tiny_checkpoint, capsys):
    code, out = run(tmp_path, tiny_checkpoint, "--curriculum", "FFHQ")
    assert code == 2
    err = capsys.readouterr().err
    assert "FFHQ" in err and "Synthetic" in err and "hidden_dim" in err
    assert not out.exists()


def test_unknown_curriculum(tmp_path, tiny_checkpoint, capsys):
    code, _ = run(tmp_path, tiny_checkpoint, "--curriculum", "NoSuchThing")
    assert code == 2
    assert "NoSuchThing" in capsys.readouterr().err


@pytest.mark.parametrize("output_size", ["12", "256"])  # not 8 * 2^n; n = 5 > 4 decoder blocks
def test_bad_output_size(tmp_path, tiny_checkpoint, capsys, output_size):
    out = tmp_path / "render"
    code = rmi.main(["--path", str(tiny_checkpoint), "--output_dir", str(out), "--image_size", "8",
                     "--output_size", output_size, "--device", "cpu"])
    assert code == 2
    err = capsys.readouterr().err
    assert "--output_size" in err and "2^n" in err


def test_flag_conflicts_are_usage_errors(tmp_path, tiny_checkpoint):
    with pytest.raises(SystemExit) as exit_info:
        run(tmp_path, tiny_checkpoint, "--mode", "style_mix", "--depth")
    assert exit_info.value.code == 2
    for flags in (["--mode", "interpolate", "--geometry"], ["--geometry", "--geometry_size", "1"]):
        with pytest.raises(SystemExit) as exit_info:
            run(tmp_path, tiny_checkpoint, *flags)
        assert exit_info.value.code == 2


def test_every_flag_has_help():
    for action in rmi.build_parser()._actions:
        assert action.help, action.option_strings


# ------------------------------------------------------------- render helpers
@pytest.fixture(scope="module")
def tiny_model(trained_checkpoint):
    return load_model(trained_checkpoint, device="cpu")


def test_modes_agree_at_the_frontal_pose(tiny_model):
    """The middle multiview view, interpolation weight 0 and style mixing of a seed with itself are the
    same rendering (same z, same mean pose)."""
    options = render_options(tiny_model, 8, 16, num_steps=4)
    multi = render(tiny_model, 5, options=options, psi=0.5, max_batch_size=10_000, batch_size=3)
    assert multi.image.shape == (7, 3, 16, 16) and multi.depth.shape == (7, 8, 8)
    frontal = to_uint8(multi.image[3])
    interp = rmi.render_interpolation(tiny_model, 5, 9, [0.0, 1.0], options, psi=0.5, max_batch_size=10_000)
    mixed = rmi.render_style_mix(tiny_model, 5, [5, 9], options, psi=0.5, max_batch_size=10_000)
    # other batches (3 views, 2 latents): float32 rounding apart (tests/float_tolerance.py), which can move a
    # value across a uint8 rounding boundary, so 1 level apart at most
    np.testing.assert_allclose(interp[0].astype(int), frontal.astype(int), atol=1)
    np.testing.assert_allclose(mixed[0].astype(int), frontal.astype(int), atol=1)
    assert not np.array_equal(interp[0], interp[1])


def test_yaw_offsets_mirror(tiny_model):
    """Offsets +a and -a put the camera symmetrically about the mean pose."""
    options = render_options(tiny_model, 8, 16, num_steps=4)
    cams = cameras_around_mean(options, MULTIVIEW_YAW_OFFSETS)
    origins = cams[:, :3, 3]
    torch.testing.assert_close(origins[3], torch.tensor([0.0, 0.0, 1.0]), atol=1e-6, rtol=0)
    torch.testing.assert_close(origins[:3, 0], -origins[4:].flip(0)[:, 0], atol=1e-6, rtol=0)


def test_video_offsets_loop():
    yaw, pitch = video_offsets(8)
    assert len(yaw) == len(pitch) == 8
    assert yaw[0] == 0 and pitch[0] == pytest.approx(VIDEO_PITCH_AMPLITUDE)
    assert max(yaw) == pytest.approx(VIDEO_YAW_AMPLITUDE)


def test_latent_for_seed_is_deterministic_and_follows_z_dist(tiny_checkpoint):
    import dataclasses

    model = load_model(tiny_checkpoint, device="cpu")
    torch.testing.assert_close(latent_for_seed(model, 7), latent_for_seed(model, 7))
    assert not torch.equal(latent_for_seed(model, 7), latent_for_seed(model, 8))
    assert latent_for_seed(model, 7).shape == (1, model.generator.z_dim)
    uniform = dataclasses.replace(model, metadata={**model.metadata, "z_dist": "uniform"})
    z = latent_for_seed(uniform, 7)
    assert z.min() >= -1 and z.max() <= 1 and z.min() < 0 < z.max()


def test_check_curriculum():
    synthetic = get_curriculum("Synthetic")
    check_curriculum(synthetic, "Synthetic", "Synthetic")
    check_curriculum(get_curriculum("FFHQ"), "CelebAHQ", "FFHQ")  # other name, same architecture: fine
    check_curriculum(get_curriculum("FFHQ"), None, "Cat")          # unnamed (older) checkpoint
    with pytest.raises(CLIError, match="decoder_channels"):
        check_curriculum(synthetic, None, "Cat")


# ---------------------------------------------------------------- image helpers
def test_to_uint8_clamps_and_maps_range():
    x = torch.tensor([-2.0, -1.0, 0.0, 1.0, 3.0]).reshape(1, 1, 5).expand(3, 1, 5)
    out = to_uint8(x)
    assert out.shape == (1, 5, 3) and out.dtype == np.uint8
    assert out[0, :, 0].tolist() == [0, 0, 128, 255, 255]
    assert to_uint8(torch.zeros(2, 3, 4, 5)).shape == (2, 4, 5, 3)


def test_depth_colormap():
    colours = turbo(np.linspace(0, 1, 11))
    assert colours.shape == (11, 3) and colours.dtype == np.uint8
    depth = depth_to_uint8(torch.tensor([[0.88, 1.12, 5.0]]), near=0.88, far=1.12)
    assert depth.shape == (1, 3, 3)
    np.testing.assert_array_equal(depth[0, 0], turbo(np.array(1.0)))  # near: warm end
    np.testing.assert_array_equal(depth[0, 2], turbo(np.array(0.0)))  # beyond far: clamped
    assert depth[0, 0, 0] > depth[0, 0, 2]  # near is red, not blue


def test_make_grid():
    tiles = [np.full((2, 3, 3), i, np.uint8) for i in range(5)]
    grid = make_grid(tiles, ncols=2)
    assert grid.shape == (6, 6, 3)
    assert grid[2, 3, 0] == 3 and grid[4, 3, 0] == 0  # tile 3 at (row 1, col 1); empty cell black
    with pytest.raises(ValueError):
        make_grid([np.zeros((2, 2, 3), np.uint8), np.zeros((3, 2, 3), np.uint8)], ncols=2)


def test_save_gif(tmp_path):
    frames = [np.full((4, 6, 3), 40 * i, np.uint8) for i in range(4)]
    path = save_gif(frames, tmp_path / "sub" / "a.gif", fps=10)
    with Image.open(path) as gif:
        assert gif.n_frames == 4 and gif.size == (6, 4)
        assert gif.info.get("loop") == 0 and gif.info.get("duration") == 100


def test_a_read_only_output_folder_is_one_line_before_any_work(read_only_folder, tiny_checkpoint, capsys):
    code = rmi.main(["--path", str(tiny_checkpoint), "--output_dir", str(read_only_folder / "render"),
                     "--image_size", "8", "--num_steps", "4", "--device", "cpu", "--seeds", "0"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith(f"error: --output_dir {read_only_folder / 'render'}: cannot write there (")
    assert "Read-only file system" in err or "Permission denied" in err


def test_a_size_that_cannot_fit_in_memory_is_refused_before_it_is_allocated(tmp_path, tiny_checkpoint, capsys):
    """--image_size 100000 asked for tens of terabytes; only MemoryError and CUDA OOM were caught."""
    code, out = run(tmp_path, tiny_checkpoint, "--image_size", "100000", "--output_size", "100000", sizes=[
        "--num_steps", "4", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith("error: --image_size 100000 (4 samples per ray, 7 views at once) needs about ")
    assert "GiB of main memory" in err and "lower --image_size" in err
    assert not out.exists()
    # The estimate is a lower bound: a size that fits renders.
    from utils.rendering_cli import available_memory_bytes, render_memory_bytes
    model = load_model(tiny_checkpoint, device="cpu")
    options = render_options(model, 64, 64, 4)
    assert render_memory_bytes(model, options, 7) < available_memory_bytes()


@pytest.mark.parametrize("extra, bad", [
    (["--seeds", "0", "18446744073709551616"], "18446744073709551616"),
    (["--seeds", "0", "-1"], "-1"),
    (["--mode", "style_mix", "--seeds", "0", "--style_seeds", "1", "99999999999999999999"], "99999999999999999999"),
])
def test_every_seed_is_checked_before_anything_is_written(tmp_path, tiny_checkpoint, capsys, extra, bad):
    """Issue 32: the first seed's picture was written, then torch refused the second seed with a traceback."""
    with pytest.raises(SystemExit) as exit_info:
        run(tmp_path, tiny_checkpoint, *extra)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"seed {bad} is out of range" in err and "Traceback" not in err
    assert not (tmp_path / "render").exists()


def folder_state(folder):
    """{name: (bytes, mtime_ns)} of every file in `folder`: what a refused run must leave as it was."""
    return {path.name: (path.read_bytes(), path.stat().st_mtime_ns) for path in folder.iterdir()}


@pytest.mark.parametrize("extra", [
    ["--seeds", "3", "4", "--depth", "--video", "--geometry", "--geometry_size", "8", "--num_frames", "2"],
    ["--mode", "style_mix", "--seeds", "0", "1", "--style_seeds", "2"],
    ["--mode", "interpolate", "--seeds", "0", "1", "2", "--num_interp", "2", "--video", "--num_frames", "2"],
])
def test_a_second_render_into_the_same_folder_is_refused_unless_overwrite(tmp_path, trained_checkpoint, capsys,
                                                                          monkeypatch, extra):
    """Issue 32: rendering the same seeds again into a folder replaced its pictures silently. Now the run is
    refused before the checkpoint is loaded, naming the first file and --overwrite; nothing is written."""
    code, out = run(tmp_path, trained_checkpoint, *extra)
    assert code == 0
    # the names planned before the work are exactly the files written
    assert sorted(p.name for p in out.iterdir()) == sorted(set(rmi.planned_files(rmi.build_parser().parse_args(
        ["--path", "x", *extra]))))
    (out / "notes.txt").write_text("the user's")  # another name: never in the way
    before = folder_state(out)
    capsys.readouterr()
    with monkeypatch.context() as patched:
        patched.setattr(rmi, "load_model", lambda *a, **k: pytest.fail("the checkpoint was loaded"))
        code, _ = run(tmp_path, trained_checkpoint, *extra)
    err = capsys.readouterr().err
    first = rmi.planned_files(rmi.build_parser().parse_args(["--path", "x", *extra]))[0]
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith(f"error: --output_dir {out} already holds {first} (and ") and "pass --overwrite" in err
    assert folder_state(out) == before
    code, _ = run(tmp_path, trained_checkpoint, *extra, "--overwrite")
    assert code == 0
    after = folder_state(out)
    assert after.keys() == before.keys() and after["notes.txt"] == before["notes.txt"]
    assert all(after[name][1] != before[name][1] for name in after if name != "notes.txt")  # written anew


def test_files_of_other_names_and_a_seed_twice_are_not_in_the_way(tmp_path, trained_checkpoint, capsys):
    """A folder holding other renders (README renders several things into one folder) is fine, and a seed
    named twice on the command line writes its own file twice."""
    code, out = run(tmp_path, trained_checkpoint, "--seeds", "0", "--depth")
    assert code == 0
    before = folder_state(out)
    code, _ = run(tmp_path, trained_checkpoint, "--seeds", "1", "1", "--depth")
    assert code == 0, capsys.readouterr().err
    after = folder_state(out)
    assert sorted(after) == ["depth_0.png", "depth_1.png", "image_0.png", "image_1.png"]
    assert all(after[name] == before[name] for name in before)
    # one file of the planned ones is enough to refuse, and the message names it alone
    capsys.readouterr()
    code, _ = run(tmp_path, trained_checkpoint, "--seeds", "2", "0")
    err = capsys.readouterr().err
    assert code == 2 and err == (f"error: --output_dir {out} already holds image_0.png, which this run would replace; "
                                 f"pass --overwrite to replace it, or choose another --output_dir\n")
    assert not (out / "image_2.png").exists()


def test_an_unplanned_file_is_still_refused_where_it_is_written(tmp_path):
    """The check before each write (`OutputFiles.path`) catches a file the plan did not name or that appeared
    during the run; the run's own files pass it again."""
    from utils.run_dir import ExistingFile, OutputFiles

    (tmp_path / "late.png").write_text("someone else's")
    files = OutputFiles(tmp_path)
    files.check(["image_0.png"])
    assert files.path("image_0.png") == tmp_path / "image_0.png"
    (tmp_path / "image_0.png").write_text("ours")
    assert files.path("image_0.png") == tmp_path / "image_0.png"  # this run's own file
    with pytest.raises(ExistingFile, match="already holds late.png, which this run would replace; pass --overwrite"):
        files.path("late.png")
    assert OutputFiles(tmp_path, overwrite=True).path("late.png") == tmp_path / "late.png"
